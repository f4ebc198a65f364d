"""`config_options`: command-line options derived from a config dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer
from typer.testing import CliRunner

from compalign.config_cli import Opt, config_options, field_docs


@dataclass
class Toy:
    """A config."""

    learning_rate: float = 0.1
    """Peak learning rate (see `steps`)."""
    steps: int | None = None
    """Optimizer steps."""
    tags: list[str] = field(default_factory=list)
    """Tags."""
    ema: bool = False
    undocumented: str = "x"


def _app(**kw) -> typer.Typer:
    app = typer.Typer(rich_markup_mode=None)
    seen = {}

    @app.command()
    @config_options(Toy, {"learning_rate": Opt(aliases=("--lr",)), "ema": Opt(aliases=("/--plain",))}, **kw)
    def run(fresh: bool = False, *, fields: dict) -> None:
        seen.update(fields, fresh=fresh)

    @app.command()
    def other() -> None: ...

    app.seen = seen  # type: ignore[attr-defined]
    return app


def test_field_docs_are_the_strings_under_the_fields():
    assert field_docs(Toy) == {
        "learning_rate": "Peak learning rate (see `steps`).",
        "steps": "Optimizer steps.",
        "tags": "Tags.",
    }


def test_one_option_per_field_old_spellings_hidden():
    app = _app()
    r = CliRunner().invoke(app, ["run", "--help"])
    assert "--learning-rate" in r.output and "Peak learning rate (see --steps)." in r.output
    assert "--lr" not in r.output and "--plain" not in r.output and "--ema / --no-ema" in r.output
    r = CliRunner().invoke(
        app, ["run", "--lr", "0.5", "--steps", "3", "--tags", "a", "--tags", "b", "--fresh"]
    )
    assert r.exit_code == 0, r.output
    assert app.seen == {
        "learning_rate": 0.5, "steps": 3, "tags": ["a", "b"], "ema": False, "undocumented": "x",
        "fresh": True,
    }  # fmt: skip
    CliRunner().invoke(app, ["run", "--ema"])
    assert app.seen["ema"] is True and app.seen["learning_rate"] == 0.1
    CliRunner().invoke(app, ["run", "--plain"])
    assert app.seen["ema"] is False


def test_skipped_fields_have_no_option():
    r = CliRunner().invoke(_app(skip=("undocumented",)), ["run", "--help"])
    assert "--undocumented" not in r.output and "--steps" in r.output


def test_training_configs_load_without_torch():
    """`reward train` and `reward train-world-clip` read their options from the configs' own
    modules, which import neither torch nor transformers; the trainers re-export the configs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from compalign.rewards.composition.config import RewardTrainConfig\n"
        "from compalign.rewards.world_clip.config import WorldCLIPArch, WorldCLIPTrainConfig\n"
        "from compalign.config_cli import config_fields\n"
        "config_fields(RewardTrainConfig), config_fields(WorldCLIPTrainConfig, ('arch',))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

    from compalign.rewards.composition import config as reward_config
    from compalign.rewards.composition import train as reward_train
    from compalign.rewards.world_clip import config as clip_config
    from compalign.rewards.world_clip import model as clip_model
    from compalign.rewards.world_clip import train as clip_train

    assert reward_train.RewardTrainConfig is reward_config.RewardTrainConfig
    assert reward_train.RUNTIME_FIELDS is reward_config.RUNTIME_FIELDS
    assert clip_train.WorldCLIPTrainConfig is clip_config.WorldCLIPTrainConfig
    assert clip_train.RUNTIME_FIELDS is clip_config.RUNTIME_FIELDS
    assert clip_model.WorldCLIPArch is clip_config.WorldCLIPArch


def test_reward_train_options_are_the_config_fields(cli):
    import dataclasses

    from compalign.rewards.composition.train import RewardTrainConfig

    r = cli("reward", "train", "--help")
    assert r.exit_code == 0
    for f in dataclasses.fields(RewardTrainConfig):
        assert f"--{f.name.replace('_', '-')}" in r.stdout, f.name
    assert "--head-lr" not in r.stdout and "--grad-accum " not in r.stdout


def test_reno_options_are_the_config_fields(cli):
    import dataclasses

    from compalign.noise_optimization.reno import ReNOConfig

    r = cli("reno", "--help")
    assert r.exit_code == 0
    for f in dataclasses.fields(ReNOConfig):
        if f.name != "keep_all_images":  # the library's; the command saves images with --save-iterations
            assert f"--{f.name.replace('_', '-')}" in r.stdout, f.name


def test_world_clip_train_options_are_the_config_fields(cli):
    import dataclasses

    from compalign.rewards.world_clip.config import WorldCLIPTrainConfig

    r = cli("reward", "train-world-clip", "--help")
    assert r.exit_code == 0
    for f in dataclasses.fields(WorldCLIPTrainConfig):
        if f.name != "arch":  # the architecture keeps its default on the command line
            assert f"--{f.name.replace('_', '-')}" in r.stdout, f.name
    assert "--per-category" not in r.stdout and "--time-limit " not in r.stdout

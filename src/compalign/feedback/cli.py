"""``compalign feedback train``: multi-reward feedback learning (ReFL) from the command line.

Bad input ends with a one-line message on stderr and exit code 2; a run stopped by a signal
exits with 1 (resume it with the same command).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from compalign._cli import fail as _fail
from compalign._cli import note as _note
from compalign._cli import out_place_problem
from compalign.config_cli import Opt, config_options, path_str
from compalign.generators.registry import FACTORIES, load_adapters
from compalign.rewards.objective import DEFAULT_REWARDS_HELP, default_rewards, parse_weights
from compalign.rewards.objective import REAL_DEFAULT_REWARDS as REAL_DEFAULT_REWARDS
from compalign.rewards.objective import WORLD_DEFAULT_REWARDS as WORLD_DEFAULT_REWARDS

from .config import DEFAULT_STOP_RANGE, FeedbackConfig

app = typer.Typer(
    help="Feedback learning: fine-tune a generator against weighted rewards (ReFL, IterComp style).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _is_adapter(base: str) -> bool:
    """True for ``prefix:source`` specs of diffusers adapters (not world models)."""

    load_adapters()
    prefix, sep, _ = base.partition(":")
    return bool(sep) and prefix in FACTORIES


def parse_stop_range(text: str, option: str = "--stop-range") -> list:
    """``"LO,HI"`` -> ``[lo, hi]`` (integers stay integers: step indices; else fractions)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError(f"{option} {text!r}: expected LO,HI (fractions 0.75,1 or indices 30,39)")
    try:
        return [int(p) if p.lstrip("-").isdigit() else float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected two numbers") from None


FIELD_OPTIONS = {
    "base": Opt(short="-b"),
    "output_dir": Opt(short="-o", cli_type=Path | None, parse=path_str),
    "rewards": Opt(
        short="-r",
        aliases=("--reward",),
        cli_type=list[str] | None,
        default=None,
        metavar="NAME=WEIGHT",
        parse=lambda texts: parse_weights(texts, "reward") if texts else None,
        note="Repeatable. " + DEFAULT_REWARDS_HELP,
    ),
    "reward_caps": Opt(
        aliases=("--reward-cap",),
        cli_type=list[str] | None,
        default=None,
        metavar="NAME=C",
        parse=lambda texts: parse_weights(texts, "reward cap", need_value=True),
        note="Repeatable.",
    ),
    "prompts_file": Opt(aliases=("--prompts",), cli_type=Path | None, parse=path_str),
    "aspects": Opt(aliases=("--aspect",), note="Repeatable."),
    "categories": Opt(aliases=("--category",), note="Repeatable."),
    "total_steps": Opt(aliases=("--steps",)),
    "stop_range": Opt(
        cli_type=str, default=",".join(map(str, DEFAULT_STOP_RANGE)), metavar="LO,HI", parse=parse_stop_range
    ),
    "guidance_scale": Opt(aliases=("--guidance",)),
    "reg_type": Opt(aliases=("--reg",)),
    "pool_dir": Opt(cli_type=Path | None, parse=path_str),
    "train_text_encoder": Opt(aliases=("/--freeze-text-encoder",)),
    "lora_rank": Opt(parse=lambda rank: rank or None),
    "lora_targets": Opt(note="Repeatable."),
    "learning_rate": Opt(aliases=("--lr",)),
    "warmup_steps": Opt(aliases=("--warmup",)),
    "max_grad_norm": Opt(aliases=("--grad-clip",)),
    "ema_decay": Opt(aliases=("--ema",)),
    "num_threads": Opt(aliases=("--threads",)),
    "time_limit_s": Opt(aliases=("--time-limit",)),
}
"""How `FeedbackConfig`'s fields appear on the command line (the rest: `config_options`' defaults);
the aliases are the options' earlier names."""


@app.command("train")
@config_options(FeedbackConfig, FIELD_OPTIONS)
def train_command(
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming.")] = False,
    export: Annotated[
        str | None, typer.Option("--export", help="When done, ship the model in the package as NAME (world).")
    ] = None,
    *,
    fields: dict,
) -> None:
    """Fine-tune a model against weighted rewards (ReFL); resumes from the run's latest checkpoint."""
    from .train import train_feedback  # lazy: loads diffusers, transformers

    try:
        adapter = _is_adapter(fields["base"])
        if export and adapter:
            raise ValueError("--export ships world models only; an SD run's final/ loads with sd:<folder>")
        if fields["rewards"] is None:
            fields["rewards"] = parse_weights(default_rewards(world=not adapter), "reward")
        config = FeedbackConfig(**fields)
    except (ValueError, KeyError) as e:
        _fail(e)

    problem = out_place_problem(config.run_dir, "--output-dir")
    if problem is not None:
        _fail(problem)
    _note(f"feedback training {config.base} -> {config.run_dir} ({config.max_steps} steps)")
    try:
        final = train_feedback(config, resume=not fresh)
    except (ValueError, KeyError, FileNotFoundError) as e:
        _fail(e)
    if final is None:
        _note(f"stopped; resume with the same command (checkpoints in {config.run_dir / 'checkpoints'})")
        raise typer.Exit(1)
    record = json.loads((final / "training.json").read_text())
    for spec, v in record["reward_first_last"].items():
        print(f"{spec}: {v['first']:.4f} (first steps) -> {v['last']:.4f} (last steps)")
    print(f"done: {final} ({record['steps']} steps, {record['wall_time_s']} s; curves {record['curves']})")
    if export:
        from compalign.generators.world.train import export_model  # lazy: loads diffusers, transformers

        dest = export_model(final, export)
        _note(f"exported to {dest}")

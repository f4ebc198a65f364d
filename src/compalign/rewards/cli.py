"""Typer commands of the rewards stage (``compalign reward ...``).

- ``train-world-clip``: train the world CLIP (resumes from the run's latest checkpoint);
- ``eval-world-clip PATH_OR_NAME``: held-out pairwise / top-1 accuracy against hard negatives;
- ``train``: train a composition reward model of one aspect on a pairs file (resumes);
- ``eval MODEL --pairs PAIRS``: its pair accuracy (and, on world prompts, the Spearman correlation
  with the exact evaluator).

Bad input ends with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from compalign._cli import fail as _fail
from compalign._cli import note as _note
from compalign.config_cli import Opt, config_options, path_str
from compalign.io import atomic_write_json

from .composition.config import RewardTrainConfig
from .world_clip.config import WorldCLIPTrainConfig

app = typer.Typer(
    help="Rewards: differentiable image-text scores (the world CLIP) for noise optimisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


WORLD_CLIP_OPTIONS = {
    "output_dir": Opt(short="-o", cli_type=Path, parse=str),
    "pool_dir": Opt(cli_type=Path | None, parse=path_str),
    "pool_per_category": Opt(aliases=("--per-category",)),
    "time_limit_s": Opt(aliases=("--time-limit",)),
}
"""How `WorldCLIPTrainConfig`'s fields appear on the command line (the rest: `config_options`'
defaults; `arch` keeps its default); the aliases are the options' earlier names."""


@app.command("train-world-clip")
@config_options(WorldCLIPTrainConfig, WORLD_CLIP_OPTIONS, skip=("arch",))
def train_world_clip_command(
    *,
    fields: dict,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start over: delete checkpoints instead of resuming.")
    ] = False,
    export: Annotated[
        bool, typer.Option("--export", help="When done, write the model into the package (fp16).")
    ] = False,
) -> None:
    """Train the world CLIP on the scene pool (InfoNCE + hard negatives); resumes when possible."""
    if fields["seed"] < 0:
        _fail(f"--seed must be >= 0, got {fields['seed']}")
    # lazy: loads diffusers, transformers
    from .world_clip.train import export_world_clip, folder_size, train_world_clip

    try:
        config = WorldCLIPTrainConfig(**fields)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    limit = f", time limit {config.time_limit_s:g} s" if config.time_limit_s else ""
    _note(f"training world-clip in {config.run_dir} ({config.max_steps} steps{limit})")
    try:
        final = train_world_clip(config, resume=not fresh)
    except ValueError as e:
        _fail(str(e))
    if final is None:
        _note(f"stopped; resume with the same command (checkpoints in {config.run_dir / 'checkpoints'})")
        raise typer.Exit(1)
    record = json.loads((final / "training.json").read_text())
    _note(
        f"done: {final} ({record['steps']} steps, {record['train_time_s']} s, "
        f"stopped by {record['stopped_by']})"
    )
    if record.get("evaluation"):
        from .world_clip.evaluate import format_eval_table  # lazy: loads diffusers, transformers

        print(format_eval_table(record["evaluation"]))
    if export:
        dest = export_world_clip(final)
        _note(f"exported to {dest} ({folder_size(dest) / 1e6:.2f} MB)")


@app.command("eval-world-clip")
def eval_world_clip_command(
    model: Annotated[
        str, typer.Argument(help="world-clip (shipped), a model folder or a run folder.")
    ] = "world-clip",
    split: Annotated[str, typer.Option(help="Suite split: heldout or train.")] = "heldout",
    per_category: Annotated[
        int, typer.Option("--per-category", help="Prompts per category (first N).")
    ] = 100,
    negatives: Annotated[int, typer.Option("--negatives", help="Hard negatives per prompt.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the layouts and negatives.")] = 0,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (default cpu).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the report (JSON).")] = None,
) -> None:
    """Pairwise and top-1 accuracy of a world CLIP against hard negatives, per category."""
    from compalign.world.suites import SPLITS  # lazy: loads scipy (compalign.world)

    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    if split not in SPLITS:
        _fail(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    if per_category < 1 or negatives < 1:
        _fail("--per-category and --negatives must be >= 1")
    if out is not None and out.is_dir():
        _fail(f"{out}: --out must be a file name, and a folder of that name exists")
    # lazy: loads diffusers, transformers
    from .world_clip.evaluate import evaluate_world_clip, save_report
    from .world_clip.reward import RewardNotTrainedError

    try:
        report = evaluate_world_clip(
            model,
            split=split,
            n_per_category=per_category,
            n_negatives=negatives,
            seed=seed,
            device=device,
            show=True,
        )
    except (RewardNotTrainedError, FileNotFoundError) as e:
        _fail(e.args[0] if e.args else str(e))
    if out is not None:
        save_report(report, out)
        _note(f"report: {out}")


_ASPECT_ALIASES = {
    "attribute": "attribute_binding",
    "spatial": "spatial_relationship",
    "nonspatial": "non_spatial_relationship",
    "non_spatial": "non_spatial_relationship",
}


def _aspect(value: str) -> str:
    from compalign.world.suites import ASPECTS  # lazy: loads scipy (compalign.world)

    aspect = _ASPECT_ALIASES.get(value, value)
    if aspect not in ASPECTS:
        _fail(
            f"unknown aspect {value!r}; expected one of {', '.join(ASPECTS)} "
            "(or attribute, spatial, nonspatial)"
        )
    return aspect


TRAIN_OPTIONS = {
    "pairs": Opt(cli_type=Path, default=..., parse=str, note="From `compalign pairs`."),
    "aspect": Opt(default=..., parse=_aspect, note="Or attribute, spatial, nonspatial."),
    "output_dir": Opt(short="-o", cli_type=Path | None, parse=path_str),
    "learning_rate": Opt(aliases=("--lr",)),
    "head_learning_rate": Opt(aliases=("--head-lr",)),
    "grad_accum_steps": Opt(aliases=("--grad-accum",)),
    "contrastive_categories": Opt(aliases=("--contrastive-category",), note="Repeatable."),
    "pool_dir": Opt(cli_type=Path | None, parse=path_str),
    "time_limit_s": Opt(aliases=("--time-limit",)),
}
"""How `RewardTrainConfig`'s fields appear on the command line (the rest: `config_options`'
defaults); the aliases are the options' earlier names."""


@app.command("train")
@config_options(RewardTrainConfig, TRAIN_OPTIONS)
def train_reward_command(
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start over: delete checkpoints instead of resuming.")
    ] = False,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            help="When done, write the model into the package as NAME (fp16), loadable as "
            "composition:NAME (the shipped names: itercomp-attribute, itercomp-spatial, "
            "itercomp-nonspatial).",
        ),
    ] = None,
    *,
    fields: dict,
) -> None:
    """Train a composition reward model of one aspect (pairwise Bradley-Terry, held-out selection).

    Several GPUs: ``accelerate launch --multi_gpu --num_processes 4 $(which compalign) reward train ...``;
    several CPU processes: ``torchrun --nproc_per_node 2 $(which compalign) reward train ... --device cpu``.
    """
    if fields["seed"] < 0:
        _fail(f"--seed must be >= 0, got {fields['seed']}")
    aspect, backbone = fields["aspect"], fields["backbone"]
    # lazy: loads diffusers, transformers
    from .composition.data import PairsFileError
    from .composition.train import export_reward_model, train_reward_model
    from .world_clip.reward import RewardNotTrainedError
    from .world_clip.train import folder_size

    try:
        config = RewardTrainConfig(**fields)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    if export is not None and (not export or "/" in export or export.startswith(".")):
        _fail(f"--export must be a plain folder name, got {export!r}")
    from .composition.model import SHIPPED  # lazy: loads diffusers, transformers

    if export in SHIPPED and SHIPPED[export] != aspect:
        _fail(f"--export {export} is the {SHIPPED[export]} model; this run trains {aspect}")
    _note(f"training the {aspect} reward model ({backbone}) in {config.run_dir}")
    try:
        final = train_reward_model(config, resume=not fresh)
    except (PairsFileError, RewardNotTrainedError, FileNotFoundError, KeyError, ValueError) as e:
        _fail(e.args[0] if e.args else str(e))
    if final is None:
        _note(f"stopped; resume with the same command (checkpoints in {config.run_dir / 'checkpoints'})")
        raise typer.Exit(1)

    if int(os.environ.get("RANK", "0")) != 0:  # several processes (accelerate / torchrun): one reports
        return
    record = json.loads((final / "training.json").read_text())
    sel = record["selection"]
    acc = sel.get("heldout_accuracy")
    _note(
        f"done: {final} ({record['steps']} steps, {record['train_time_s']} s, "
        f"{record['pairs_per_s']} pairs/s, stopped by {record['stopped_by']})"
    )
    if acc is not None:
        print(
            f"held-out pair accuracy {acc:.4f} ({record['heldout_pairs']} pairs, {record['heldout_prompts']} "
            f"prompts; chosen at step {sel['step']})"
        )
    else:
        print("no held-out pairs: the last step is kept (no model selection)")
    if export:
        dest = export_reward_model(final, export)
        _note(f"exported to {dest} ({folder_size(dest) / 1e6:.2f} MB); load it as composition:{export}")


@app.command("eval")
def eval_reward_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A shipped name (itercomp-spatial, ...), a model folder or a run folder; or a backbone "
            "(world-clip, clip:PATH, ...) with --aspect: its untrained, zero-shot score."
        ),
    ],
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs file (JSONL).")],
    split: Annotated[str, typer.Option("--split", help="heldout, train or all.")] = "heldout",
    aspect: Annotated[
        str | None, typer.Option("--aspect", help="Pairs of this aspect (default: the model's).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 128,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (default cpu).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the report (JSON).")] = None,
) -> None:
    """Pair accuracy of a composition reward model (and, for world prompts, the Spearman rank
    correlation of its scores with the exact evaluator's clause score over every image of the
    selected pairs: --split all for the whole file)."""
    if split not in ("heldout", "train", "all"):
        _fail(f"unknown split {split!r}; expected heldout, train or all")
    if batch_size < 1:
        _fail("--batch-size must be >= 1")
    if out is not None and out.is_dir():
        _fail(f"{out}: --out must be a file name, and a folder of that name exists")
    aspect = _aspect(aspect) if aspect is not None else None
    # lazy: loads diffusers, transformers
    from .composition.backbones import list_backbones
    from .composition.data import PairsFileError
    from .composition.evaluate import evaluate_reward_on_pairs, format_report
    from .composition.model import CompositionRewardModel
    from .world_clip.reward import RewardNotTrainedError

    try:
        if model.partition(":")[0] in list_backbones():  # an untrained backbone: its zero-shot score
            if aspect is None:
                _fail(
                    f"{model} is a backbone, not a trained model: give --aspect to score its zero-shot pairs"
                )
            reward = CompositionRewardModel(model, aspect=aspect, device=device, frozen=True)
        else:
            reward = CompositionRewardModel(model, device=device)
        report = evaluate_reward_on_pairs(
            reward, pairs, split=None if split == "all" else split, aspect=aspect, batch_size=batch_size
        )
    except (PairsFileError, RewardNotTrainedError, FileNotFoundError, ValueError) as e:
        _fail(e.args[0] if e.args else str(e))
    print(format_report(report))
    if out is not None:
        atomic_write_json(out, report)
        _note(f"report: {out}")


if __name__ == "__main__":
    app()

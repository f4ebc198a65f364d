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

WORLD_DEFAULT_REWARDS = ["world-clip=1"]
REAL_DEFAULT_REWARDS = ["hpsv2=5", "imagereward=1", "pickscore=0.05"]

app = typer.Typer(
    help="Feedback learning: fine-tune a generator against weighted rewards (ReFL, IterComp style).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _is_adapter(base: str) -> bool:
    """True for ``prefix:source`` specs of diffusers adapters (not world models)."""
    from compalign.generators.registry import _FACTORIES, _load_adapters

    _load_adapters()
    prefix, sep, _ = base.partition(":")
    return bool(sep) and prefix in _FACTORIES


def _pairs(items: list[str] | None, what: str, need_value: bool = False) -> dict[str, float]:
    """``NAME=VALUE`` options as a dict (a bare NAME: the reward's default weight, when allowed)."""
    from compalign.noise_optimization.cli import parse_reward_spec

    out: dict[str, float] = {}
    for text in items or []:
        if need_value and "=" not in text:
            raise ValueError(f"{what} {text!r}: expected NAME=VALUE")
        name, value = parse_reward_spec(text)
        if name in out:
            raise ValueError(f"{what} {name!r} given twice")
        out[name] = value
    return out


def _stop_range(text: str, option: str = "--stop-range") -> list:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError(f"{option} {text!r}: expected LO,HI (fractions 0.75,1 or indices 30,39)")
    try:
        return [int(p) if p.lstrip("-").isdigit() else float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected two numbers") from None


@app.command("train")
def train_command(
    base: Annotated[
        str,
        typer.Option(
            "--base", "-b", help="Model to fine-tune: world name / folder, or sd:<folder or hub id>."
        ),
    ] = "world-base",
    reward: Annotated[
        list[str] | None,
        typer.Option(
            "--reward",
            "-r",
            help="NAME=WEIGHT, repeatable (NAME may be name:source). "
            "Default: world-clip=1 on world models, hpsv2=5 imagereward=1 pickscore=0.05 else.",
        ),
    ] = None,
    reward_cap: Annotated[
        list[str] | None,
        typer.Option(
            "--reward-cap", help="NAME=C: cap c of relu(c - reward) (default: the reward's offset)."
        ),
    ] = None,
    reward_scale: Annotated[
        float | None, typer.Option("--reward-scale", help="Factor on the reward loss (world 1, SD 1e-3).")
    ] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompt file, one a line.")] = None,
    aspect: Annotated[
        list[str] | None,
        typer.Option("--aspect", help="World train prompts of an IterComp aspect (repeatable)."),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option("--category", help="World train prompts of a suite category (repeatable)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Sampler steps of the ReFL schedule (default: the base's; SD 40)."),
    ] = None,
    stop_range: Annotated[
        str, typer.Option("--stop-range", help="Late stop range: fractions LO,HI or indices A,B.")
    ] = "0.75,1.0",
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="Guidance scale (default: the base's).")
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option("--sampler", help="ddim, euler or dpmsolver (default: the base's scheduler)."),
    ] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer steps.")] = 200,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA rank (0: full fine-tune).")] = 0,
    lora_alpha: Annotated[
        float | None, typer.Option("--lora-alpha", help="LoRA alpha (default: the rank).")
    ] = None,
    train_text_encoder: Annotated[
        bool, typer.Option("--train-text-encoder/--freeze-text-encoder", help="Also train the text encoder.")
    ] = False,
    reg: Annotated[
        str,
        typer.Option(
            "--reg", help="Regulariser: denoising, distance, none, auto (world: denoising; SD: distance)."
        ),
    ] = "auto",
    reg_weight: Annotated[float, typer.Option("--reg-weight", help="Regulariser weight.")] = 1.0,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (world 1e-4, SD 1e-5).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up steps.")] = 0,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Gradient-norm clip (0: off).")] = 1.0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Samples per micro-batch (per process).")
    ] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    mixed_precision: Annotated[str, typer.Option("--mixed-precision", help="no, fp16 or bf16.")] = "no",
    ema: Annotated[
        float | None, typer.Option("--ema", help="EMA decay of the saved weights (default: none).")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Run folder (default runs/<name>).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Run name.")] = "world-feedback",
    seed: Annotated[int, typer.Option("--seed", help="Seed of prompts, noise and stop indices.")] = 0,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", help="Finish the run after this many seconds.")
    ] = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Checkpoint interval.")] = 50,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu forces the CPU (default: a GPU if any).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    pool_dir: Annotated[
        Path | None,
        typer.Option(
            "--pool-dir",
            help="Scene pool of the denoising regulariser (default: the per-user cache, $COMPALIGN_CACHE).",
        ),
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming.")] = False,
    export: Annotated[
        str | None, typer.Option("--export", help="When done, ship the model in the package as NAME (world).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar.")] = True,
) -> None:
    """Fine-tune a model against weighted rewards (ReFL); resumes from the run's latest checkpoint."""
    from .config import FeedbackConfig
    from .train import train_feedback

    try:
        adapter = _is_adapter(base)
        if export and adapter:
            raise ValueError("--export ships world models only; an SD run's final/ loads with sd:<folder>")
        specs = reward or (REAL_DEFAULT_REWARDS if adapter else WORLD_DEFAULT_REWARDS)
        config = FeedbackConfig(
            name=name, base=base, output_dir=str(output_dir) if output_dir else None,
            rewards=_pairs(specs, "reward"), reward_caps=_pairs(reward_cap, "reward cap", True),
            reward_scale=reward_scale, prompts_file=str(prompts) if prompts else None,
            aspects=aspect or None, categories=category or None, total_steps=steps,
            stop_range=_stop_range(stop_range), guidance_scale=guidance, sampler=sampler, reg_type=reg,
            reg_weight=reg_weight, train_text_encoder=train_text_encoder, lora_rank=lora_rank or None,
            lora_alpha=lora_alpha, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
            learning_rate=lr, warmup_steps=warmup, max_grad_norm=grad_clip, mixed_precision=mixed_precision,
            ema_decay=ema, seed=seed, checkpoint_every=checkpoint_every, num_threads=threads, device=device,
            progress=progress, time_limit_s=time_limit, pool_dir=str(pool_dir) if pool_dir else None,
        )  # fmt: skip
    except (ValueError, KeyError) as e:
        _fail(e)
    from compalign._cli import out_place_problem

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
        from compalign.generators.world.train import export_model

        dest = export_model(final, export)
        _note(f"exported to {dest}")

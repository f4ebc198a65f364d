"""``compalign reno``: reward-based noise optimization from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from compalign._cli import check_out_dir, check_world_prompts
from compalign._cli import fail as _fail
from compalign.config_cli import Opt, config_options
from compalign.generators.options import (
    Device,
    Dtype,
    Height,
    NumSeeds,
    Offload,
    Overwrite,
    PromptsFile,
    Seeds,
    Width,
    generator_options,
    load_generator,
)
from compalign.io import atomic_write_json
from compalign.rewards.objective import DEFAULT_REWARDS_HELP, default_rewards, load_rewards, parse_objective
from compalign.rewards.objective import REAL_DEFAULT_REWARDS as REAL_DEFAULT_REWARDS
from compalign.rewards.objective import WORLD_DEFAULT_REWARDS as WORLD_DEFAULT_REWARDS
from compalign.rewards.objective import parse_reward_spec as parse_reward_spec  # (its earlier home)

from .reno import ReNOConfig


def build_rewards(specs: list[str], benchmark: list[str], device, world_clip_scaled: bool = False) -> list:
    """The loaded terms of `specs` (``NAME=WEIGHT``, optimised) and `benchmark` (logged only)."""
    return load_rewards(parse_objective(specs, benchmark), device, world_clip_scaled)


RENO_OPTIONS = {"grad_clip": Opt(parse=lambda clip: clip or None, note="0: off.")}
"""How `ReNOConfig`'s fields appear on the command line (the rest: `config_options`' defaults)."""


@config_options(ReNOConfig, RENO_OPTIONS, skip=("keep_all_images",))
def reno_command(
    prompt: Annotated[list[str] | None, typer.Argument(help="Prompt(s) to optimise (quote each).")] = None,
    prompts_file: PromptsFile = None,
    suite: Annotated[str | None, typer.Option("--suite", help="World suite (color, spatial, ...).")] = None,
    split: Annotated[str, typer.Option("--split", help="Suite split: heldout or train.")] = "heldout",
    geneval: Annotated[
        Path | None, typer.Option("--geneval", help="GenEval evaluation_metadata.jsonl (GenEval's layout).")
    ] = None,
    parti: Annotated[Path | None, typer.Option("--parti", help="PartiPrompts.tsv.")] = None,
    t2i_compbench: Annotated[
        Path | None,
        typer.Option("--t2i-compbench", help="T2I-CompBench prompt file (*_val.txt); its samples/ layout."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use the first N prompts only.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Generator (one/two-step).")] = "world-onestep",
    reward: Annotated[
        list[str] | None,
        typer.Option(
            "--reward",
            "-r",
            help="NAME=WEIGHT, repeatable; weight 0 switches one off. " + DEFAULT_REWARDS_HELP,
        ),
    ] = None,
    benchmark_reward: Annotated[
        list[str] | None,
        typer.Option("--benchmark-reward", help="Reward logged every iteration, never optimised."),
    ] = None,
    seed: Seeds = None,
    num_seeds: NumSeeds = 1,
    *,
    fields: dict,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images optimised together.")] = 16,
    save_iterations: Annotated[
        bool, typer.Option("--save-iterations", help="Keep every iteration's image (in _iters/).")
    ] = False,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate/--no-evaluate", help="World prompts: exact-evaluator accuracy before/after."
        ),
    ] = True,
    device: Device = None,
    dtype: Dtype = None,
    offload: Offload = None,
    gradient_checkpointing: Annotated[
        str,
        typer.Option(
            "--gradient-checkpointing", help="auto (only what the free memory requires), on or off."
        ),
    ] = "auto",
    height: Height = None,
    width: Width = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the generator and the rewards.")
    ] = False,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            help="World models: DDIM sampling steps under ReNO; a multi-step model is optimised "
            "through all of them (time grows with them). Default: the model's own (one/two-step models).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/reno"),
    overwrite: Overwrite = False,
) -> None:
    """Optimise the initial noise of a one-step generator against weighted rewards (ReNO).

    Writes the best and the initial images with their manifests (`compalign world eval OUT` scores
    them), per-image logs, results.json, rewards.png and a labelled before_after.png."""

    # lazy: loads diffusers, transformers
    from compalign.generators.world.generator import WorldGenerator
    from compalign.world.batch import verdict

    from .runner import run_task
    from .tasks import TaskError, build_task

    sources = [
        (k, v)
        for k, v in [
            ("prompt", prompt or None),
            ("file", prompts_file),
            ("t2i-compbench", t2i_compbench),
            ("suite", suite),
            ("geneval", geneval),
            ("parti", parti),
        ]
        if v
    ]
    if len(sources) != 1:
        _fail("give exactly one of: PROMPT..., --prompts, --t2i-compbench, --suite, --geneval, --parti")
    if limit is not None and limit < 1:
        _fail(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {batch_size}")
    if num_seeds < 1:
        _fail(f"--num-seeds must be >= 1, got {num_seeds}")
    if any(s < 0 for s in seed or []):
        _fail(f"--seed must be >= 0, got {min(seed or [0])}")
    seeds = [s + k for s in (seed or [0]) for k in range(num_seeds)]
    if steps is not None and steps < 1:
        _fail(f"--steps must be >= 1, got {steps}")
    options = generator_options(dtype, offload, height, width, gradient_checkpointing)
    if steps is not None:
        options["steps"] = steps
    try:
        config = ReNOConfig(**fields)
        items = build_task(sources[0][0], sources[0][1], seeds, split=split, limit=limit)
        given = parse_objective(reward or [], benchmark_reward or [])
    except (TaskError, ValueError) as e:
        _fail(e)
    settings = {
        "command": "reno",
        "model": model,
        "source": [sources[0][0], str(sources[0][1]) if sources[0][0] != "prompt" else None],
        "images": [[it.out, it.prompt, it.seed] for it in items],
        "config": {k: v for k, v in config.__dict__.items() if k != "progress"},
        "rewards": [[t.spec, t.weight] for t in given if t.optimize] or None,
        "benchmark_rewards": list(benchmark_reward or []),
        "dtype": dtype,
        "height": height,
        "width": width,
        **({} if steps is None else {"steps": steps}),
    }
    folder = check_out_dir(out, settings, overwrite)
    torch.manual_seed(seeds[0])
    gen = load_generator(model, device, options, gradient_checkpointing)
    is_world = isinstance(gen, WorldGenerator)
    if is_world:
        check_world_prompts([it.prompt for it in items], f"world model {model}")
    try:
        objective = given if reward else parse_objective(default_rewards(is_world), benchmark_reward or [])
        rewards = load_rewards(objective, gen.device)
    except (LookupError, ValueError, OSError, RuntimeError) as e:
        _fail(e)
    if not any(r.optimize for r in rewards):
        _fail("no reward to optimise: give at least one --reward NAME=WEIGHT with a non-zero weight")
    if compile_:
        gen.compile()
        for r in rewards:
            r.reward.compile()
    folder.start()
    run_info = {
        "model": model,
        "device": str(gen.device),
        "dtype": str(gen.dtype).removeprefix("torch."),
        "offload": offload or "none",
        "gradient_checkpointing": gradient_checkpointing,
        "height": int(getattr(gen, "height", gen.resolution)),
        "width": int(getattr(gen, "width", gen.resolution)),
        "compile": compile_,
        "batch_size": batch_size,
        "seeds": seeds,
        "resumed": folder.resume,
    }
    judge = verdict if (evaluate and is_world) else None
    try:
        summary = run_task(
            gen,
            rewards,
            items,
            out,
            config,
            batch_size,
            save_iterations,
            config.progress,
            judge=judge,
            run_info=run_info,
        )
    except ValueError as e:
        _fail(e)
    for name, m in summary.get("mean", {}).items():
        print(f"{name}: initial {m['initial']:.4f} -> best {m['best']:.4f}")
    report = summary.get("evaluation")
    if report:
        atomic_write_json(out / "evaluation.json", report)
        print(f"exact evaluator: initial {100 * report['initial']:.1f}% -> best {100 * report['best']:.1f}%")
    print(
        f"wrote {len(items)} images to {out} (manifest.json, _initial/, results.json, rewards.png, "
        "before_after.png)"
    )


def register(app: typer.Typer) -> None:
    app.command("reno")(reno_command)

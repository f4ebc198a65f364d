"""``compalign iterate``: IterComp's loop end to end (gallery -> rank -> pairs -> reward models ->
feedback training -> evaluation with and without ReNO -> report), resumable stage by stage.

Exit codes: 0 done (or stopped by ``--stop-after``); 2 bad input or a conflict with the work
folder's state (one line on stderr); 3 waiting for people's rankings (``--rank people``: the
message says what to serve); 1 a trainer was stopped by a signal (the same command resumes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from compalign._cli import fail as _fail

from ..feedback.cli import parse_stop_range
from ..feedback.config import DEFAULT_STOP_RANGE
from .config import DEFAULT_GALLERY_MODELS, ESTIMATE, STAGES

WAITING = 3


class IterateCommand(TyperCommand):
    """List options take several values after one flag (``--gallery-models a b c``), values running
    to the next ``-`` token."""

    greedy = ("--gallery-models", "--aspects", "--eval-seeds", "--eval-categories", "--reward-weights")

    def parse_args(self, ctx, args):
        out, i = [], 0
        while i < len(args):
            a = args[i]
            out.append(a)
            i += 1
            if a in self.greedy and i < len(args):
                out.append(args[i])
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    out += [a, args[i]]
                    i += 1
        return super().parse_args(ctx, out)


def _weights(items: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for text in items or []:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            _fail(f"--reward-weights {text!r}: expected ASPECT=WEIGHT")
        try:
            w = float(value)
        except ValueError:
            _fail(f"--reward-weights {text!r}: weight {value!r} is not a number")
        if name.strip() in out:
            _fail(f"--reward-weights: {name.strip()} given twice")
        out[name.strip()] = w
    return out


def iterate_command(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", "-w", help="Work folder (state.json, iter_<k>/); required.")
    ] = None,
    iterations: Annotated[int, typer.Option("--iterations", "-k", help="Iterations to have done.")] = 1,
    base: Annotated[str, typer.Option("--base", help="Model fine-tuned in iteration 1.")] = "world-base",
    gallery_models: Annotated[
        list[str] | None,
        typer.Option(
            "--gallery-models",
            help="Gallery models of iteration 1 (several; NAME=SPEC allowed; default: "
            f"{' '.join(DEFAULT_GALLERY_MODELS)}).",
        ),
    ] = None,
    aspects: Annotated[
        list[str] | None, typer.Option("--aspects", help="IterComp aspects (several) (default: all three).")
    ] = None,
    per_category: Annotated[
        int, typer.Option("--per-category", help="Train prompts per category in each gallery.")
    ] = 20,
    reward_heldout_per_category: Annotated[
        int,
        typer.Option(
            "--reward-heldout-per-category",
            help="Held-out prompts per category added to the galleries (the reward models' held-out pairs).",
        ),
    ] = 5,
    seeds_per_prompt: Annotated[
        int, typer.Option("--seeds-per-prompt", help="Gallery records per prompt (each with its own seed).")
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of galleries and trainers.")] = 0,
    gallery_resolution: Annotated[int | None, typer.Option("--gallery-resolution")] = None,
    gallery_steps: Annotated[
        int | None, typer.Option("--gallery-steps", help="Default: each model's.")
    ] = None,
    gallery_guidance: Annotated[float | None, typer.Option("--gallery-guidance")] = None,
    gallery_batch_size: Annotated[int, typer.Option("--gallery-batch-size")] = 16,
    rank: Annotated[
        str, typer.Option("--rank", help="auto (exact evaluator) or people (stops for `rank serve`).")
    ] = "auto",
    tie_break: Annotated[
        str, typer.Option("--tie-break", help="auto ranking: world-clip or none.")
    ] = "world-clip",
    pairs_decided_only: Annotated[
        bool,
        typer.Option(
            "--pairs-decided-only/--pairs-with-tie-breaks",
            help="auto ranking: reward pairs only where the evaluator's verdicts differ.",
        ),
    ] = True,
    reward_backbone: Annotated[
        str, typer.Option("--reward-backbone", help="world-clip, world-clip:FOLDER, clip:PATH, blip:PATH.")
    ] = "world-clip",
    reward_epochs: Annotated[int, typer.Option("--reward-epochs")] = 2,
    reward_batch_size: Annotated[int, typer.Option("--reward-batch-size")] = 32,
    reward_lr: Annotated[float, typer.Option("--reward-lr")] = 1e-5,
    reward_head_lr: Annotated[float | None, typer.Option("--reward-head-lr")] = None,
    reward_freeze_ratio: Annotated[float, typer.Option("--reward-freeze-ratio")] = 0.7,
    reward_weights: Annotated[
        list[str] | None,
        typer.Option(
            "--reward-weights", help="ASPECT=WEIGHT (several) for feedback (x --reno-reward-scale in ReNO)."
        ),
    ] = None,
    feedback_steps: Annotated[int, typer.Option("--feedback-steps")] = 150,
    feedback_batch_size: Annotated[int, typer.Option("--feedback-batch-size")] = 8,
    feedback_lr: Annotated[float | None, typer.Option("--feedback-lr", help="Default: 1e-4 (world).")] = None,
    feedback_stop_range: Annotated[
        str | None,
        typer.Option("--feedback-stop-range", help="ReFL stop range: fractions LO,HI or indices A,B."),
    ] = None,
    reg_type: Annotated[
        str, typer.Option("--reg-type", help="auto, denoising, distance or none (not advised).")
    ] = "auto",
    reg_weight: Annotated[float, typer.Option("--reg-weight")] = 1.0,
    pool_dir: Annotated[
        Path | None,
        typer.Option("--pool-dir", help="Scene pool (default: the per-user cache, $COMPALIGN_CACHE)."),
    ] = None,
    pool_per_category: Annotated[int, typer.Option("--pool-per-category")] = 1024,
    feedback_checkpoint_every: Annotated[int, typer.Option("--feedback-checkpoint-every")] = 50,
    eval_categories: Annotated[
        list[str] | None,
        typer.Option("--eval-categories", help="Held-out categories (several) (default: the aspects')."),
    ] = None,
    eval_single_object: Annotated[
        bool,
        typer.Option(
            "--eval-single-object/--no-eval-single-object",
            help="With the default categories, also evaluate single_object (reward-hacking check).",
        ),
    ] = True,
    eval_per_category: Annotated[int, typer.Option("--eval-per-category")] = 20,
    eval_seeds: Annotated[
        list[int] | None, typer.Option("--eval-seeds", help="Seeds per prompt (several) (default: 0 1).")
    ] = None,
    eval_batch_size: Annotated[int, typer.Option("--eval-batch-size")] = 64,
    reno: Annotated[bool, typer.Option("--reno/--no-reno", help="Evaluate with and without ReNO.")] = True,
    reno_model: Annotated[
        str, typer.Option("--reno-model", help="One/two-step generator for ReNO when the base is multi-step.")
    ] = "world-onestep",
    reno_iterations: Annotated[int, typer.Option("--reno-iterations")] = 20,
    reno_lr: Annotated[float, typer.Option("--reno-lr")] = 5.0,
    reno_reward_scale: Annotated[
        float,
        typer.Option(
            "--reno-reward-scale", help="Factor on the reward weights in ReNO (composition rewards: 0.1)."
        ),
    ] = 0.1,
    reno_per_category: Annotated[
        int | None, typer.Option("--reno-per-category", help="Default: --eval-per-category.")
    ] = None,
    force_stage: Annotated[
        list[str] | None,
        typer.Option(
            "--force-stage",
            help=f"Redo a finished stage and everything after it: K:STAGE, or STAGE (of the last iteration); "
            f"stages: {', '.join(STAGES)}. Repeatable.",
        ),
    ] = None,
    stop_after: Annotated[
        str | None, typer.Option("--stop-after", help="Stop after this stage (STAGE or K:STAGE).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (default: auto).")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads of the trainers.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Exact-evaluator processes.")] = 0,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bars (default: on a terminal).")
    ] = None,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Print the time estimate of one iteration and exit.")
    ] = False,
) -> None:
    """Run IterComp's loop for K iterations in WORKDIR (resumes; finished stages are skipped)."""
    if estimate:
        print(ESTIMATE)
        return
    if workdir is None:
        _fail("give --workdir DIR (the work folder: created, or resumed when it holds a state.json)")
    from .config import IterateConfig
    from .run import run_iterate
    from .state import IterateError, IterateInterrupted

    try:
        config = IterateConfig(
            workdir=str(workdir), iterations=iterations, base=base,
            gallery_models=list(gallery_models or DEFAULT_GALLERY_MODELS),
            aspects=list(aspects) if aspects else IterateConfig().aspects, seed=seed,
            per_category=per_category, reward_heldout_per_category=reward_heldout_per_category,
            gallery_resolution=gallery_resolution, gallery_steps=gallery_steps,
            gallery_guidance=gallery_guidance, gallery_batch_size=gallery_batch_size, rank=rank,
            tie_break=tie_break, pairs_decided_only=pairs_decided_only,
            seeds_per_prompt=seeds_per_prompt,
            reward_training=dict(
                backbone=reward_backbone, epochs=reward_epochs, batch_size=reward_batch_size,
                learning_rate=reward_lr, head_learning_rate=reward_head_lr, freeze_ratio=reward_freeze_ratio,
            ),
            reward_weights=_weights(reward_weights),
            feedback_training=dict(
                max_steps=feedback_steps, batch_size=feedback_batch_size, learning_rate=feedback_lr,
                stop_range=(
                    parse_stop_range(feedback_stop_range, "--feedback-stop-range")
                    if feedback_stop_range else list(DEFAULT_STOP_RANGE)
                ),
                reg_type=reg_type, reg_weight=reg_weight, pool_dir=str(pool_dir) if pool_dir else None,
                pool_per_category=pool_per_category, checkpoint_every=feedback_checkpoint_every,
            ),
            eval_categories=list(eval_categories) if eval_categories else None,
            eval_single_object=eval_single_object,
            eval_per_category=eval_per_category, eval_seeds=list(eval_seeds) if eval_seeds else [0, 1],
            eval_batch_size=eval_batch_size, reno=reno, reno_model=reno_model,
            noise_optimization=dict(iterations=reno_iterations, lr=reno_lr),
            reno_reward_scale=reno_reward_scale, reno_per_category=reno_per_category,
            device=device, num_threads=threads,
            workers=workers, progress=sys.stderr.isatty() if progress is None else progress,
            force_stages=list(force_stage or []), stop_after=stop_after,
        )  # fmt: skip
    except ValueError as e:  # a bad option value (the message names it)
        _fail(str(e))
    try:
        outcome = run_iterate(config)
    except IterateError as e:
        _fail(str(e))
    except IterateInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if outcome.status == "waiting":
        print(outcome.message, file=sys.stderr)
        raise typer.Exit(WAITING)
    print(outcome.message)


def register(app: typer.Typer) -> None:
    app.command("iterate", cls=IterateCommand)(iterate_command)

"""Checks of an `IterateConfig` before any work: sizes, names, stage references, the work folder,
and that the models and the reward backbone load (`validate`; the trainers' nested configs check
their own fields when they are built)."""

from __future__ import annotations

from pathlib import Path

from ..gallery.format import GalleryError
from ..gallery.generate import ModelSpec, check_model_spec, parse_models
from ..generators import create_generator
from ..generators.registry import FACTORIES, load_adapters
from ..rewards.composition.backbones import list_backbones
from ..rewards.world_clip.reward import resolve_model_dir
from ..world.suites import ASPECTS, CATEGORIES, N_HELDOUT
from .config import TIE_BREAKS, IterateConfig, base_name, parse_stage_ref
from .state import LOCK_FILE, STATE_FILE, IterateError


def validate(config: IterateConfig) -> None:
    """Check everything that can be checked before any work (raises `IterateError`)."""
    c = config

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise IterateError(message)

    need(c.iterations >= 1, f"--iterations must be >= 1, got {c.iterations}")
    root = Path(c.workdir)
    need(
        not (root.exists() and not root.is_dir()),
        f"{root}: --workdir must be a folder, and a file has that name",
    )
    if root.is_dir() and not (root / STATE_FILE).is_file():
        extra = [p.name for p in root.iterdir() if p.name != LOCK_FILE]
        need(
            not extra,
            f"{root}: not an iterate work folder (no {STATE_FILE}) and not empty; choose a new or empty "
            "--workdir",
        )
    need(bool(c.aspects), "no aspects: give --aspects with some of " + ", ".join(ASPECTS))
    for a in c.aspects:
        need(a in ASPECTS, f"unknown aspect {a!r}; expected some of: {', '.join(ASPECTS)}")
    need(len(set(c.aspects)) == len(c.aspects), "an aspect is given twice in --aspects")
    need(c.seed >= 0, f"--seed must be >= 0, got {c.seed}")
    for name, v, lo in (
        ("--per-category", c.per_category, 1),
        ("--reward-heldout-per-category", c.reward_heldout_per_category, 0),
        ("--seeds-per-prompt", c.seeds_per_prompt, 1),
        ("--gallery-batch-size", c.gallery_batch_size, 1),
        ("--feedback-pool-per-category", c.feedback_training.pool_per_category, 1),
        ("--eval-per-category", c.eval_per_category, 1),
        ("--eval-batch-size", c.eval_batch_size, 1),
        ("--workers", c.workers, 0),
    ):
        need(v >= lo, f"{name} must be >= {lo}, got {v}")
    need(c.reno_per_category is None or c.reno_per_category >= 1, "--reno-per-category must be >= 1")
    need(c.reno_steps is None or c.reno_steps >= 1, "--reno-steps must be >= 1")
    need(
        c.feedback_method in ("refl", "raft"),
        f"unknown --feedback-method {c.feedback_method!r}; expected refl or raft",
    )
    need(
        c.feedback_method != "raft" or not _is_adapter(c.base),
        f"--feedback-method raft fine-tunes world models; --base {c.base} is not one",
    )
    need(bool(c.eval_seeds), "--eval-seeds: give at least one seed")
    need(all(s >= 0 for s in c.eval_seeds), f"--eval-seeds must be >= 0, got {c.eval_seeds}")
    need(len(set(c.eval_seeds)) == len(c.eval_seeds), "--eval-seeds: a seed is given twice")
    need(c.rank in ("auto", "people"), f"unknown --rank {c.rank!r}; expected auto or people")
    need(
        c.tie_break in TIE_BREAKS, f"unknown --tie-break {c.tie_break!r}; expected {' or '.join(TIE_BREAKS)}"
    )
    need(c.noise_optimization.lr > 0, f"--reno-lr must be > 0, got {c.noise_optimization.lr}")
    need(c.reno_reward_scale > 0, f"--reno-reward-scale must be > 0, got {c.reno_reward_scale}")
    for a, w in c.reward_weights.items():
        need(a in c.aspects, f"--reward-weights: {a!r} is not one of the aspects ({', '.join(c.aspects)})")
        need(w == w and abs(w) != float("inf"), f"--reward-weights: weight of {a} is not finite")
    need(
        any(c.weight(a) != 0 for a in c.aspects), "--reward-weights: every weight is 0, nothing to train for"
    )
    if c.eval_categories is not None:
        need(bool(c.eval_categories), "--eval-categories: give at least one category")
        for cat in c.eval_categories:
            need(
                cat in CATEGORIES,
                f"unknown category {cat!r} in --eval-categories; expected: {', '.join(CATEGORIES)}",
            )
    overlap = set(c.evaluation_categories()) & set(c.categories_of_aspects())
    top = max(c.eval_per_category, c.reno_prompts_per_category() if c.reno else 0)
    need(
        not overlap or top + c.reward_heldout_per_category <= N_HELDOUT,
        f"{top} evaluation + {c.reward_heldout_per_category} reward held-out prompts per category exceed the "
        f"{N_HELDOUT} held-out prompts of a suite; the two sets must not overlap",
    )
    for text in c.force_stages:
        k, _ = stage_ref(text, "--force-stage")
        need(
            k is None or k <= c.iterations,
            f"--force-stage {text}: iteration {k} > --iterations {c.iterations}",
        )
    if c.stop_after is not None:
        k, _ = stage_ref(c.stop_after, "--stop-after")
        need(
            k is None or k <= c.iterations,
            f"--stop-after {c.stop_after}: iteration {k} > --iterations {c.iterations}",
        )

    # models (loadable, names free for the bases of later iterations)
    need(bool(c.gallery_models), "no gallery models: give --gallery-models M1 M2 ...")
    try:
        specs = parse_models(c.gallery_models)
        names = [m.name for m in specs]
        for k in range(1, c.iterations + 1):
            need(
                base_name(k) not in names,
                f"gallery model name {base_name(k)} is kept for the base of iteration {k}; name it NAME=SPEC",
            )
        for m in specs:
            check_model_spec(m)
        check_model_spec(ModelSpec("base", c.base))
    except GalleryError as e:
        raise IterateError(str(e)) from None
    _check_reward_backbone(c.reward_training.backbone)
    if c.reno:
        _check_reno(c)


def stage_ref(text: str, what: str) -> tuple[int | None, str]:
    """`parse_stage_ref`, its error an `IterateError`."""
    try:
        return parse_stage_ref(text, what)
    except ValueError as e:
        raise IterateError(str(e)) from None


def _check_reward_backbone(spec: str) -> None:
    name, _, source = spec.partition(":")
    if name not in list_backbones():
        raise IterateError(f"unknown --reward-backbone {spec!r}; known kinds: {', '.join(list_backbones())}")
    if name == "world-clip":
        try:
            resolve_model_dir(source or "world-clip")
        except (LookupError, FileNotFoundError) as e:
            raise IterateError(f"--reward-backbone {spec}: {e}") from None
    elif source and (source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists()):
        raise IterateError(f"--reward-backbone {spec}: folder {source} does not exist")


def _is_adapter(spec: str) -> bool:
    load_adapters()
    prefix, sep, _ = spec.partition(":")
    return bool(sep) and prefix in FACTORIES


def _differentiable(spec: str) -> bool:
    return bool(create_generator(spec, device="cpu").differentiable)


def _check_reno(c: IterateConfig) -> None:
    """ReNO runs on the base when it is one/two-step or `reno_steps` is set (a world base), else on
    `reno_model`, which must be one/two-step."""
    if c.reno_steps is not None:
        if _is_adapter(c.base):
            raise IterateError(
                f"--reno-steps is for world models; --base {c.base} is not one (use --reno-model)"
            )
        return
    if not _is_adapter(c.base):
        try:
            if _differentiable(c.base):
                return
        except (LookupError, FileNotFoundError, ValueError, OSError) as e:
            raise IterateError(f"--base {c.base}: {e}") from None
    try:
        check_model_spec(ModelSpec("reno", c.reno_model))
    except GalleryError as e:
        raise IterateError(f"--reno-model: {e}") from None
    try:
        ok = _differentiable(c.reno_model)
    except (LookupError, FileNotFoundError, ValueError, OSError) as e:
        raise IterateError(f"--reno-model {c.reno_model}: {e}") from None
    if not ok:
        raise IterateError(
            f"--reno-model {c.reno_model} is a multi-step generator; ReNO needs a one- or two-step one "
            "(e.g. world-onestep), or pass --no-reno"
        )

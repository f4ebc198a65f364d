"""IterComp's loop, end to end and resumable: ``run_iterate(IterateConfig(...))``.

Per iteration k (folder ``<workdir>/iter_<k>/``), in order (`STAGES`):

1. ``gallery``  one gallery per aspect (``gallery/<aspect>/``): iteration 1 renders the gallery models
   on the train-split suite prompts of the aspect's categories (plus a few held-out prompts for the
   reward models' held-out pairs); iteration k > 1 copies iteration k-1's ranked gallery and expands
   it with the base fine-tuned in iteration k-1 (``gallery.expand``: the old rank becomes
   ``initial_rank``);
2. ``rank``     ``auto``: every record ranked by the exact world evaluator (``ranking.auto``);
   ``people``: people's rankings (``rank serve``) are exported; the run stops, saying what to
   serve, until every record is ranked;
3. ``pairs``    ``pairs/<aspect>.jsonl`` (split by prompt: held-out prompts give held-out pairs);
4. ``rewards``  one composition reward model per aspect (``rewards/<aspect>/final``), trained on
   the train pairs, selected and scored on the held-out pairs;
5. ``feedback`` ReFL training of the current base against the weighted aspect reward models, with
   the regulariser (``feedback/``); the result is ``iter_<k>/base``;
6. ``evaluate`` held-out exact-evaluator accuracy per category of every gallery model and the new
   base (``eval/<model>.json``, and ``eval/<model>.images.npz``: its first-seed images, which the
   reward check scores and the report shows; results of unchanged models are reused from earlier
   iterations);
7. ``reno``     the new base (or, when it is multi-step, `reno_model`) with and without ReNO, the
   aspect reward models as rewards (``reno/``);
8. ``report``   ``report.md``, ``plots/*.png``, ``summary.json`` (and ``<workdir>/report.md``).

``<workdir>/state.json`` (written atomically) records every stage with its status, the settings it
ran with and its outputs. A finished stage is never redone; a killed run continues at the stage it
stopped in (the stages' own resumption: gallery images on disk, trainer checkpoints, evaluation
files); a finished (or started) stage whose settings changed is an `IterateError`, unless it is
forced (``force_stages``), which redoes it and everything after it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..feedback.config import DEFAULT_STOP_RANGE
from ..io import atomic_path
from .config import REG_TYPES, STAGES, TIE_BREAKS, IterateConfig, base_name, parse_stage_ref

if TYPE_CHECKING:
    import torch

STATE_FILE = "state.json"
LOCK_FILE = ".iterate.lock"
STATE_VERSION = 1
JUDGE = "world"


class IterateError(ValueError):
    """Bad input or a conflict with the work folder's state; the message says what to do."""


class IterateInterrupted(RuntimeError):
    """A stage was stopped (SIGINT / SIGTERM in a trainer); the same command resumes it."""


class WaitingForPeople(Exception):
    """People mode: some records are not ranked yet (the message says what to serve)."""


@dataclass
class Outcome:
    status: str
    """``done`` (every iteration finished), ``stopped`` (`stop_after`) or ``waiting`` (people)."""
    message: str
    ran: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    report: Path | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _plain(obj):
    """JSON round trip (tuples -> lists), so settings compare as they are stored."""
    return json.loads(json.dumps(obj))


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ state
class State:
    """``state.json``: ``{"version", "created", "updated", "config", "iterations": {"k": {stage:
    {"status", "settings", "outputs", "started", "finished", "seconds"}}}}``."""

    def __init__(self, root: Path):
        self.path = root / STATE_FILE
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise IterateError(f"{self.path}: cannot read the state ({e}); fix or remove it") from None
            if not isinstance(self.data, dict) or not isinstance(self.data.get("iterations"), dict):
                raise IterateError(f"{self.path}: not an iterate state file (no iterations object)")
        else:
            self.data = {"version": STATE_VERSION, "created": _now(), "iterations": {}}

    def entry(self, k: int, stage: str) -> dict | None:
        return self.data["iterations"].get(str(k), {}).get(stage)

    def put(self, k: int, stage: str, entry: dict) -> None:
        self.data["iterations"].setdefault(str(k), {})[stage] = entry
        self.save()

    def done(self, k: int, stage: str) -> bool:
        e = self.entry(k, stage)
        return e is not None and e.get("status") == "done"

    def outputs(self, k: int, stage: str) -> dict:
        e = self.entry(k, stage)
        return (e or {}).get("outputs") or {}

    def drop_from(self, k: int, stage: str) -> list[tuple[int, str]]:
        """Remove (k, stage), the later stages of k and every later iteration; returns what went."""
        gone = []
        for key in sorted(self.data["iterations"], key=int):
            j = int(key)
            if j < k:
                continue
            stages = self.data["iterations"][key]
            for s in list(stages):
                if j > k or STAGES.index(s) >= STAGES.index(stage):
                    gone.append((j, s))
                    del stages[s]
            if not stages:
                del self.data["iterations"][key]
        self.save()
        return gone

    def save(self) -> None:
        from ..io import atomic_write_json

        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)


@contextmanager
def _locked(root: Path):
    """One `iterate` per work folder at a time."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise IterateError(
                f"{root}: another `compalign iterate` is running in this work folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ helpers
def gallery_prompts(config: IterateConfig, aspect: str) -> tuple[list[str], list[str], int]:
    """(prompts, their categories, number of train prompts): the first `per_category` train prompts
    of every category of `aspect`, then the last `reward_heldout_per_category` held-out prompts of
    each (deduplicated); each prompt `seeds_per_prompt` times in a row (one record, one seed each)."""
    from ..world.suites import list_categories, load_suite

    prompts, cats, seen = [], [], set()

    def add(p: str, c: str) -> None:
        if p not in seen:
            seen.add(p)
            prompts.append(p)
            cats.append(c)

    for c in list_categories(aspect):
        for p in load_suite(c, "train")[: config.per_category]:
            add(p, c)
    n_train = len(prompts)
    m = config.reward_heldout_per_category
    for c in list_categories(aspect):
        held = load_suite(c, "heldout")
        for p in held[len(held) - m :] if m else []:
            add(p, c)
    r = config.seeds_per_prompt  # repeats keep the train prompts first
    train = [p for p in prompts[:n_train] for _ in range(r)]
    held = [p for p in prompts[n_train:] for _ in range(r)]
    cats = [c for c in cats[:n_train] for _ in range(r)] + [c for c in cats[n_train:] for _ in range(r)]
    return train + held, cats, len(train)


def _fingerprint(spec: str) -> str:
    """Identity of a generator's weights: sizes and times of the files of its folder ('' for a
    spec that is not a local world model)."""
    from ..generators.registry import _pipeline_dir, shipped_models, weights_root

    path = Path(spec)
    folder = None
    if path.exists():
        folder = _pipeline_dir(path)
    elif spec in shipped_models():
        folder = weights_root() / spec
    if folder is None:
        return ""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def eval_images_path(eval_file: Path) -> Path:
    """``eval/<model>.images.npz`` next to ``eval/<model>.json``: the model's evaluation images of
    the first evaluation seed."""
    return eval_file.with_name(eval_file.stem + ".images.npz")


def _save_eval_images(path: Path, batches: list, records: list[dict]) -> None:
    import numpy as np

    images = np.concatenate(batches) if batches else np.zeros((0, 1, 1, 3), np.uint8)
    if len(images) != len(records):
        raise IterateError(f"{path}: {len(images)} kept images for {len(records)} first-seed records")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy adds no suffix
        np.savez_compressed(
            fh,
            images=images,
            prompts=np.array([r["prompt"] for r in records]),
            categories=np.array([r["category"] for r in records]),
        )


def load_eval_images(path: Path, categories: list[str], prompts: list[str]) -> torch.Tensor | None:
    """The stored evaluation images of (category, prompt) in this order, as ``[B, 3, H, W]`` in
    [0, 1]; None when the file is missing, unreadable or lacks one of them."""
    import numpy as np
    import torch

    try:
        with np.load(path) as z:
            images, ps, cs = z["images"], z["prompts"].tolist(), z["categories"].tolist()
    except (OSError, KeyError, ValueError):
        return None
    where = {(c, p): i for i, (c, p) in enumerate(zip(cs, ps, strict=True))}
    try:
        idx = [where[(c, p)] for c, p in zip(categories, prompts, strict=True)]
    except KeyError:
        return None
    return torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255


def _abs_spec(spec: str) -> str:
    """A generator spec with a local folder made absolute (the work folder outlives the cwd)."""
    p = Path(spec)
    return str(p.resolve()) if p.exists() else spec


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# ------------------------------------------------------------------------------------------ validation
def validate(config: IterateConfig) -> None:
    """Check everything that can be checked before any work (raises `IterateError`)."""
    from ..gallery.format import GalleryError
    from ..gallery.generate import ModelSpec, check_model_spec, parse_models
    from ..world.suites import ASPECTS, CATEGORIES, N_HELDOUT

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
        ("--reward-epochs", c.reward_epochs, 1),
        ("--reward-batch-size", c.reward_batch_size, 1),
        ("--feedback-steps", c.feedback_steps, 1),
        ("--feedback-batch-size", c.feedback_batch_size, 1),
        ("--pool-per-category", c.pool_per_category, 1),
        ("--feedback-checkpoint-every", c.feedback_checkpoint_every, 1),
        ("--eval-per-category", c.eval_per_category, 1),
        ("--eval-batch-size", c.eval_batch_size, 1),
        ("--reno-iterations", c.reno_iterations, 1),
        ("--workers", c.workers, 0),
    ):
        need(v >= lo, f"{name} must be >= {lo}, got {v}")
    need(c.reno_per_category is None or c.reno_per_category >= 1, "--reno-per-category must be >= 1")
    need(bool(c.eval_seeds), "--eval-seeds: give at least one seed")
    need(all(s >= 0 for s in c.eval_seeds), f"--eval-seeds must be >= 0, got {c.eval_seeds}")
    need(len(set(c.eval_seeds)) == len(c.eval_seeds), "--eval-seeds: a seed is given twice")
    need(c.rank in ("auto", "people"), f"unknown --rank {c.rank!r}; expected auto or people")
    need(
        c.tie_break in TIE_BREAKS, f"unknown --tie-break {c.tie_break!r}; expected {' or '.join(TIE_BREAKS)}"
    )
    need(
        c.reg_type in REG_TYPES, f"unknown --reg-type {c.reg_type!r}; expected one of {', '.join(REG_TYPES)}"
    )
    need(c.reg_weight >= 0, f"--reg-weight must be >= 0, got {c.reg_weight}")
    need(c.reno_lr > 0, f"--reno-lr must be > 0, got {c.reno_lr}")
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
        k, _ = _ref(text, "--force-stage")
        need(
            k is None or k <= c.iterations,
            f"--force-stage {text}: iteration {k} > --iterations {c.iterations}",
        )
    if c.stop_after is not None:
        k, _ = _ref(c.stop_after, "--stop-after")
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
    _check_reward_backbone(c.reward_backbone)
    _check_trainer_configs(c)
    if c.reno:
        _check_reno(c)


def _ref(text: str, what: str) -> tuple[int | None, str]:
    try:
        return parse_stage_ref(text, what)
    except ValueError as e:
        raise IterateError(str(e)) from None


def _check_reward_backbone(spec: str) -> None:
    from ..rewards.composition.backbones import list_backbones

    name, _, source = spec.partition(":")
    if name not in list_backbones():
        raise IterateError(f"unknown --reward-backbone {spec!r}; known kinds: {', '.join(list_backbones())}")
    if name == "world-clip":
        from ..rewards.world_clip.reward import resolve_model_dir

        try:
            resolve_model_dir(source or "world-clip")
        except (LookupError, FileNotFoundError) as e:
            raise IterateError(f"--reward-backbone {spec}: {e}") from None
    elif source and (source.startswith(("/", ".", "~")) and not Path(source).expanduser().exists()):
        raise IterateError(f"--reward-backbone {spec}: folder {source} does not exist")


def _check_trainer_configs(c: IterateConfig) -> None:
    """The reward and feedback trainers' own checks, on placeholder paths."""
    from ..feedback.config import FeedbackConfig
    from ..rewards.composition.train import RewardTrainConfig

    try:
        RewardTrainConfig(
            pairs="-", aspect=c.aspects[0], output_dir="-", backbone=c.reward_backbone,
            freeze_ratio=c.reward_freeze_ratio, epochs=c.reward_epochs, batch_size=c.reward_batch_size,
            learning_rate=c.reward_lr, head_learning_rate=c.reward_head_lr, seed=c.seed,
        )  # fmt: skip
        FeedbackConfig(
            base=c.base, output_dir="-", rewards={"composition:-": 1.0}, aspects=list(c.aspects),
            max_steps=c.feedback_steps, batch_size=c.feedback_batch_size, learning_rate=c.feedback_lr,
            stop_range=list(c.feedback_stop_range), reg_type=c.reg_type, reg_weight=c.reg_weight,
            pool_per_category=c.pool_per_category, seed=c.seed,
        )  # fmt: skip
    except ValueError as e:
        raise IterateError(str(e)) from None


def _is_adapter(spec: str) -> bool:
    from ..generators.registry import _FACTORIES, _load_adapters

    _load_adapters()
    prefix, sep, _ = spec.partition(":")
    return bool(sep) and prefix in _FACTORIES


def _differentiable(spec: str) -> bool:
    from ..generators import create_generator

    return bool(create_generator(spec, device="cpu").differentiable)


def _check_reno(c: IterateConfig) -> None:
    """ReNO runs on the base when it is one/two-step, else on `reno_model`, which must be."""
    from ..gallery.format import GalleryError
    from ..gallery.generate import ModelSpec, check_model_spec

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


# ------------------------------------------------------------------------------------------ the run
def no_train_pairs_message(k: int, aspect: str, counts: dict) -> str:
    """Why an iteration's gallery gave no train pairs, from `pairs.make`'s counts."""
    head = f"iteration {k}, {aspect}: no train pairs"
    if counts.get("heldout"):
        return (
            f"{head}: every one of its {counts['heldout']} pair(s) comes from held-out prompts, which are "
            "never trained on (the split is by prompt); give the gallery more prompts, or train-split ones"
        )
    if counts.get("tie_break_skipped"):
        return (
            f"{head}: the only {counts['tie_break_skipped']} pair(s) were ordered by the tie-break alone, "
            f"and pairs_decided_only leaves those out ({counts['tied_skipped']} tied pairs skipped); "
            "pass --pairs-with-tie-breaks, or use models that differ"
        )
    return (
        f"{head} ({counts['pairs']} pairs, {counts['tied_skipped']} tied pairs skipped): the gallery models "
        "are tied on every train record; use models that differ, more prompts, or --tie-break world-clip"
    )


class IterateRun:
    """One invocation: the config, the work folder, its state, and the stages."""

    def __init__(self, config: IterateConfig, log: Callable[[str], None] | None = None):
        self.config = config
        self.root = Path(config.workdir)
        self.log = log or _note
        self.state: State | None = None

    # ------------------------------------------------------------------ paths
    def iter_dir(self, k: int) -> Path:
        return self.root / f"iter_{k}"

    def gallery_dir(self, k: int, aspect: str) -> Path:
        return self.iter_dir(k) / "gallery" / aspect

    def pairs_file(self, k: int, aspect: str) -> Path:
        return self.iter_dir(k) / "pairs" / f"{aspect}.jsonl"

    def reward_run(self, k: int, aspect: str) -> Path:
        return self.iter_dir(k) / "rewards" / aspect

    def base_dir(self, k: int) -> Path:
        return self.iter_dir(k) / "base"

    def rel(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p)

    def spec_label(self, spec: str) -> str:
        """How a generator spec is recorded: local folders relative to the work folder."""
        return self.rel(spec) if Path(spec).exists() else spec

    def abs(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p).resolve()

    def pool_dir(self) -> Path:
        from ..cache import scene_pool_dir

        return Path(self.config.pool_dir) if self.config.pool_dir else scene_pool_dir()

    def current_base(self, k: int) -> tuple[str, str, str]:
        """(name, spec to load, spec as recorded) of the base fine-tuned in iteration k."""
        if k == 1:
            from ..gallery.generate import default_model_name

            return default_model_name(self.config.base), _abs_spec(self.config.base), self.config.base
        return base_name(k - 1), str(self.base_dir(k - 1).resolve()), f"iter_{k - 1}/base"

    def stage_paths(self, k: int, stage: str) -> list[Path]:
        """What a stage of iteration k writes (removed when it is forced to run again)."""
        d = self.iter_dir(k)
        return {
            "gallery": [d / "gallery"],
            "rank": [],
            "pairs": [d / "pairs"],
            "rewards": [d / "rewards"],
            "feedback": [d / "feedback", d / "base"],
            "evaluate": [d / "eval"],
            "reno": [d / "reno"],
            "report": [d / "report.md", d / "plots", d / "summary.json"],
        }[stage]

    # ------------------------------------------------------------------ settings per stage
    def settings(self, k: int, stage: str) -> dict:
        c = self.config
        if stage == "gallery":
            if k == 1:
                return _plain(
                    {
                        "models": list(c.gallery_models),
                        "aspects": c.aspects,
                        "per_category": c.per_category,
                        "reward_heldout_per_category": c.reward_heldout_per_category,
                        "seeds_per_prompt": c.seeds_per_prompt,
                        "seed": c.seed,
                        "resolution": c.gallery_resolution,
                        "steps": c.gallery_steps,
                        "guidance": c.gallery_guidance,
                    }
                )
            return _plain(
                {
                    "from": f"iter_{k - 1}/gallery",
                    "add": {"name": base_name(k - 1), "spec": f"iter_{k - 1}/base"},
                    "aspects": c.aspects,
                    "merge": "none" if c.rank == "auto" else "people",
                }
            )
        if stage == "rank":
            if c.rank == "people":
                return {"mode": "people"}
            return {"mode": "auto", "judge": JUDGE, "tie_break": c.tie_break}
        if stage == "pairs":
            return _plain(
                {
                    "aspects": c.aspects,
                    "split": "by prompt (world suites' held-out rule)",
                    "decided_only": c.decided_pairs,
                }
            )
        if stage == "rewards":
            return _plain(
                {
                    "aspects": c.aspects,
                    "backbone": c.reward_backbone,
                    "epochs": c.reward_epochs,
                    "batch_size": c.reward_batch_size,
                    "lr": c.reward_lr,
                    "head_lr": c.reward_head_lr,
                    "freeze_ratio": c.reward_freeze_ratio,
                    "seed": c.seed,
                }
            )
        if stage == "feedback":
            return _plain(
                {
                    "base": self.current_base(k)[2],
                    "weights": {a: c.weight(a) for a in c.aspects},
                    "steps": c.feedback_steps,
                    "batch_size": c.feedback_batch_size,
                    "lr": c.feedback_lr,
                    "reg_type": c.reg_type,
                    "reg_weight": c.reg_weight,
                    "pool_per_category": c.pool_per_category,
                    "seed": c.seed,
                    # recorded only when not the default, so older work folders still match
                    **(
                        {"stop_range": c.feedback_stop_range}
                        if c.feedback_stop_range != list(DEFAULT_STOP_RANGE)
                        else {}
                    ),
                }
            )
        if stage == "evaluate":
            return _plain(
                {
                    "categories": c.evaluation_categories(),
                    "per_category": c.eval_per_category,
                    "seeds": c.eval_seeds,
                    "split": "heldout",
                }
            )
        if stage == "reno":
            if not c.reno:
                return {"enabled": False}
            return _plain(
                {
                    "enabled": True,
                    "model": c.reno_model,
                    "iterations": c.reno_iterations,
                    "lr": c.reno_lr,
                    "per_category": c.reno_prompts_per_category(),
                    "seeds": c.eval_seeds,
                    "categories": c.evaluation_categories(),
                    "weights": {a: c.reno_weight(a) for a in c.aspects},
                }
            )
        return {}

    # ------------------------------------------------------------------ orchestration
    def run(self) -> Outcome:
        validate(self.config)
        with _locked(self.root):
            self.state = State(self.root)
            self.state.data["config"] = self.config.to_dict()
            self.state.save()
            return self._loop()

    def _loop(self) -> Outcome:
        c, state = self.config, self.state
        forced = self._forced()
        stop = _ref(c.stop_after, "--stop-after") if c.stop_after else None
        ran: list[tuple[int, str]] = []
        skipped: list[tuple[int, str]] = []
        n = c.iterations
        # every recorded stage before the first forced one must have the current settings (checked
        # before any work)
        first_forced = min(forced, key=lambda ks: (ks[0], STAGES.index(ks[1])), default=None)
        for k in range(1, n + 1):
            for stage in STAGES:
                if first_forced is not None and (k, STAGES.index(stage)) >= (
                    first_forced[0],
                    STAGES.index(first_forced[1]),
                ):
                    break
                self._check_settings(k, stage)
        for k in range(1, n + 1):
            for stage in STAGES:
                tag = f"[iterate {k}/{n}] {stage}"
                settings = self.settings(k, stage)
                if (k, stage) in forced:
                    forced.discard((k, stage))
                    self._invalidate(k, stage)
                entry = self._check_settings(k, stage)
                if entry is not None and entry.get("status") == "done":
                    skipped.append((k, stage))
                    self.log(f"{tag}: done earlier, skipped")
                else:
                    resumed = entry is not None
                    self.log(f"{tag}: {'resuming' if resumed else 'starting'}")
                    try:
                        self._run_stage(k, stage, settings, entry)
                    except WaitingForPeople as w:
                        return Outcome("waiting", str(w), ran, skipped)
                    ran.append((k, stage))
                    secs = state.entry(k, stage)["last_session_s"]
                    self.log(f"{tag}: done in {secs:.1f} s")
                if (
                    stop is not None
                    and stage == stop[1]
                    and (stop[0] == k or (stop[0] is None and (k, stage) in ran))
                ):
                    msg = (
                        f"stopped after iteration {k}, stage {stage} (--stop-after); run the same command "
                        "without --stop-after to continue"
                    )
                    self.log(f"[iterate] {msg}")
                    return Outcome("stopped", msg, ran, skipped)
        report = self.iter_dir(n) / "report.md"
        msg = f"{n} iteration(s) done in {self.root}; report: {report}"
        if not ran:
            msg = f"nothing to do: {n} iteration(s) already done in {self.root}; report: {report}"
        self.log(f"[iterate] {msg}")
        return Outcome("done", msg, ran, skipped, report)

    def _check_settings(self, k: int, stage: str) -> dict | None:
        """The state's entry of (k, stage); an `IterateError` when it ran with other settings."""
        entry = self.state.entry(k, stage)
        settings = self.settings(k, stage)
        if entry is not None and entry.get("settings") != settings:
            what = "finished" if entry.get("status") == "done" else "was started"
            raise IterateError(
                f"iteration {k}, stage {stage} {what} with other settings "
                f"({'; '.join(_diff(entry.get('settings') or {}, settings))}); run with the settings "
                f"it used, or add --force-stage {k}:{stage} to redo it and every stage after it "
                "(their outputs are removed)"
            )
        return entry

    def _forced(self) -> set[tuple[int, str]]:
        out = set()
        for text in self.config.force_stages:
            k, stage = _ref(text, "--force-stage")
            out.add((k or self.config.iterations, stage))
        return out

    def _invalidate(self, k: int, stage: str) -> None:
        """Forget (k, stage) and everything after it, and remove their outputs."""
        from ..ranking.store import DB_FILE

        targets = []
        for s in STAGES[STAGES.index(stage) :]:
            targets += self.stage_paths(k, s)
        recorded = {int(j) for j in self.state.data["iterations"]}
        on_disk = {int(p.name[5:]) for p in self.root.glob("iter_*") if p.name[5:].isdigit()}
        targets += [self.iter_dir(j) for j in sorted(recorded | on_disk) if j > k]
        for t in targets:
            if t.is_dir() and any(t.rglob(DB_FILE)):
                raise IterateError(
                    f"--force-stage {k}:{stage} would remove {t}, which holds people's rankings "
                    f"({DB_FILE}); move it out of the work folder first"
                )
        for t in targets:
            if t.is_dir():
                shutil.rmtree(t)
            elif t.exists():
                t.unlink()
        gone = self.state.drop_from(k, stage)
        self.log(
            f"[iterate {k}] {stage}: forced; redoing it"
            + (f" and {len(gone) - 1} later stage(s)" if len(gone) > 1 else "")
        )

    def _run_stage(self, k: int, stage: str, settings: dict, entry: dict | None) -> None:
        state = self.state
        spent = float((entry or {}).get("seconds", 0.0))
        entry = {
            "status": "running",
            "settings": settings,
            "started": (entry or {}).get("started", _now()),
            "sessions": int((entry or {}).get("sessions", 0)) + 1,
            "seconds": spent,
        }
        state.put(k, stage, entry)
        t0 = time.perf_counter()
        status = "running"
        try:
            outputs = getattr(self, f"stage_{stage}")(k)
            status = "done"
        except WaitingForPeople:
            status = "waiting"
            raise
        finally:
            dt = time.perf_counter() - t0
            entry.update(status=status, seconds=round(spent + dt, 2), last_session_s=round(dt, 2))
            if status == "done":
                entry.update(outputs=_plain(outputs), finished=_now())
            state.put(k, stage, entry)

    # ------------------------------------------------------------------ 1. gallery
    def stage_gallery(self, k: int) -> dict:
        c = self.config
        out: dict = {"galleries": {}, "records": {}, "models": None}
        for aspect in c.aspects:
            dst = self.gallery_dir(k, aspect)
            if k == 1:
                g = self._generate_gallery(aspect, dst)
            else:
                g = self._expand_gallery(k, aspect, dst)
            out["galleries"][aspect] = self.rel(dst)
            out["records"][aspect] = len(g.records)
            out["models"] = g.models
        return out

    def _generate_gallery(self, aspect: str, dst: Path):
        from ..gallery.format import GalleryError
        from ..gallery.generate import ModelSpec, generate_gallery, parse_models

        c = self.config
        prompts, cats, n_train = gallery_prompts(c, aspect)
        specs = [ModelSpec(m.name, _abs_spec(m.spec)) for m in parse_models(c.gallery_models)]
        self.log(
            f"  {aspect}: {len(specs)} models x {len(prompts)} prompts ({n_train} train, "
            f"{len(prompts) - n_train} held-out for the reward model) -> {dst}"
        )
        try:
            return generate_gallery(
                dst,
                aspect,
                specs,
                prompts,
                categories=cats,
                prompt_source={
                    "kind": "iterate",
                    "train_per_category": c.per_category,
                    "heldout_per_category": c.reward_heldout_per_category,
                    "heldout_from": "end of the held-out suites",
                },
                seed=c.seed,
                resolution=c.gallery_resolution,
                steps=c.gallery_steps,
                guidance=c.gallery_guidance,
                batch_size=c.gallery_batch_size,
                device=c.device,
                progress=c.progress,
            )
        except GalleryError as e:
            raise IterateError(str(e)) from None

    def _expand_gallery(self, k: int, aspect: str, dst: Path):
        from ..gallery.expand import expand_gallery
        from ..gallery.format import GalleryError, load_gallery

        c = self.config
        src = self.gallery_dir(k - 1, aspect)
        if not dst.exists():
            tmp = dst.parent / f".{aspect}.copy-tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, tmp)
            os.replace(tmp, dst)
        name, spec, _ = self.current_base(k)
        try:
            g = load_gallery(dst)
            if name not in g.models:
                self.log(f"  {aspect}: adding {name} ({self.rel(spec)}) to {len(g.records)} records -> {dst}")
                expand_gallery(
                    dst,
                    [f"{name}={spec}"],
                    mode="none" if c.rank == "auto" else "people",
                    batch_size=c.gallery_batch_size,
                    device=c.device,
                    progress=c.progress,
                )
                g = load_gallery(dst)
        except GalleryError as e:
            raise IterateError(str(e)) from None
        return g

    # ------------------------------------------------------------------ 2. rank
    def stage_rank(self, k: int) -> dict:
        if self.config.rank == "people":
            return self._rank_people(k)
        from ..gallery.format import GalleryError, load_gallery
        from ..ranking.auto import rank_gallery

        c = self.config
        out = {}
        for aspect in c.aspects:
            try:
                g = load_gallery(self.gallery_dir(k, aspect))
                s = rank_gallery(
                    g, JUDGE, c.tie_break, workers=c.workers, device=c.device, progress=c.progress
                )
            except GalleryError as e:
                raise IterateError(str(e)) from None
            for n in s["notes"]:
                self.log(f"  note: {n}")
            self.log(f"  {aspect}: ranked {s['records']} records ({s['tie_groups']} tie groups)")
            out[aspect] = {k2: s[k2] for k2 in ("records", "tie_groups", "tie_break", "notes")}
        return out

    def _rank_people(self, k: int) -> dict:
        from ..gallery.format import load_gallery
        from ..ranking.people import export_people, open_store, valid_jobs
        from ..ranking.store import DB_FILE

        out, waiting = {}, []
        for aspect in self.config.aspects:
            gdir = self.gallery_dir(k, aspect)
            g = load_gallery(gdir)
            summary = None
            if (gdir / DB_FILE).is_file():
                store = open_store(g)
                before = [(r.rank, g.ties(r.index)) for r in g.records]
                summary = export_people(g, store, save=False)
                if [(r.rank, g.ties(r.index)) for r in g.records] != before:
                    g.add_history("rank-export", exported=summary["exported"], by="iterate")
                    g.save()
                    self.log(f"  {aspect}: exported people's rankings ({summary['exported']} records)")
                pending = len(valid_jobs(g, store))
            else:
                pending = 0
            unranked = sum(r.rank is None for r in g.records)
            if unranked:
                waiting.append((aspect, gdir, unranked, len(g.records)))
            out[aspect] = {
                "records": len(g.records),
                "annotators": summary["annotators"] if summary else [],
                "agreement_mean_tau": (summary or {}).get("agreement", {}).get("mean_tau"),
                "insertion_jobs": pending,
            }
        if waiting:
            lines = [
                f"waiting for people's rankings of iteration {k} "
                f"({', '.join(f'{a}: {u} of {n} records unranked' for a, _, u, n in waiting)}).",
                "Rank them in the browser, one gallery at a time (any number of annotators):",
            ]
            lines += [f"  compalign rank serve {d}" for _, d, _, _ in waiting]
            lines.append(
                "then run this same `compalign iterate` command again: it exports the rankings (Borda count) "
                "and continues once every record is ranked."
            )
            raise WaitingForPeople("\n".join(lines))
        return out

    # ------------------------------------------------------------------ 3. pairs
    def stage_pairs(self, k: int) -> dict:
        from ..gallery.format import GalleryError
        from ..pairs.make import make_pairs

        out = {}
        for aspect in self.config.aspects:
            f = self.pairs_file(k, aspect)
            f.parent.mkdir(parents=True, exist_ok=True)
            try:
                decided = self.config.decided_pairs
                counts = make_pairs([self.gallery_dir(k, aspect)], f, "relative", decided)[aspect]
            except GalleryError as e:
                raise IterateError(str(e)) from None
            if counts["train"] == 0:
                raise IterateError(no_train_pairs_message(k, aspect, counts))
            self.log(
                f"  {aspect}: {counts['pairs']} pairs (train {counts['train']}, "
                f"held-out {counts['heldout']}); {counts['tied_skipped']} tied pairs skipped"
            )
            out[aspect] = {"file": self.rel(f), **counts}
        return out

    # ------------------------------------------------------------------ 4. rewards
    def reward_config(self, k: int, aspect: str):
        from ..rewards.composition.train import RewardTrainConfig

        c = self.config
        return RewardTrainConfig(
            pairs=str(self.pairs_file(k, aspect).resolve()),
            aspect=aspect,
            output_dir=str(self.reward_run(k, aspect).resolve()),
            backbone=c.reward_backbone,
            freeze_ratio=c.reward_freeze_ratio,
            epochs=c.reward_epochs,
            batch_size=c.reward_batch_size,
            learning_rate=c.reward_lr,
            head_learning_rate=c.reward_head_lr,
            seed=c.seed,
            device=c.device,
            num_threads=c.num_threads,
            progress=c.progress,
        )

    def stage_rewards(self, k: int) -> dict:
        from ..rewards.composition.data import PairsFileError
        from ..rewards.composition.model import RECORD_FILE
        from ..rewards.composition.train import _config_diff, train_reward_model

        out = {}
        for aspect in self.config.aspects:
            config = self.reward_config(k, aspect)
            final = config.run_dir / "final"
            rec_file = final / RECORD_FILE
            done = rec_file.is_file() and not _config_diff(
                json.loads(rec_file.read_text()).get("config", {}), config.to_dict()
            )
            if done:
                self.log(f"  {aspect}: trained earlier ({self.rel(final)})")
            else:
                self.log(f"  {aspect}: training on {self.rel(config.pairs)} -> {self.rel(config.run_dir)}")
                try:
                    got = train_reward_model(config, resume=True)
                except (PairsFileError, ValueError, KeyError, FileNotFoundError) as e:
                    raise IterateError(f"iteration {k}, reward model {aspect}: {e}") from None
                if got is None:
                    raise IterateInterrupted(f"reward training of {aspect} was stopped; run the same command")
            record = json.loads(rec_file.read_text())
            out[aspect] = self._reward_summary(k, aspect, final, record)
            acc = out[aspect]["heldout_accuracy"]
            self.log(
                f"  {aspect}: held-out pair accuracy "
                + (
                    f"{acc:.3f} ({out[aspect]['heldout_pairs']} pairs)"
                    if acc is not None
                    else "- (no held-out pairs)"
                )
            )
        return out

    def _reward_summary(self, k: int, aspect: str, final: Path, record: dict) -> dict:
        out = {
            "model": self.rel(final),
            "run": self.rel(final.parent),
            "curves": self.rel(final.parent / "curves.png"),
            "train_pairs": record.get("train_pairs"),
            "heldout_pairs": record.get("heldout_pairs", 0),
            "selection": record.get("selection"),
            "epochs_done": record.get("epochs_done"),
            "heldout_accuracy": None,
            "heldout_loss": None,
            "spearman_vs_evaluator": None,
        }
        if out["heldout_pairs"]:
            from ..rewards.composition.evaluate import evaluate_reward_on_pairs
            from ..rewards.composition.model import CompositionRewardModel

            model = CompositionRewardModel.from_pretrained(
                final, device=self.config.device or "cpu", frozen=True
            )
            rep = evaluate_reward_on_pairs(
                model,
                self.pairs_file(k, aspect),
                split="heldout",
                aspect=aspect,
                batch_size=self.config.eval_batch_size,
            )
            out.update(
                heldout_accuracy=rep["accuracy"],
                heldout_loss=rep["loss"],
                spearman_vs_evaluator=rep.get("spearman_vs_evaluator"),
                by_models=rep["by_models"],
            )
        return out

    # ------------------------------------------------------------------ 5. feedback
    def feedback_config(self, k: int):
        from ..feedback.config import FeedbackConfig

        c = self.config
        rewards = {}
        for aspect in c.aspects:
            final = self.abs(self.state.outputs(k, "rewards")[aspect]["model"])
            rewards[f"composition:{final}"] = c.weight(aspect)
        return FeedbackConfig(
            name=base_name(k),
            base=self.current_base(k)[1],
            output_dir=str((self.iter_dir(k) / "feedback").resolve()),
            rewards=rewards,
            aspects=list(c.aspects),
            max_steps=c.feedback_steps,
            batch_size=c.feedback_batch_size,
            learning_rate=c.feedback_lr,
            stop_range=list(c.feedback_stop_range),
            reg_type=c.reg_type,
            reg_weight=c.reg_weight,
            pool_dir=str(self.pool_dir().resolve()),
            pool_per_category=c.pool_per_category,
            seed=c.seed,
            checkpoint_every=c.feedback_checkpoint_every,
            num_threads=c.num_threads,
            device=c.device,
            progress=c.progress,
        )

    def stage_feedback(self, k: int) -> dict:
        from ..feedback.train import _config_diff, train_feedback

        config = self.feedback_config(k)
        base = self.base_dir(k)
        rec_file = base / "training.json"
        done = rec_file.is_file() and not _config_diff(
            {**json.loads(rec_file.read_text()).get("config", {}), "max_steps": config.max_steps},
            config.to_dict(),
        )
        if not done:
            weights = ", ".join(f"{a}={self.config.weight(a)}" for a in self.config.aspects)
            self.log(
                f"  {self.rel(config.base)} -> {self.rel(base)}: {config.max_steps} steps x "
                f"{config.batch_size} samples, rewards {weights}, "
                f"regulariser {config.reg_type} x {config.reg_weight}"
            )
            try:
                final = train_feedback(config, resume=True)
            except (ValueError, KeyError, FileNotFoundError) as e:
                raise IterateError(f"iteration {k}, feedback training: {e}") from None
            if final is None:
                raise IterateInterrupted("feedback training was stopped; run the same command to resume it")
            if base.exists():
                shutil.rmtree(base)
            os.replace(final, base)
        record = json.loads(rec_file.read_text())
        aspect_of = {
            f"composition:{self.abs(self.state.outputs(k, 'rewards')[a]['model'])}": a
            for a in self.config.aspects
        }
        first_last = {aspect_of.get(s, s): v for s, v in (record.get("reward_first_last") or {}).items()}
        for a, v in first_last.items():
            self.log(f"  reward {a}: {v['first']:.3f} (first steps) -> {v['last']:.3f} (last steps)")
        return {
            "base": self.rel(base),
            "run": self.rel(config.run_dir),
            "curves": self.rel(config.run_dir / "curves.png"),
            "log": self.rel(config.run_dir / "log.jsonl"),
            "reward_specs": {a: s for s, a in aspect_of.items()},
            "reward_first_last": first_last,
            "final_reg": record.get("final_reg"),
            "steps": record.get("steps"),
            "settings": record.get("settings"),
            "wall_time_s": record.get("wall_time_s"),
        }

    # ------------------------------------------------------------------ 6. evaluate
    def eval_models(self, k: int) -> list[tuple[str, str]]:
        """(name, spec) of every model evaluated in iteration k: the gallery's, the current base,
        the new base."""
        from ..gallery.format import load_gallery

        g = load_gallery(self.gallery_dir(k, self.config.aspects[0]), check_images=False)
        models = [(m["name"], m["spec"]) for m in g.meta["models"]]
        name, spec, _ = self.current_base(k)
        if all(_abs_spec(s) != spec for _, s in models):
            models.append((name if all(n != name for n, _ in models) else "start-base", spec))
        models.append((base_name(k), str(self.base_dir(k).resolve())))
        return models

    def _eval_key(self, spec: str, per_category: int) -> dict:
        c = self.config
        return _plain(
            {
                "spec": self.spec_label(spec),
                "weights": _fingerprint(spec),
                "categories": c.evaluation_categories(),
                "per_category": per_category,
                "seeds": c.eval_seeds,
                "split": "heldout",
            }
        )

    def _cached_eval(self, k: int, key: dict) -> tuple[dict, Path] | None:
        for j in range(k, 0, -1):
            d = self.iter_dir(j)
            for f in [*sorted((d / "eval").glob("*.json")), d / "reno" / "plain.json"]:
                if not f.is_file():
                    continue
                try:
                    data = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if data.get("key") == key:
                    return data["result"], f
        return None

    def _evaluate(
        self,
        name: str,
        spec: str,
        per_category: int,
        generate=None,
        gen=None,
        keep_images: Path | None = None,
    ) -> dict:
        """Evaluate one model; with `keep_images`, its images of the first evaluation seed are
        written there (`_save_eval_images`: the reward check scores them instead of rendering
        them again)."""
        import torch

        from ..generators import create_generator
        from ..generators.generate import to_uint8
        from ..world.quality import evaluate_generator

        c = self.config
        gen = gen or create_generator(spec, device=c.device)
        first, kept = c.eval_seeds[0], []
        hook = generate
        if keep_images is not None:

            def hook(prompts, seeds, inner=generate):
                if inner is not None:
                    images = inner(prompts, seeds)
                else:
                    with torch.no_grad():
                        images = gen.generate(prompts, seeds=seeds)
                keep = [i for i, s in enumerate(seeds) if s == first]
                if keep:
                    kept.append(to_uint8(images[keep]))
                return images

        res = evaluate_generator(
            gen,
            c.evaluation_categories(),
            per_category,
            c.eval_seeds,
            batch_size=c.eval_batch_size,
            workers=c.workers,
            progress=c.progress,
            generate=hook,
        )
        res["model"] = name
        res["spec"] = self.spec_label(spec)
        if keep_images is not None:
            _save_eval_images(keep_images, kept, [r for r in res["records"] if r["seed"] == first])
        return res

    def stage_evaluate(self, k: int) -> dict:
        from ..io import atomic_write_json

        c = self.config
        out_dir = self.iter_dir(k) / "eval"
        out: dict = {"models": {}, "order": []}
        files: dict[str, Path] = {}  # absolute spec -> evaluation file
        for name, spec in self.eval_models(k):
            key = self._eval_key(spec, c.eval_per_category)
            f = out_dir / f"{name}.json"
            files[_abs_spec(spec)] = f
            hit = self._cached_eval(k, key)
            if hit is not None:
                res, src = hit
                if src != f:
                    atomic_write_json(
                        f, {"key": key, "result": {**res, "model": name}, "copied_from": self.rel(src)}
                    )
                    if eval_images_path(src).is_file():
                        with atomic_path(eval_images_path(f)) as tmp:
                            shutil.copyfile(eval_images_path(src), tmp)
                self.log(f"  {name}: {100 * res['overall']:.1f}% (computed earlier: {self.rel(src)})")
            else:
                n_img = len(key["categories"]) * c.eval_per_category * len(c.eval_seeds)
                self.log(f"  {name}: generating and judging {n_img} images")
                res = self._evaluate(name, spec, c.eval_per_category, keep_images=eval_images_path(f))
                atomic_write_json(f, {"key": key, "result": res})
                self.log(f"  {name}: {100 * res['overall']:.1f}% of held-out images pass")
            out["order"].append(name)
            out["models"][name] = {
                "file": self.rel(f),
                "spec": key["spec"],
                "overall": res["overall"],
                "aspects": res["aspects"],
                "categories": {cat: v["accuracy"] for cat, v in res["categories"].items()},
            }
        out["reward_check"] = self._reward_check(k, files)
        return out

    def _reward_check(self, k: int, files: dict[str, Path] | None = None) -> dict:
        """Do iteration k's reward models see what feedback training changed?

        The previous and the new base's images of the held-out evaluation prompts of each aspect
        (the first evaluation seed: the evaluation's own images, read from its
        ``eval/<model>.images.npz`` when `files` names the evaluation file of the model's spec,
        rendered again otherwise) each get the aspect reward model's score and the exact
        evaluator's verdict (from the evaluation's records). Per aspect: mean reward and accuracy
        of both bases, and, over the (prompt, seed) pairs whose verdicts differ, how often the
        reward prefers the base the evaluator prefers (its pair accuracy on exactly the changes
        feedback training made)."""
        import torch

        from ..generators import create_generator
        from ..rewards.registry import create_reward
        from ..world.quality import evaluate_generator
        from ..world.suites import list_categories

        c = self.config
        seed, evaluated = c.eval_seeds[0], set(c.evaluation_categories())
        prev_name, prev_spec, _ = self.current_base(k)
        models = {prev_name: prev_spec, base_name(k): str(self.base_dir(k).resolve())}
        files = files or {}
        records = {}  # name -> the evaluation's first-seed records, when it stored its images
        for n, spec in models.items():
            f = files.get(_abs_spec(spec))
            if f is not None and f.is_file() and eval_images_path(f).is_file():
                recs = json.loads(f.read_text())["result"]["records"]
                records[n] = (eval_images_path(f), [r for r in recs if r["seed"] == seed])
        gens: dict = {}
        out: dict = {"seed": seed, "models": list(models), "aspects": {}, "rendered": []}
        # the evaluation files whose stored images were scored (the report's sample grid shows them)
        out["files"] = {n: self.rel(files[_abs_spec(models[n])]) for n in records}
        for aspect in c.aspects:
            cats = [x for x in list_categories(aspect) if x in evaluated]
            if not cats:
                continue
            model = self.abs(self.state.outputs(k, "rewards")[aspect]["model"])
            reward = create_reward(f"composition:{model}")
            reward.eval()
            dev = next(reward.parameters()).device

            def score(images, prompts, reward=reward, dev=dev) -> list[float]:
                with torch.no_grad():
                    return reward(images.float().to(dev), prompts).float().tolist()

            per: dict = {}  # name -> (reward scores, verdicts (passed, score), prompts)
            for name, spec in models.items():
                stored, recs = None, []
                if name in records:
                    path, recs = records[name]
                    # in rendering order: category by category (the aspect's order), then prompts
                    recs = sorted(
                        (r for r in recs if r["category"] in cats), key=lambda r: cats.index(r["category"])
                    )
                    stored = load_eval_images(
                        path, [r["category"] for r in recs], [r["prompt"] for r in recs]
                    )
                if stored is not None:
                    prompts = [r["prompt"] for r in recs]
                    got = [
                        x
                        for i in range(0, len(recs), 256)
                        for x in score(stored[i : i + 256], prompts[i : i + 256])
                    ]
                else:  # no stored images (a work folder from before they were kept): render again
                    if name not in out["rendered"]:
                        out["rendered"].append(name)
                    if name not in gens:
                        gens[name] = create_generator(spec, device=c.device)
                    got = []

                    def generate(prompts, seeds, gen=gens[name], got=got, score=score):
                        with torch.no_grad():
                            images = gen.generate(prompts, seeds=seeds).float()
                        got += score(images, prompts)
                        return images

                    recs = evaluate_generator(
                        gens[name], cats, c.eval_per_category, [seed], batch_size=c.eval_batch_size,
                        workers=c.workers, progress=False, generate=generate,
                    )["records"]  # fmt: skip
                per[name] = (got, [(r["passed"], r["score"]) for r in recs], [r["prompt"] for r in recs])
            (r0, v0, p0), (r1, v1, p1) = per[prev_name], per[base_name(k)]
            if p0 != p1:
                raise IterateError(
                    f"reward check: the two bases' {aspect} images are not of the same prompts"
                )
            decided = [(a > b, x > y) for a, b, x, y in zip(v1, v0, r1, r0, strict=True) if a != b]
            out["aspects"][aspect] = {
                "images": len(v0),
                "reward": {n: sum(r) / len(r) for n, (r, _, _) in per.items()},
                "accuracy": {n: sum(ok for ok, _ in v) / len(v) for n, (_, v, _) in per.items()},
                "decided_pairs": len(decided),
                "agreement": (sum(e == w for e, w in decided) / len(decided)) if decided else None,
            }
        return out

    # ------------------------------------------------------------------ 7. reno
    def stage_reno(self, k: int) -> dict:
        c = self.config
        if not c.reno:
            self.log("  off (--no-reno)")
            return {"enabled": False}
        import torch

        from ..gallery.generate import default_model_name
        from ..generators import create_generator
        from ..io import atomic_write_json
        from ..noise_optimization.reno import ReNOConfig, WeightedReward, optimize_noise
        from ..rewards.registry import create_reward

        base = self.base_dir(k)
        base_gen = create_generator(str(base), device=c.device)
        if base_gen.differentiable:
            name, spec, gen = base_name(k), str(base.resolve()), base_gen
            note = f"ReNO runs on the new base {name} itself (a one/two-step generator)."
        else:
            steps = base_gen.settings().get("num_inference_steps")
            name, spec = default_model_name(c.reno_model), _abs_spec(c.reno_model)
            gen = create_generator(spec, device=c.device)
            if not gen.differentiable:
                raise IterateError(f"--reno-model {c.reno_model} is not a one/two-step generator")
            note = (
                f"The new base {base_name(k)} is multi-step ({steps} steps), and ReNO needs a one/two-step "
                f"generator: ReNO runs on {name} ({c.reno_model}), with iteration {k}'s aspect reward "
                f"models as rewards; the new base itself is reported without ReNO."
            )
        del base_gen
        self.log(f"  {note}")
        per_cat = c.reno_prompts_per_category()
        out_dir = self.iter_dir(k) / "reno"
        rewards_out = self.state.outputs(k, "rewards")
        reward_models = {a: str(self.abs(rewards_out[a]["model"])) for a in c.aspects}
        key = self._eval_key(spec, per_cat)
        out: dict = {"enabled": True, "generator": name, "spec": key["spec"], "note": note}

        # without ReNO (the plain generator; shared with the evaluate stage when it is the same)
        f_plain = out_dir / "plain.json"
        hit = self._cached_eval(k, key)
        if f_plain.is_file() and json.loads(f_plain.read_text()).get("key") == key:
            plain = json.loads(f_plain.read_text())["result"]
        elif hit is not None:
            plain = hit[0]
            atomic_write_json(f_plain, {"key": key, "result": plain, "copied_from": self.rel(hit[1])})
        else:
            self.log(f"  {name} without ReNO")
            plain = self._evaluate(name, spec, per_cat, gen=gen)
            atomic_write_json(f_plain, {"key": key, "result": plain})
        # with ReNO
        reno_key = {
            **key,
            "reno": {
                "iterations": c.reno_iterations,
                "lr": c.reno_lr,
                "rewards": {
                    a: {"model": rewards_out[a]["model"], "weight": c.reno_weight(a)} for a in c.aspects
                },
            },
        }
        f_reno = out_dir / "reno.json"
        if f_reno.is_file() and json.loads(f_reno.read_text()).get("key") == _plain(reno_key):
            with_reno = json.loads(f_reno.read_text())["result"]
        else:
            dev = gen.device
            weighted = [
                WeightedReward(
                    name=f"composition-{a}",
                    reward=create_reward(f"composition:{reward_models[a]}", device=dev),
                    weight=c.reno_weight(a),
                )  # fmt: skip
                for a in c.aspects
                if c.reno_weight(a) != 0
            ]
            rcfg = ReNOConfig(iterations=c.reno_iterations, lr=c.reno_lr, progress=False)
            losses = {"initial": [], "best": []}

            def generate(prompts, seeds):
                torch.manual_seed(0)
                res = optimize_noise(gen, prompts, weighted, seeds, rcfg)
                losses["initial"] += res.initial_loss
                losses["best"] += res.best_loss
                return res.best_images

            n_img = len(c.evaluation_categories()) * per_cat * len(c.eval_seeds)
            self.log(f"  {name} with ReNO: {n_img} images x {c.reno_iterations} iterations")
            with_reno = self._evaluate(f"{name}+ReNO", spec, per_cat, generate=generate, gen=gen)
            with_reno["reward_loss"] = {
                "initial_mean": sum(losses["initial"]) / max(1, len(losses["initial"])),
                "best_mean": sum(losses["best"]) / max(1, len(losses["best"])),
            }
            atomic_write_json(f_reno, {"key": _plain(reno_key), "result": with_reno})
        self.log(
            f"  {name}: {100 * plain['overall']:.1f}% without ReNO -> "
            f"{100 * with_reno['overall']:.1f}% with ReNO"
        )
        for label, res, f in (("plain", plain, f_plain), ("reno", with_reno, f_reno)):
            out[label] = {
                "file": self.rel(f),
                "overall": res["overall"],
                "aspects": res["aspects"],
                "categories": {cat: v["accuracy"] for cat, v in res["categories"].items()},
            }
        out["reward_loss"] = with_reno.get("reward_loss")
        return out

    # ------------------------------------------------------------------ 8. report
    def stage_report(self, k: int) -> dict:
        from .report import write_report

        out = write_report(self, k)
        self.log(f"  {self.rel(out['report'])} (+ {len(out['plots'])} plots)")
        return out


def run_iterate(config: IterateConfig, log: Callable[[str], None] | None = None) -> Outcome:
    """Run (or continue) the loop described by `config` (see the module doc)."""
    return IterateRun(config, log).run()

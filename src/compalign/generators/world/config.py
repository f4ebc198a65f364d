"""Training configuration of world models, and the named presets that reproduce shipped models.

Presets are data: one JSON file per preset in ``presets/`` (``{"description": ..., "config": {...}}``
where ``config`` holds `WorldTrainConfig` fields, ``arch`` a dict of `WorldArch` fields).
`create_preset(name, **overrides)` returns the config; overrides may name architecture fields as
``arch.<field>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from compalign.cache import scene_pool_dir
from compalign.world.captions import list_caption_presets
from compalign.world.suites import CATEGORIES

from ..._config import DictConfig
from .models import WorldArch

MODES = ("diffusion", "distill")
LOSSES = ("mse", "l1", "huber")


@dataclass
class WorldTrainConfig(DictConfig):
    """Everything that defines a world-model training run (data, architecture, optimisation)."""

    name: str = "world-custom"
    """Model name; the shipped weights of a preset are stored under this name."""
    output_dir: str | None = None
    """Run folder (checkpoints, log, final pipeline). Default: ``runs/<name>``."""
    mode: str = "diffusion"
    """``diffusion``: train a text-to-image diffusion model from scratch on rendered scenes.
    ``distill``: distil a trained teacher's multi-step sampler into a one/two-step generator."""
    arch: WorldArch = field(default_factory=WorldArch)
    """Architecture and default sampler (ignored by ``distill``, which copies the teacher's)."""

    init_from: str | None = None
    """``diffusion``: start from the weights of a saved pipeline (a folder, a run folder or a
    shipped name) instead of random ones, e.g. to continue a run on other hardware. Its
    architecture must match `arch`; its record is kept in this run's record as ``init_from``."""

    # ----------------------------------------------------------------------------- data
    categories: list[str] | None = None
    """Scene categories to sample training scenes from (None: all). Held-out scenes never appear."""
    seed: int = 0
    """Seed of the initial weights, the batch draws, the noise and the timesteps."""
    data_source: str = "pool"
    """``pool``: sample from a pre-rendered set of scenes (built once, shared by runs);
    ``stream``: render every batch afresh (unlimited variety; costs more CPU than the model).
    ``distill`` needs prompts only and always streams them."""
    pool_per_category: int = 4096
    """``pool``: rendered scenes per category."""
    pool_shard_size: int = 256
    """``pool``: scenes per pool file (the unit of parallel, resumable building)."""
    pool_dir: str | None = None
    """``pool``: folder of scene pools (default: the per-user cache, `compalign.cache.scene_pool_dir`:
    built once per machine, shared by every run)."""
    data_seed: int = 0
    """``pool``: seed of the pool's scenes (the same for every preset, so they share one pool)."""
    captions: str = "exact"
    """``diffusion``: the caption preset of the training prompts (`compalign.world.captions`).
    ``exact``: every image with its scene's exact prompt (as the models before it were trained).
    ``web``: web-like captions (relations, attributes and counts often left out or wrong, as in
    alt-text), the cause of real models' composition failures; ``exact-attribute`` /
    ``exact-spatial`` / ``exact-nonspatial``: exact for one aspect, web-like for the others.
    Drawn per batch from `(seed, step)`; images and the scene pool are the same for every preset."""

    # ----------------------------------------------------------------------------- optimisation
    max_steps: int = 4000
    """Optimizer steps of the run; the learning-rate schedule spans them."""
    batch_size: int = 64
    """Images per optimizer step."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 200
    """Linear warm-up steps from 0 to the peak learning rate."""
    lr_schedule: str = "cosine"
    """After warm-up: ``cosine`` decay to ``min_lr_ratio`` * peak, or ``constant``."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine schedule)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping (0 disables)."""
    cond_dropout: float = 0.1
    """Probability of replacing a prompt by the empty prompt (classifier-free guidance)."""
    snr_gamma: float | None = None
    """Min-SNR loss weighting gamma (None: plain loss). With v-prediction, min-SNR weights the
    high-noise timesteps (where the prompt decides the layout) ~snr times less; in short probes
    the model then ignored the prompt for longer, so the presets leave it off."""
    ema_decay: float | None = 0.999
    """Decay of the exponential moving average of the weights that is exported (None: no EMA)."""

    # ----------------------------------------------------------------------------- distillation
    teacher: str | None = None
    """``distill``: the teacher, a shipped model name, a pipeline folder or a run folder."""
    teacher_steps: int | None = None
    """``distill``: teacher sampling steps (None: the teacher's default)."""
    teacher_guidance: float | None = None
    """``distill``: teacher guidance scale, baked into the student (None: the teacher's default)."""
    num_pairs: int = 8192
    """``distill``: (noise, prompt, teacher image) pairs generated before the student trains."""
    pair_shard_size: int = 256
    """``distill``: pairs per cached shard (a shard is the unit of resume while generating)."""
    student_steps: int = 1
    """``distill``: sampling steps of the student (1 or 2), trained end to end through them."""
    distill_loss: str = "mse"
    """``distill``: ``mse``, ``l1`` or ``huber`` (pseudo-Huber) between student and teacher images."""
    pair_prompts: str = "sample"
    """``distill``: where the pairs' prompts come from. ``sample``: drawn by the scene grammar with
    their layouts checked (slow for contact relations, ~75 ms a prompt on one core); ``pool``: the
    prompts of the training scene pool of `categories` (built first if missing; fast, so a GPU
    is not left waiting on the layout sampler)."""

    # ----------------------------------------------------------------------------- infrastructure
    checkpoint_every: int = 250
    """Save a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest deleted first)."""
    log_every: int = 25
    """Append a line to ``log.jsonl`` every this many steps."""
    num_workers: int = 1
    """Rendering processes: ``stream`` renders batches in them while training (0: inline);
    ``pool`` builds its missing files with them before training."""
    num_threads: int | None = None
    """torch CPU threads (None: on a CPU, half the cores the data workers leave: 1 on 2 cores)."""
    mixed_precision: str = "no"
    """``no``, ``fp16`` or ``bf16`` (passed to accelerate)."""
    device: str | None = None
    """None: chosen by accelerate (a GPU when there is one); ``cpu`` forces the CPU."""
    progress: bool = True
    """Show a tqdm progress bar."""
    time_limit_s: float | None = None
    """Stop training after this many seconds of this call's training loop and finish the run as
    if `max_steps` were the step reached (the record says so). With ``lr_schedule="constant"``
    that run is exactly the run with `max_steps` set to that step; used to fit a fixed time budget."""

    def __post_init__(self) -> None:
        if isinstance(self.arch, dict):
            self.arch = WorldArch.from_dict(self.arch)
        self.adam_betas = tuple(self.adam_betas)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.distill_loss not in LOSSES:
            raise ValueError(f"distill_loss must be one of {LOSSES}, got {self.distill_loss!r}")
        if self.categories is not None:
            self.categories = list(self.categories)
            bad = [c for c in self.categories if c not in CATEGORIES]
            if bad:
                raise ValueError(f"unknown categories {bad}; expected some of {CATEGORIES}")
        if self.mode == "distill" and not self.teacher:
            raise ValueError("mode 'distill' needs a teacher")
        if not 1 <= self.student_steps <= 2:
            raise ValueError("student_steps must be 1 or 2")
        if self.captions not in list_caption_presets():
            raise ValueError(
                f"captions must be one of {', '.join(list_caption_presets())}, got {self.captions!r}"
            )
        if self.data_source not in ("pool", "stream"):
            raise ValueError(f"data_source must be pool or stream, got {self.data_source!r}")
        if self.pair_prompts not in ("sample", "pool"):
            raise ValueError(f"pair_prompts must be sample or pool, got {self.pair_prompts!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @property
    def pool_root(self) -> Path:
        return Path(self.pool_dir) if self.pool_dir else scene_pool_dir()


# Fields that only change how a run executes, not what it computes: they may differ on resume.
RUNTIME_FIELDS = frozenset(
    {
        "output_dir",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "num_workers",
        "pool_dir",
        "num_threads",
        "device",
        "progress",
        "time_limit_s",
    }
)


@cache
def _preset_files() -> dict[str, str]:
    root = resources.files("compalign.generators.world") / "presets"
    return {p.name[: -len(".json")]: p.read_text() for p in root.iterdir() if p.name.endswith(".json")}


def list_presets() -> list[str]:
    return sorted(_preset_files())


def preset_description(name: str) -> str:
    return _load_preset(name).get("description", "")


def _load_preset(name: str) -> dict:
    files = _preset_files()
    if name not in files:
        raise KeyError(f"unknown preset {name!r}; expected one of {', '.join(sorted(files))}")
    return json.loads(files[name])


def create_preset(preset: str, /, **overrides) -> WorldTrainConfig:
    """The `WorldTrainConfig` of a named preset; `overrides` replace fields (``arch.x`` allowed,
    ``name`` too: the model's name, which defaults to the preset's)."""
    d = _load_preset(preset)["config"]
    d = {**d, "arch": dict(d.get("arch", {})), "name": d.get("name", preset)}
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if key.startswith("arch."):
            d["arch"][key[5:]] = value
        else:
            d[key] = value
    return WorldTrainConfig.from_dict(d)


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value (bare strings allowed): ``arch.sampler=ddim``, ``max_steps=10``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value

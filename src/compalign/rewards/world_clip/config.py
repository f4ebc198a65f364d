"""The configurations of the world CLIP: its architecture (`WorldCLIPArch`) and a training run
(`WorldCLIPTrainConfig`).

Kept apart from ``model.py`` and ``train.py`` (which load torch and transformers) so that the
command line reads the fields, their defaults and their docs without those imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..._config import DictConfig


@dataclass
class WorldCLIPArch(DictConfig):
    """Architecture of a world CLIP (the defaults are the shipped ``world-clip``: ~1.3 M parameters,
    ~2.6 MB as fp16)."""

    _fields_name = "world-clip arch fields"

    vision_hidden: int = 128
    """Width of the vision transformer."""
    vision_layers: int = 4
    """Vision transformer layers."""
    vision_heads: int = 4
    """Vision attention heads."""
    vision_mlp: int = 512
    """Vision MLP width."""
    patch_size: int = 4
    """Pixels per patch side (32 px images: 8 x 8 patches)."""
    text_hidden: int = 128
    """Width of the text transformer."""
    text_layers: int = 3
    """Text transformer layers."""
    text_heads: int = 4
    """Text attention heads."""
    text_mlp: int = 384
    """Text MLP width."""
    projection_dim: int = 96
    """Dimension of the shared image-text embedding."""
    logit_scale_init: float = 2.6592
    """Initial log of the (learned) contrastive temperature's inverse (CLIP: log(1 / 0.07))."""


@dataclass
class WorldCLIPTrainConfig(DictConfig):
    """Everything that defines a world-CLIP training run; the defaults are the shipped preset."""

    output_dir: str = "runs/world-clip"
    """Run folder (config, log, checkpoints, final model)."""
    arch: WorldCLIPArch = field(default_factory=WorldCLIPArch)
    """Model architecture (`WorldCLIPArch` or a dict of its fields)."""
    seed: int = 0
    """Seed of the initial weights, the batch draws, the hard negatives and the augmentation."""

    # ----------------------------------------------------------------------------- data
    pool_dir: str | None = None
    """Folder of scene pools (shared with the generators; missing shards are built first; None: the
    per-user cache, `compalign.cache.scene_pool_dir`)."""
    categories: list[str] | None = None
    """Scene categories of the pool (None: all). Batches draw a category, then a scene of it."""
    pool_per_category: int = 4096
    """Rendered training scenes per category in the pool."""
    pool_shard_size: int = 256
    """Scenes per pool file (the unit of parallel, resumable pool building)."""
    data_seed: int = 0
    """Seed of the pool's scenes (the generators' default: they share one pool)."""

    # ----------------------------------------------------------------------------- loss
    num_hard_negatives: int = 3
    """Hard-negative prompts per image (grammar edits of its prompt; 0 disables the term)."""
    hard_negative_weight: float = 1.0
    """Weight of the image-vs-[prompt, hard negatives] cross-entropy added to the InfoNCE loss."""

    # ----------------------------------------------------------------------------- augmentation
    aug_shift_p: float = 0.5
    """Probability of shifting an image by up to `aug_shift_px` pixels (edges replicated)."""
    aug_shift_px: int = 1
    """Largest shift in pixels along each axis."""
    aug_blur_p: float = 0.5
    """Probability of a Gaussian blur with sigma uniform in [0, `aug_blur_sigma`] pixels."""
    aug_blur_sigma: float = 1.0
    """Largest blur sigma in pixels."""
    aug_jitter_p: float = 0.5
    """Probability of colour jitter: brightness gain and per-channel gains / offsets."""
    aug_jitter: float = 0.1
    """Colour-jitter strength: brightness gain in 1 +- this, channel gains in 1 +- half, offsets +- a
    quarter."""
    aug_noise_p: float = 0.5
    """Probability of additive Gaussian noise with sigma uniform in [0, `aug_noise_sigma`]."""
    aug_noise_sigma: float = 0.08
    """Largest noise sigma (image values in [0, 1])."""

    # ----------------------------------------------------------------------------- optimisation
    max_steps: int = 20000
    """Optimizer steps; the learning-rate schedule spans them (a time limit may stop earlier)."""
    batch_size: int = 256
    """Image-prompt pairs per step (the InfoNCE negatives are the rest of the batch)."""
    learning_rate: float = 5e-4
    """Peak AdamW learning rate."""
    adam_betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    weight_decay: float = 0.05
    """AdamW weight decay (matrices only; biases, norms, embeddings of size 1 and the scale are exempt)."""
    warmup_steps: int = 500
    """Linear warm-up steps from 0 to the peak learning rate."""
    min_lr_ratio: float = 0.02
    """Final learning rate of the cosine decay, as a fraction of the peak."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping (0 disables)."""
    ema_decay: float | None = 0.999
    """Decay of the exponential moving average of the weights that is saved (None: no EMA)."""
    time_limit_s: float | None = None
    """Stop when the training time (the loop's wall time over all sessions, pool building and the
    final evaluation excluded) exceeds this, and finish as if `max_steps` were the step reached
    (final model and record written; the record says the time limit stopped it). With a limit the
    cosine schedule runs on max(step progress, time progress), so the learning rate has decayed
    when the time is up."""

    # ----------------------------------------------------------------------------- infrastructure
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest deleted first)."""
    log_every: int = 50
    """Append a line to ``log.jsonl`` every this many steps."""
    eval_per_category: int = 50
    """Held-out prompts per category evaluated at the end (pairwise and top-1 accuracy against
    hard negatives, recorded in training.json; 0 skips)."""
    num_workers: int | None = None
    """Processes that build missing pool shards (None: the CPU count)."""
    num_threads: int | None = None
    """torch CPU threads (None: on a CPU, half the cores; on a GPU, torch's default)."""
    prefetch: int = 4
    """Batches prepared ahead in a background thread (0: prepared inline)."""
    mixed_precision: str = "no"
    """``no``, ``fp16`` or ``bf16`` (passed to accelerate)."""
    device: str | None = None
    """None: chosen by accelerate (a GPU when there is one); ``cpu`` forces the CPU."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        from compalign.world.suites import CATEGORIES  # lazy: loads scipy (compalign.world)

        if isinstance(self.arch, dict):
            self.arch = WorldCLIPArch.from_dict(self.arch)
        self.adam_betas = tuple(self.adam_betas)
        if self.categories is not None:
            self.categories = list(self.categories)
            bad = [c for c in self.categories if c not in CATEGORIES]
            if bad:
                raise ValueError(f"unknown categories {bad}; expected some of {CATEGORIES}")
        for name in ("max_steps", "batch_size", "checkpoint_every", "log_every", "pool_per_category"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives must be >= 0, got {self.num_hard_negatives}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)


# Fields that only change how a run executes, not what it computes: they may differ on resume.
RUNTIME_FIELDS = frozenset(
    {
        "output_dir",
        "pool_dir",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "eval_per_category",
        "num_workers",
        "num_threads",
        "prefetch",
        "device",
        "progress",
        "time_limit_s",
    }
)

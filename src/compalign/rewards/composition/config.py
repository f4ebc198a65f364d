"""The configuration of a composition reward-model training run (`RewardTrainConfig`).

Kept apart from ``train.py`` (which loads the backbones, transformers and diffusers) so that the
command line reads the fields, their defaults and their docs without those imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..._config import DictConfig


@dataclass
class RewardTrainConfig(DictConfig):
    """Everything that defines a reward-model training run (defaults: IterComp's settings where
    they apply: fix_rate 0.7, lr 1e-5 with a cosine schedule, 5 epochs, batch 64)."""

    pairs: str = ""
    """Pairs file (JSONL, see `data.py`); image paths are relative to its folder."""
    aspect: str = "attribute_binding"
    """Aspect trained: attribute_binding, spatial_relationship or non_spatial_relationship (the
    file's pairs of other aspects are ignored)."""
    output_dir: str | None = None
    """Run folder (None: ``runs/reward-<aspect>``)."""
    backbone: str = "world-clip"
    """Backbone spec (``world-clip``, ``world-clip:FOLDER``, ``clip:PATH_OR_ID``, ``blip:PATH``), or
    a description when the trainer is given a module."""
    freeze_ratio: float = 0.7
    """Fraction of each backbone tower frozen from the bottom (IterComp's fix_rate 0.7; 1 trains
    the head only)."""
    head_hidden: int = 256
    """Hidden width of the fusion head (dual-encoder backbones; BLIP uses ImageReward's MLP)."""
    head_image_block: bool = True
    """False: the fusion head reads the image only through its product with the prompt (no
    prompt-independent image term)."""
    image_size: int | None = None
    """Images are loaded (PIL, shorter side + center crop) at this size; None: the backbone's input
    size (32 px for world-clip), so the model's own preprocessing is nearly the identity."""
    seed: int = 0
    """Seed of the head's initial weights, the shuffles, dropout and augmentation."""

    # ----------------------------------------------------------------------------- loss
    margin: float = 0.0
    """Bradley-Terry margin: loss ``-log sigmoid(s_better - s_worse - margin)`` (raw scores)."""
    contrastive_weight: float = 0.0
    """Weight of the world CLIP's own contrastive objective, applied to the reward's raw score and
    added to the Bradley-Terry loss every step (0 disables; world-clip backbones only). A batch of
    clean training renders from the scene pool (augmented as the world CLIP's training was) is
    scored against every prompt of the batch and `contrastive_negatives` grammar-edited prompts per
    image: cross-entropy of each prompt over the images (the direction noise optimisation moves:
    prompt fixed, image varied) and of each image over [its prompt, its hard negatives, the other
    prompts], scenes that mean the same masked. It keeps "what a prompt looks like" in the score
    while the pairs teach the ranking."""
    contrastive_batch_size: int = 64
    """Clean renders per step (per process) in the contrastive term."""
    contrastive_negatives: int = 3
    """Hard-negative prompts per render (grammar edits that make the prompt false)."""
    contrastive_categories: list[str] | None = None
    """Scene categories the renders are drawn from (None: the aspect's categories)."""
    contrastive_pool_per_category: int = 1024
    """Training scenes per category in the pool (built once, shared with the generators' pools)."""
    pool_dir: str | None = None
    """Folder of scene pools (missing shards are rendered first; None: the per-user cache,
    `compalign.cache.scene_pool_dir`)."""

    # ----------------------------------------------------------------------------- optimisation
    epochs: int = 5
    """Passes over the training pairs (each epoch a fresh shuffle; the last partial batch dropped)."""
    batch_size: int = 64
    """Pairs per optimizer step, over all processes."""
    grad_accum_steps: int = 1
    """Micro-batches each process splits its share of a batch into (memory, not maths)."""
    learning_rate: float = 1e-5
    """Peak AdamW learning rate of the backbone's trainable layers (IterComp: 1e-5)."""
    head_learning_rate: float | None = None
    """Peak learning rate of the head (None: `learning_rate` for ImageReward's pretrained head, as
    IterComp; 1e-3 for a freshly initialised fusion head)."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_ratio: float = 0.05
    """Linear warm-up over this fraction of the steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine decay, as a fraction of the peak."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping (0 disables)."""

    # ----------------------------------------------------------------------------- augmentation
    augment: bool = False
    """Light augmentation of the training images (shift, blur, colour jitter, noise; the world
    CLIP's `augment` with the strengths below); evaluation images are never augmented."""
    aug_shift_p: float = 0.5
    """Probability of a shift by up to `aug_shift_px` pixels (edges replicated)."""
    aug_shift_px: int = 1
    """Largest shift in pixels."""
    aug_blur_p: float = 0.3
    """Probability of a Gaussian blur with sigma uniform in [0, `aug_blur_sigma`] px."""
    aug_blur_sigma: float = 0.6
    """Largest blur sigma in pixels."""
    aug_jitter_p: float = 0.5
    """Probability of colour jitter (brightness and per-channel gains / offsets)."""
    aug_jitter: float = 0.05
    """Colour-jitter strength."""
    aug_noise_p: float = 0.3
    """Probability of Gaussian noise with sigma uniform in [0, `aug_noise_sigma`]."""
    aug_noise_sigma: float = 0.02
    """Largest noise sigma (image values in [0, 1])."""

    # ----------------------------------------------------------------------------- infrastructure
    eval_batch_size: int = 128
    """Images scored per forward pass in evaluations and normalisation."""
    time_limit_s: float | None = None
    """Stop when the run's wall time (training and evaluations, over all sessions) exceeds this;
    the held-out accuracy is measured at the step reached and the run finishes normally. With a
    limit the cosine schedule follows max(step progress, time progress)."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many steps (and after every epoch and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest deleted first)."""
    log_every: int = 10
    """Append a training line to ``log.jsonl`` every this many steps."""
    mixed_precision: str = "no"
    """``no``, ``fp16`` or ``bf16`` (accelerate's autocast; fp16 needs a GPU)."""
    gradient_checkpointing: bool = False
    """Recompute backbone activations in the backward pass (less memory, ~30% slower)."""
    device: str | None = None
    """None: chosen by accelerate (a GPU when there is one); ``cpu`` forces the CPU."""
    num_threads: int | None = None
    """torch CPU threads (None: on a CPU half the cores per process; on a GPU torch's default)."""
    progress: bool = True
    """Show a tqdm progress bar (main process)."""

    def __post_init__(self) -> None:
        from compalign.world.suites import ASPECTS  # lazy: loads scipy (compalign.world)

        self.adam_betas = tuple(self.adam_betas)
        if self.aspect not in ASPECTS:
            raise ValueError(f"unknown aspect {self.aspect!r}; expected one of {', '.join(ASPECTS)}")
        for name, value in self.__dict__.items():  # NaN / inf pass every comparison below
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if not all(isinstance(b, (int, float)) and math.isfinite(b) for b in self.adam_betas):
            raise ValueError(f"adam_betas must be finite numbers, got {self.adam_betas}")
        if isinstance(self.backbone, str):
            from .backbones import list_backbones  # lazy: loads diffusers, transformers

            name = self.backbone.partition(":")[0]
            if name not in list_backbones():
                raise ValueError(
                    f"unknown backbone {self.backbone!r}; expected NAME or NAME:SOURCE with NAME one of "
                    f"{', '.join(list_backbones())} (e.g. world-clip, clip:PATH_OR_ID, blip:PATH)"
                )
        if self.output_dir is None:
            self.output_dir = f"runs/reward-{self.aspect}"
        for name in ("epochs", "batch_size", "grad_accum_steps", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("log_every and keep_checkpoints must be >= 1")
        if not 0.0 <= self.freeze_ratio <= 1.0:
            raise ValueError(f"freeze_ratio must be in [0, 1], got {self.freeze_ratio}")
        if self.learning_rate <= 0 or (self.head_learning_rate is not None and self.head_learning_rate <= 0):
            raise ValueError("learning rates must be > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.contrastive_weight < 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.contrastive_batch_size < 2 or self.contrastive_negatives < 0:
            raise ValueError("contrastive_batch_size must be >= 2 and contrastive_negatives >= 0")
        if self.contrastive_pool_per_category < 1:
            raise ValueError("contrastive_pool_per_category must be >= 1")
        if self.contrastive_categories is not None:
            from compalign.world.suites import CATEGORIES  # lazy: loads scipy (compalign.world)

            self.contrastive_categories = list(self.contrastive_categories)
            bad = [c for c in self.contrastive_categories if c not in CATEGORIES]
            if bad or not self.contrastive_categories:
                raise ValueError(f"unknown contrastive_categories {bad}; expected some of {CATEGORIES}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)


# Fields that only change how a run executes, not what it computes: they may differ on resume.
RUNTIME_FIELDS = frozenset(
    {
        "output_dir",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "eval_batch_size",
        "device",
        "num_threads",
        "progress",
        "time_limit_s",
        "pairs",
        "pool_dir",
    }
)

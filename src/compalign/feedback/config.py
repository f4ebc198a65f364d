"""Configuration of a feedback-learning run: ReFL with several rewards, IterComp style
(`FeedbackConfig`), and reward-ranked fine-tuning on a gallery's best images (`RaftConfig`).

Fields left at ``None`` take a default that depends on the base model's kind (`resolve` fills
them): a world model (pixel-space, tiny) or a diffusers Stable-Diffusion-like pipeline
(``sd:``/``sd-turbo:`` prefixes). The values a run actually used are written to its record.

The ReFL schedule: the sampler runs `total_steps` steps; each training sample stops at a random
index of the late range `stop_range` (``[0.75, 1.0)`` of 40 steps: indices 30..39, IterComp's
setting), having sampled without gradient up to it, and takes one step with gradient to the
model's prediction of the clean sample, which is decoded and scored by the rewards.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from compalign.cache import scene_pool_dir

from .._config import DictConfig
from ..rewards.objective import RewardTerm, check_reward_names, objective_from_weights

REG_TYPES = ("auto", "denoising", "distance", "none")
SAMPLERS = ("ddim", "euler", "dpmsolver")
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")

# defaults per base-model kind (``world`` / ``diffusers``) for the fields left at None
KIND_DEFAULTS = {
    "world": {"total_steps": None, "learning_rate": 1e-4, "reward_scale": 1.0, "reg_type": "denoising"},
    # IterComp's SDXL recipe: 40-step schedule, lr 1e-5, reward loss scale 1e-3; SD has no scene pool
    # for the denoising loss, so the distance regulariser is its default
    "diffusers": {"total_steps": 40, "learning_rate": 1e-5, "reward_scale": 1e-3, "reg_type": "distance"},
}

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2")
"""Default LoRA targets in a UNet: attention projections, transformer in/out projections and the
ResNet 3x3 convolutions."""


DEFAULT_STOP_RANGE = (0.75, 1.0)
"""ReFL's late stop range (IterComp: indices 30..39 of 40)."""


@dataclass
class FeedbackConfig(DictConfig):
    """Everything that defines a feedback-learning run."""

    name: str = "world-feedback"
    """Run / model name (the record's name; ``--export`` ships it under another name if asked)."""
    base: str = "world-base"
    """The model to fine-tune: a shipped world model name, a saved pipeline folder or run folder,
    or ``prefix:source`` of a diffusers adapter (``sd:<folder or hub id>``, ``sd-turbo:...``:
    Stable-Diffusion-like pipelines with one CLIP text encoder, a UNet and a VAE)."""
    output_dir: str | None = None
    """Run folder (checkpoints, log, plot, final pipeline). Default: ``runs/<name>``."""

    # ----------------------------------------------------------------------------- rewards
    rewards: dict[str, float] = field(default_factory=lambda: {"world-clip": 1.0})
    """``{reward spec: weight}``; a spec is a registered reward name or ``name:source``
    (`compalign.rewards.create_reward`). The reward loss is ``sum_k w_k * relu(c_k - r_k)``."""
    reward_caps: dict[str, float] = field(default_factory=dict)
    """Per-reward cap ``c_k`` of ``relu(c_k - r_k)`` (a reward above its cap gives no gradient).
    Missing entries take the reward's ``loss_offset`` (its ReNO loss constant)."""
    reward_scale: float | None = None
    """Factor on the summed reward loss (None: 1.0 for world models, IterComp's 1e-3 for SD)."""

    # ----------------------------------------------------------------------------- prompts
    prompts_file: str | None = None
    """Training prompts, one per line (``#`` comments and blank lines skipped). Excludes
    `aspects` / `categories`."""
    aspects: list[str] | None = None
    """World prompts: the train splits of every category of these IterComp aspects
    (``attribute_binding``, ``spatial_relationship``, ``non_spatial_relationship``)."""
    categories: list[str] | None = None
    """World prompts: the train splits of these suite categories (added to `aspects`'). With
    neither, and no `prompts_file`: every category that belongs to an aspect. Held-out prompts
    are never used. The denoising regulariser's scene pool uses the same categories."""

    # ----------------------------------------------------------------------------- ReFL schedule
    total_steps: int | None = None
    """Sampler steps of the ReFL schedule (None: the base model's default, e.g. 25 for world-base;
    40 for diffusers models)."""
    stop_range: list[float] = field(default_factory=lambda: list(DEFAULT_STOP_RANGE))
    """Late range the stop index is drawn from, uniformly. Two floats: fractions ``[lo, hi)`` of
    the schedule, index i is allowed when ``lo <= i / total_steps < hi`` (``[0.75, 1.0]`` of 40:
    30..39; at least one index is kept). Two ints: inclusive indices ``[a, b]`` (``[30, 39]``)."""
    guidance_scale: float | None = None
    """Classifier-free guidance of the sampler and of the step with gradient (None: the base's
    default; 1 or less: no guidance, one model call per step)."""
    sampler: str | None = None
    """Scheduler of the ReFL sampler: None keeps the base's own; ``ddim``, ``euler`` or
    ``dpmsolver`` replace it (from the base's scheduler config). The saved model keeps its own."""

    # ----------------------------------------------------------------------------- regulariser
    reg_type: str = "auto"
    """``denoising``: the ordinary diffusion loss on training data (world models: rendered scenes
    of the prompt categories from a `ScenePool`; IterComp's choice). ``distance``: MSE between
    the fine-tuned and the frozen base model's outputs on the inputs of the step with gradient
    (both guidance branches). ``none``. ``auto``: denoising for world models, distance for
    diffusers models (no training images)."""
    reg_weight: float = 1.0
    """Weight of the regulariser in the loss."""
    reg_batch_size: int | None = None
    """``denoising``: training images per micro-batch (None: `batch_size`)."""
    cond_dropout: float = 0.1
    """``denoising``: probability of the empty prompt (keeps classifier-free guidance working)."""
    pool_dir: str | None = None
    """``denoising``: folder of scene pools (default: the per-user cache,
    `compalign.cache.scene_pool_dir`, the one world-model training runs share)."""
    pool_per_category: int = 1024
    """``denoising``: rendered scenes per category in the pool."""
    pool_shard_size: int = 256
    """``denoising``: scenes per pool file (same value as world training: their shards are shared)."""
    data_seed: int = 0
    """``denoising``: seed of the pool's scenes."""
    reg_captions: str | None = None
    """``denoising``: caption preset of the pool's scenes (`compalign.world.captions`: ``exact``,
    ``web``, ...). None: the captions the base learnt from (its record; ``exact`` when it does not
    say). The regulariser is the base's own pre-training data (IterComp's): a base pre-trained on
    web-like captions keeps them, since exact ones would teach it the compositions outside the
    reward models."""

    # ----------------------------------------------------------------------------- what trains
    train_unet: bool = True
    """Train the UNet (or its LoRA adapters)."""
    train_text_encoder: bool = False
    """Train the text encoder too (or LoRA adapters in it)."""
    lora_rank: int | None = None
    """None or 0: full fine-tune of the trained parts. Else LoRA (peft) adapters of this rank on
    `lora_targets`; only they train, and the saved pipeline has them merged into its weights."""
    lora_alpha: float | None = None
    """LoRA alpha (None: the rank, i.e. scale 1)."""
    lora_targets: list[str] | None = None
    """UNet module names (suffixes) that get adapters (None: `UNET_LORA_TARGETS`). The text
    encoder's attention projections get them when it trains."""

    # ----------------------------------------------------------------------------- optimisation
    max_steps: int = 200
    """Optimizer steps."""
    batch_size: int = 4
    """ReFL samples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float | None = None
    """Peak AdamW learning rate (None: 1e-4 for world models, IterComp's 1e-5 for SD)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to the peak learning rate."""
    lr_schedule: str = "constant"
    """After warm-up: ``constant`` or ``cosine`` decay to 0.1 x peak at `max_steps`."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping (0 disables; IterComp: 1)."""
    mixed_precision: str = "no"
    """``no``, ``fp16`` or ``bf16`` (accelerate autocast; weights stay float32)."""
    gradient_checkpointing: bool = False
    """Recompute UNet (and SD VAE decoder) activations in backward to save memory."""
    ema_decay: float | None = None
    """Decay of an exponential moving average of the trained weights, which is what is saved
    (None: no EMA, the last weights are saved)."""
    seed: int = 0
    """Seed of every random draw: prompts, noise, stop indices, regulariser batches."""

    # ----------------------------------------------------------------------------- infrastructure
    checkpoint_every: int = 50
    """Save a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest deleted first)."""
    log_every: int = 1
    """Append a line to ``log.jsonl`` every this many steps."""
    num_threads: int | None = None
    """torch CPU threads (None: leave torch's setting)."""
    device: str | None = None
    """None: chosen by accelerate (a GPU when there is one); ``cpu`` forces the CPU."""
    progress: bool = True
    """Show a tqdm progress bar."""
    time_limit_s: float | None = None
    """Stop after this many seconds of this call's loop and finish the run at the step reached
    (saved and recorded as such)."""

    def __post_init__(self) -> None:
        from compalign.world.suites import ASPECTS, CATEGORIES  # lazy: loads scipy (compalign.world)

        if not isinstance(self.rewards, dict) or not self.rewards:
            raise ValueError("rewards must be a non-empty {name: weight} mapping")
        self.rewards = {str(k): float(v) for k, v in self.rewards.items()}
        self.reward_caps = {str(k): float(v) for k, v in (self.reward_caps or {}).items()}
        terms = self.objective()
        if not any(t.active for t in terms):
            raise ValueError("every reward weight is 0: nothing to train for")
        check_reward_names(terms)
        if self.prompts_file and (self.aspects or self.categories):
            raise ValueError("give prompts_file or aspects/categories, not both")
        if self.aspects is not None:
            self.aspects = list(self.aspects)
            bad = [a for a in self.aspects if a not in ASPECTS]
            if bad:
                raise ValueError(f"unknown aspects {bad}; expected some of {list(ASPECTS)}")
        if self.categories is not None:
            self.categories = list(self.categories)
            bad = [c for c in self.categories if c not in CATEGORIES]
            if bad:
                raise ValueError(f"unknown categories {bad}; expected some of {list(CATEGORIES)}")
        self.stop_range = check_stop_range(self.stop_range)
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.total_steps is not None:
            stop_indices(self.stop_range, self.total_steps)  # raises on a range outside the schedule
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be None or one of {SAMPLERS}, got {self.sampler!r}")
        if self.reg_type not in REG_TYPES:
            raise ValueError(f"reg_type must be one of {REG_TYPES}, got {self.reg_type!r}")
        if self.reg_captions is not None:
            from compalign.world.captions import list_caption_presets  # lazy: loads scipy

            known = list_caption_presets()
            if self.reg_captions not in known:
                raise ValueError(f"reg_captions must be one of {', '.join(known)}, got {self.reg_captions!r}")
        if self.reg_weight < 0:
            raise ValueError(f"reg_weight must be >= 0, got {self.reg_weight}")
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("nothing trains: set train_unet and/or train_text_encoder")
        if self.lora_rank is not None and self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        for key in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.reg_batch_size is not None and self.reg_batch_size < 1:
            raise ValueError(f"reg_batch_size must be >= 1, got {self.reg_batch_size}")
        self.adam_betas = tuple(self.adam_betas)

    # ----------------------------------------------------------------------------- derived
    def objective(self) -> list[RewardTerm]:
        """The reward terms: `rewards` with their `reward_caps`."""
        return objective_from_weights(self.rewards, self.reward_caps)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @property
    def pool_root(self) -> Path:
        return Path(self.pool_dir) if self.pool_dir else scene_pool_dir()

    @property
    def lora(self) -> bool:
        return bool(self.lora_rank)

    def world_categories(self) -> list[str]:
        """Categories of the world prompts (and of the denoising regulariser's scene pool)."""
        # lazy: loads scipy (compalign.world)
        from compalign.world.suites import CATEGORY_ASPECT, list_categories

        cats: list[str] = []
        for a in self.aspects or []:
            cats += list_categories(a)
        cats += self.categories or []
        if not cats:
            cats = [c for c, a in CATEGORY_ASPECT.items() if a is not None]
        return list(dict.fromkeys(cats))

    def prompt_list(self) -> list[str]:
        """The training prompts (file lines, else world suite train splits), in a fixed order."""
        if self.prompts_file:
            path = Path(self.prompts_file)
            if not path.is_file():
                raise ValueError(f"prompt file {path} does not exist")
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            prompts = [ln for ln in lines if ln and not ln.startswith("#")]
            if not prompts:
                raise ValueError(f"prompt file {path} has no prompts")
            return prompts
        from compalign.world.suites import load_suite  # lazy: loads scipy (compalign.world)

        return [p for c in self.world_categories() for p in load_suite(c, "train")]

    def resolve(
        self, kind: str, default_steps: int, default_guidance: float, base_captions: str | None = None
    ) -> dict:
        """The settings left at None filled for a base of `kind` (``world`` / ``diffusers``) that
        learnt from captions `base_captions` (None: exact)."""
        d = KIND_DEFAULTS[kind]
        steps = int(self.total_steps or d["total_steps"] or default_steps)
        reg = d["reg_type"] if self.reg_type == "auto" else self.reg_type
        if reg == "denoising" and kind != "world":
            raise ValueError(
                "reg_type 'denoising' needs training images, which only world models have (a scene "
                "pool); use 'distance' or 'none' for diffusers models"
            )
        return {
            "total_steps": steps,
            "stop_indices": list(stop_indices(self.stop_range, steps)),
            "guidance_scale": float(default_guidance if self.guidance_scale is None else self.guidance_scale),
            "learning_rate": float(
                self.learning_rate if self.learning_rate is not None else d["learning_rate"]
            ),
            "reward_scale": float(self.reward_scale if self.reward_scale is not None else d["reward_scale"]),
            "reg_type": reg,
            **({"reg_captions": self.reg_captions or base_captions or "exact"} if reg == "denoising" else {}),
        }


# Fields that only change how a run executes, not what it computes: they may differ on resume.
RUNTIME_FIELDS = frozenset(
    {
        "output_dir",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "num_threads",
        "device",
        "progress",
        "time_limit_s",
        "pool_dir",
    }
)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_stop_range(r) -> list:
    """`r` as ``[lo, hi]``: two step indices ``0 <= lo <= hi`` or two fractions ``0 <= lo < hi <= 1``."""
    try:
        vals = list(r)
    except TypeError:
        raise ValueError(f"stop_range must be two numbers [lo, hi], got {r!r}") from None
    if len(vals) != 2 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"stop_range must be two numbers [lo, hi], got {r!r}")
    lo, hi = vals
    if _is_int(lo) and _is_int(hi):
        if not 0 <= lo <= hi:
            raise ValueError(f"stop_range indices must satisfy 0 <= a <= b, got [{lo}, {hi}]")
        return [int(lo), int(hi)]
    lo, hi = float(lo), float(hi)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(
            f"stop_range fractions must satisfy 0 <= lo < hi <= 1, got [{lo}, {hi}] "
            "(give two integers for step indices)"
        )
    return [lo, hi]


def stop_indices(stop_range, total_steps: int) -> tuple[int, int]:
    """Inclusive `(first, last)` stop index of `stop_range` in a `total_steps` schedule."""
    lo, hi = check_stop_range(stop_range)
    n = int(total_steps)
    if _is_int(lo) and _is_int(hi):
        if hi >= n:
            raise ValueError(f"stop_range [{lo}, {hi}] reaches past the last index {n - 1} of {n} steps")
        return lo, hi
    a = min(math.ceil(lo * n - 1e-9), n - 1)
    b = max(a, min(math.ceil(hi * n - 1e-9) - 1, n - 1))
    return a, b


@dataclass
class RaftConfig(DictConfig):
    """Everything that defines a RAFT run (reward-ranked fine-tuning on the galleries' best images,
    `compalign.feedback.raft`)."""

    name: str = "world-raft"
    """Run / model name."""
    base: str = "world-base"
    """The world model to fine-tune (a shipped name or a folder)."""
    output_dir: str | None = None
    """Run folder (the final pipeline under ``final/``). Default: ``runs/<name>``."""
    galleries: list[str] = field(default_factory=list)
    """Gallery folders (each of one aspect) whose images of train prompts are the candidates."""
    rewards: dict[str, str] = field(default_factory=dict)
    """Aspect -> reward spec (e.g. ``composition:FOLDER``) that scores that aspect's candidates."""
    samples_per_prompt: int = 0
    """New samples of the base per gallery prompt added to the candidates (0: the gallery only)."""
    top_k: int = 1
    """Candidates kept per prompt: the best by the aspect's reward."""
    max_steps: int = 300
    """Fine-tuning steps."""
    batch_size: int = 32
    """Selected images per step (drawn with the aspects equally often)."""
    learning_rate: float = 5e-5
    """AdamW learning rate (constant)."""
    train_text_encoder: bool = False
    """Fine-tune the text encoder too (else the denoiser only)."""
    reg_batch_size: int = 16
    """Regulariser scenes added to each step's batch (0: none)."""
    reg_captions: str | None = None
    """Caption preset of the regulariser's scenes; None: the captions the base learnt from (its
    record; ``exact`` when it does not say)."""
    pool_dir: str | None = None
    """Folder of scene pools (None: the per-user cache, `compalign.cache.scene_pool_dir`)."""
    pool_per_category: int = 1024
    """Regulariser scenes per category (the aspects' categories)."""
    pool_shard_size: int = 256
    """Scenes per pool file (the value world training uses: their shards are shared)."""
    data_seed: int = 0
    """Seed of the pool's scenes."""
    seed: int = 0
    """Seed of the batches, the denoising noise and the base's candidate samples."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default). RAFT runs on the CPU: world models are tiny."""
    progress: bool = True
    """Log the loss every 50 steps."""

    def __post_init__(self) -> None:
        self.galleries = [str(g) for g in self.galleries]
        self.rewards = {str(a): str(s) for a, s in (self.rewards or {}).items()}
        for name in ("top_k", "max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("samples_per_prompt", "reg_batch_size", "pool_per_category"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        from compalign.world.captions import list_caption_presets  # lazy: loads scipy (compalign.world)
        from compalign.world.suites import ASPECTS

        bad = sorted(set(self.rewards) - set(ASPECTS))
        if bad:
            raise ValueError(f"rewards: unknown aspect {bad[0]!r}; expected some of {', '.join(ASPECTS)}")
        if self.reg_captions is not None and self.reg_captions not in list_caption_presets():
            known = ", ".join(list_caption_presets())
            raise ValueError(f"reg_captions must be one of {known}, got {self.reg_captions!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

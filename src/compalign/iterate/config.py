"""Configuration of ``compalign iterate``: IterComp's loop (gallery -> rank -> pairs -> reward models
-> feedback training -> evaluation -> report), one or more iterations in one work folder.

The defaults are sized so that one iteration on the shipped world models takes about 16 minutes
on a 2-core CPU (see `ESTIMATE`); every size is an option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .._config import DictConfig
from ..feedback.config import DEFAULT_STOP_RANGE

STAGES = ("gallery", "rank", "pairs", "rewards", "feedback", "evaluate", "reno", "report")
"""The stages of one iteration, in order."""
RANK_MODES = ("auto", "people")
TIE_BREAKS = ("world-clip", "none")
REG_TYPES = ("auto", "denoising", "distance", "none")
DEFAULT_GALLERY_MODELS = ("world-base", "world-small", "world-t5", "world-attr", "world-short")

ESTIMATE = """\
One iteration with the defaults on the shipped world models, this 2-core CPU, nothing else running
(measured 2026-12-05, `compalign iterate --iterations 1 --seed 0`, two threads, a fresh folder):
  gallery   5 models x 199 prompts (159 train + 40 held-out)    80 s render, 59 s judge (rank)
  rewards   3 aspect models x 2 epochs (~1250 train pairs)      34 s
  feedback  150 steps x 8 samples + the scene pool (once)        342 s
  evaluate  6 models x 9 categories x 20 prompts x 2 seeds      269 s (later iterations: new base only)
            + the reward check (scores the evaluation's stored images)
  reno      world-onestep, 360 images x 20 iterations + plain   113 s
  total                                                         899 s (15 min 6 s wall)
Later iterations render only the new model into the gallery and evaluate only the new base.
One thread per process when other jobs share the CPU (two OpenMP threads on a busy core are
far slower)."""


def base_name(k: int) -> str:
    """The gallery / report name of the base fine-tuned in iteration `k`."""
    return f"iter{k}"


@dataclass
class IterateConfig(DictConfig):
    """Everything that defines an ``iterate`` run (the work folder's ``state.json`` records, per
    stage, the settings it ran with)."""

    workdir: str = "runs/iterate"
    """Work folder: ``state.json``, ``iter_<k>/...`` per iteration, the shared scene pool."""
    iterations: int = 1
    """Iterations to have done when the run ends (finished ones are skipped)."""
    base: str = "world-base"
    """The model fine-tuned in iteration 1 (a world model name or folder, or ``sd:...``); iteration
    k > 1 fine-tunes ``iter_<k-1>/base``."""
    gallery_models: list[str] = field(default_factory=lambda: list(DEFAULT_GALLERY_MODELS))
    """Models of iteration 1's galleries (generator specs, optionally ``NAME=SPEC``); iteration
    k > 1 adds the base fine-tuned in iteration k - 1 (named ``iter<k-1>``)."""
    aspects: list[str] = field(
        default_factory=lambda: ["attribute_binding", "spatial_relationship", "non_spatial_relationship"]
    )
    """IterComp aspects: one gallery, pairs file and reward model each."""
    seed: int = 0
    """Seed of the galleries (record i: seed + i), reward training and feedback training."""

    # ----------------------------------------------------------------------------- gallery
    per_category: int = 20
    """Train-split suite prompts per category in each aspect's gallery (the first N)."""
    reward_heldout_per_category: int = 5
    """Held-out suite prompts per category added to each gallery, taken from the end of the held-out
    suites (never the evaluation prompts, which are the first ones): their pairs are the reward
    models' held-out pairs (model selection and the reported pair accuracy). 0: none."""
    seeds_per_prompt: int = 1
    """Records per prompt in each gallery: every prompt is rendered this many times (record i with
    seed + i), so pairs also compare a model's good and bad samples of one prompt's neighbours."""
    gallery_resolution: int | None = None
    """Gallery image size (None: each model's own; world models: 32 px)."""
    gallery_steps: int | None = None
    """Sampling steps of the gallery models (None: each model's default)."""
    gallery_guidance: float | None = None
    """Guidance scale of the gallery models (None: each model's default)."""
    gallery_batch_size: int = 16
    """Images per generator call while rendering galleries."""

    # ----------------------------------------------------------------------------- ranking
    rank: str = "auto"
    """``auto``: the exact world evaluator ranks every record; ``people``: the run stops after the
    galleries and asks for ``compalign rank serve``; re-running continues once all is ranked."""
    tie_break: str = "world-clip"
    """``auto``: break evaluator ties by the world-clip reward (``none``: explicit ties)."""
    pairs_decided_only: bool = True
    """``auto`` ranking: train (and select) the reward models only on pairs whose exact-evaluator
    verdicts differ, leaving out pairs ordered by the tie-break alone (IterComp's pairs come from
    rankings that express a preference)."""

    @property
    def decided_pairs(self) -> bool:
        """Whether the pairs stage keeps evaluator-decided pairs only (auto ranking only)."""
        return self.pairs_decided_only and self.rank == "auto"

    # ----------------------------------------------------------------------------- reward models
    reward_backbone: str = "world-clip"
    """Backbone of the composition reward models (``world-clip``, ``world-clip:FOLDER``,
    ``clip:PATH``, ``blip:PATH``)."""
    reward_epochs: int = 2
    """Epochs of reward-model training (the held-out-best epoch is kept)."""
    reward_batch_size: int = 32
    """Pairs per reward-model optimizer step."""
    reward_lr: float = 1e-5
    """Peak learning rate of the reward backbone's trainable layers (IterComp: 1e-5)."""
    reward_head_lr: float | None = None
    """Learning rate of the reward head (None: the trainer's default, 1e-3 for a fresh head)."""
    reward_freeze_ratio: float = 0.7
    """Fraction of each reward-backbone tower frozen (IterComp's fix_rate 0.7)."""

    # ----------------------------------------------------------------------------- feedback
    reward_weights: dict[str, float] = field(default_factory=dict)
    """Weight of each aspect's reward model in feedback training (missing: 1.0); ReNO scales it by
    `reno_reward_scale`."""
    feedback_steps: int = 150
    """Optimizer steps of feedback training (ReFL) per iteration."""
    feedback_batch_size: int = 8
    """ReFL samples per step."""
    feedback_lr: float | None = None
    """Feedback learning rate (None: the trainer's default, 1e-4 for world models)."""
    feedback_stop_range: list[float] = field(default_factory=lambda: list(DEFAULT_STOP_RANGE))
    """ReFL stop range (`FeedbackConfig.stop_range`): fractions ``[lo, hi)`` of the sampler's
    schedule, or two ints as inclusive indices."""
    reg_type: str = "auto"
    """Regulariser against drift: ``auto`` (world: denoising loss on rendered scenes; SD: distance
    to the frozen base), ``denoising``, ``distance``, or ``none`` (not advised)."""
    reg_weight: float = 1.0
    """Weight of the regulariser."""
    pool_dir: str | None = None
    """Scene pool of the denoising regulariser (None: the per-user cache,
    `compalign.cache.scene_pool_dir`, shared by the iterations and every other run)."""
    pool_per_category: int = 1024
    """Rendered scenes per category in the scene pool."""
    feedback_checkpoint_every: int = 50
    """Feedback-training checkpoint interval (steps)."""

    # ----------------------------------------------------------------------------- evaluation
    eval_categories: list[str] | None = None
    """Held-out suite categories evaluated (None: the categories of `aspects`, plus
    ``single_object`` with `eval_single_object`)."""
    eval_single_object: bool = True
    """With the default `eval_categories`, also evaluate ``single_object``: feedback training must
    not buy composition with plain objects (reward hacking shows there first)."""
    eval_per_category: int = 20
    """Held-out prompts per category (the first N of each held-out suite)."""
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds per evaluation prompt."""
    eval_batch_size: int = 64
    """Images per generator call in evaluations (ReNO: images optimised together)."""

    # ----------------------------------------------------------------------------- ReNO
    reno: bool = True
    """Evaluate noise optimisation (ReNO) with the aspect reward models as rewards."""
    reno_model: str = "world-onestep"
    """One/two-step generator ReNO runs on when the base is multi-step (a one/two-step base is
    optimised itself)."""
    reno_iterations: int = 20
    """ReNO iterations per image."""
    reno_lr: float = 5.0
    """ReNO learning rate on the noise."""
    reno_reward_scale: float = 0.1
    """Factor on each aspect's `reward_weights` in ReNO. The composition rewards are standardised:
    their noise gradient is 3-5x the world CLIP's, and at weight 1 ReNO's gradient clip (0.1)
    binds on nearly every step; 0.1 matches the world CLIP's step size (round 3 of
    ``docs/results/reward_models_world``)."""
    reno_per_category: int | None = None
    """Held-out prompts per category for ReNO (None: `eval_per_category`; seeds: `eval_seeds`)."""

    # ----------------------------------------------------------------------------- run
    device: str | None = None
    """cpu, cuda, ... (None: a GPU when there is one)."""
    num_threads: int | None = None
    """torch CPU threads of the training stages (None: the trainers' defaults)."""
    workers: int = 0
    """Processes of the exact evaluator (ranking, evaluation); 0: in process."""
    progress: bool = False
    """Progress bars of the stages (stage messages are always printed)."""
    force_stages: list[str] = field(default_factory=list)
    """Stages to run again although finished: ``STAGE`` (every iteration, i.e. from the first) or
    ``K:STAGE``; every later stage (and later iteration) is redone too and its outputs removed."""
    stop_after: str | None = None
    """Stop after this stage (``STAGE``: of the first iteration that runs it; ``K:STAGE``)."""

    def __post_init__(self) -> None:
        self.gallery_models = list(self.gallery_models)
        self.aspects = list(self.aspects)
        self.eval_seeds = [int(s) for s in self.eval_seeds]
        self.force_stages = list(self.force_stages or [])
        self.reward_weights = {str(k): float(v) for k, v in (self.reward_weights or {}).items()}
        from ..feedback.config import _check_stop_range

        try:
            self.feedback_stop_range = _check_stop_range(self.feedback_stop_range)
        except ValueError as e:
            raise ValueError(f"feedback_stop_range: {e}") from None
        if self.eval_categories is not None:
            self.eval_categories = list(self.eval_categories)

    # ----------------------------------------------------------------------------- derived
    def weight(self, aspect: str) -> float:
        return self.reward_weights.get(aspect, 1.0)

    def reno_weight(self, aspect: str) -> float:
        """The aspect reward's weight in ReNO: its feedback weight x `reno_reward_scale`."""
        return self.weight(aspect) * self.reno_reward_scale

    def categories_of_aspects(self) -> list[str]:
        from compalign.world.suites import list_categories

        return [c for a in self.aspects for c in list_categories(a)]

    def evaluation_categories(self) -> list[str]:
        if self.eval_categories:
            return list(self.eval_categories)
        cats = self.categories_of_aspects()
        if self.eval_single_object and "single_object" not in cats:
            cats.append("single_object")
        return cats

    def reno_prompts_per_category(self) -> int:
        return self.reno_per_category or self.eval_per_category


def parse_stage_ref(text: str, what: str) -> tuple[int | None, str]:
    """``STAGE`` -> (None, STAGE); ``K:STAGE`` -> (K, STAGE); ValueError naming `what` otherwise."""
    m = re.fullmatch(r"(?:(\d+):)?([a-z_]+)", str(text).strip())
    if not m or m.group(2) not in STAGES or (m.group(1) is not None and int(m.group(1)) < 1):
        raise ValueError(
            f"{what} {text!r}: expected STAGE or K:STAGE (K >= 1) with STAGE one of {', '.join(STAGES)}"
        )
    return (int(m.group(1)) if m.group(1) else None), m.group(2)

"""Configuration of ``compalign iterate``: IterComp's loop (gallery -> rank -> pairs -> reward models
-> feedback training -> evaluation -> report), one or more iterations in one work folder.

The trainers' own configs are nested, not copied: `reward_training` (`RewardTrainConfig`),
`feedback_training` (`FeedbackConfig`) and `noise_optimization` (`ReNOConfig`), with iterate's
`DEFAULTS`; each iteration fills their `PER_RUN` fields. The stages record `RECORDED` fields under
their historical names and every other changed field under its own (`IterateConfig.changed`), and
`from_dict` reads the flat fields of earlier versions (`LEGACY`), so older work folders resume.
The command line's options are derived from the fields (`compalign.iterate.cli`), read from this
module's source: the fields' types are builtins and their defaults literals.

The defaults are sized so that one iteration on the shipped world models takes about 15 minutes
on a 2-core CPU (see `ESTIMATE`); every size is an option.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .._config import DictConfig
from ..feedback.config import RUNTIME_FIELDS as FEEDBACK_RUNTIME_FIELDS
from ..feedback.config import FeedbackConfig, RaftConfig
from ..noise_optimization.reno import ReNOConfig
from ..rewards.composition.config import RewardTrainConfig
from ..rewards.objective import RewardTerm, objective_from_weights

STAGES = ("gallery", "rank", "pairs", "rewards", "feedback", "evaluate", "reno", "report")
"""The stages of one iteration, in order."""
RANK_MODES = ("auto", "people")
TIE_BREAKS = ("world-clip", "none")

ESTIMATE = """\
One iteration with the defaults on the shipped world models, on a 2-core x86 CPU with nothing else
running (`compalign iterate --iterations 1 --seed 0`, two threads, a fresh folder):
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


NESTED = ("reward_training", "feedback_training", "noise_optimization", "raft_training")
"""The trainers' configs an `IterateConfig` holds."""

DEFAULTS = {
    "reward_training": {"epochs": 2, "batch_size": 32},
    "feedback_training": {"max_steps": 150, "batch_size": 8},
    "noise_optimization": {"iterations": 20, "progress": False},
    "raft_training": {},
}
"""Where iterate's defaults differ from the trainers' own (one iteration in about 15 minutes on a
2-core CPU, see `ESTIMATE`)."""

PER_RUN = {
    "reward_training": ("pairs", "aspect", "output_dir", "seed", "device", "num_threads", "progress"),
    "feedback_training": (
        "name", "base", "output_dir", "rewards", "aspects", "seed", "device", "num_threads", "progress",
    ),
    "noise_optimization": ("progress",),
    "raft_training": (
        "name", "base", "output_dir", "galleries", "rewards", "seed", "num_threads", "progress", "pool_dir",
    ),
}  # fmt: skip
"""Fields of the nested configs that each iteration sets, from the iteration and the top-level
fields (`seed`, `device`, `num_threads`, `progress`); they are not settings of their own."""

RECORDED = {
    "reward_training": {
        "backbone": "backbone",
        "epochs": "epochs",
        "batch_size": "batch_size",
        "learning_rate": "lr",
        "head_learning_rate": "head_lr",
        "freeze_ratio": "freeze_ratio",
    },
    "feedback_training": {
        "max_steps": "steps",
        "batch_size": "batch_size",
        "learning_rate": "lr",
        "reg_type": "reg_type",
        "reg_weight": "reg_weight",
        "pool_per_category": "pool_per_category",
    },
    "noise_optimization": {"iterations": "iterations", "lr": "lr"},
    "raft_training": {
        "max_steps": "steps",
        "batch_size": "batch_size",
        "learning_rate": "lr",
        "top_k": "top_k",
        "samples_per_prompt": "samples_per_prompt",
        "reg_batch_size": "reg_batch_size",
    },
}
"""Fields of the nested configs their stage always records, under the names ``state.json`` has
always used for them. Every other field that changes what a stage computes is recorded under its
own name when it differs from iterate's default (`IterateConfig.changed`), so work folders of
earlier versions resume."""

LEGACY = {
    "reward_backbone": ("reward_training", "backbone"),
    "reward_epochs": ("reward_training", "epochs"),
    "reward_batch_size": ("reward_training", "batch_size"),
    "reward_lr": ("reward_training", "learning_rate"),
    "reward_head_lr": ("reward_training", "head_learning_rate"),
    "reward_freeze_ratio": ("reward_training", "freeze_ratio"),
    "feedback_steps": ("feedback_training", "max_steps"),
    "feedback_batch_size": ("feedback_training", "batch_size"),
    "feedback_lr": ("feedback_training", "learning_rate"),
    "feedback_stop_range": ("feedback_training", "stop_range"),
    "reg_type": ("feedback_training", "reg_type"),
    "reg_weight": ("feedback_training", "reg_weight"),
    "pool_dir": ("feedback_training", "pool_dir"),
    "pool_per_category": ("feedback_training", "pool_per_category"),
    "feedback_checkpoint_every": ("feedback_training", "checkpoint_every"),
    "reno_iterations": ("noise_optimization", "iterations"),
    "reno_lr": ("noise_optimization", "lr"),
}
"""The flat fields of earlier versions (``state.json``'s ``config`` of older work folders; the
command line's options) -> (nested config, its field)."""


def nested_class(name: str) -> type:
    """The config class of nested field `name` (imported on use: the trainers load torch)."""
    if name == "reward_training":
        from ..rewards.composition.train import RewardTrainConfig  # lazy: loads diffusers, transformers

        return RewardTrainConfig
    if name == "feedback_training":
        return FeedbackConfig
    if name == "noise_optimization":
        return ReNOConfig
    if name == "raft_training":
        return RaftConfig
    raise KeyError(name)


def runtime_fields(name: str) -> frozenset[str]:
    """Fields of nested config `name` that change how its run executes, not what it computes."""
    if name == "reward_training":
        from ..rewards.composition.train import RUNTIME_FIELDS  # lazy: loads diffusers, transformers

        return RUNTIME_FIELDS
    if name == "feedback_training":
        return FEEDBACK_RUNTIME_FIELDS
    if name == "raft_training":
        return frozenset({"num_threads", "progress", "pool_dir", "output_dir"})
    return frozenset({"progress", "keep_all_images"})


def _nested(name: str, values: dict | None = None):
    """Nested config `name` with iterate's `DEFAULTS`, then `values` (a ValueError names it)."""
    cls, values = nested_class(name), dict(values or {})
    per_run = sorted(set(values) & set(PER_RUN[name]))
    if per_run:
        raise ValueError(f"{name}.{per_run[0]} is set by each iteration, not by the config")
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{name}: unknown fields {unknown}")
    try:
        return cls(**{**DEFAULTS[name], **values})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None


def _json(value):
    """JSON round trip (tuples -> lists), so values compare as they are stored."""
    return json.loads(json.dumps(value))


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
    gallery_models: list[str] = field(
        default_factory=lambda: ["world-base", "world-small", "world-t5", "world-attr", "world-short"]
    )
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
    reward_training: RewardTrainConfig = field(default_factory=lambda: _nested("reward_training"))
    """How each aspect's composition reward model trains (`RewardTrainConfig`; here 2 epochs of
    batch 32 by default: the held-out-best epoch is kept). Its `PER_RUN` fields (pairs, aspect,
    run folder, seed, device, threads, progress) are set by each iteration."""

    # ----------------------------------------------------------------------------- feedback
    feedback_method: str = "refl"
    """How the base learns from the reward models: ``refl`` (IterComp's ReFL; options --feedback-*)
    or ``raft`` (reward-ranked fine-tuning: the rewards pick each train prompt's best image of the
    iteration's galleries, the base learns them with its denoising loss; options --raft-*)."""
    reward_weights: dict[str, float] = field(default_factory=dict)
    """Weight of each aspect's reward model in feedback training (missing: 1.0); ReNO scales it by
    `reno_reward_scale`. The aspects' reward models with these weights are the reward objective
    (`compalign.rewards.objective`) of both."""
    feedback_training: FeedbackConfig = field(default_factory=lambda: _nested("feedback_training"))
    """How feedback training (ReFL) fine-tunes the base each iteration (`FeedbackConfig`; here 150
    steps of 8 samples by default). Its `PER_RUN` fields (name, base, run folder, rewards, aspects,
    seed, device, threads, progress) are set by each iteration; its `pool_dir` (None: the per-user
    cache, `compalign.cache.scene_pool_dir`) is shared by the iterations and every other run."""
    raft_training: RaftConfig = field(default_factory=lambda: _nested("raft_training"))
    """How RAFT fine-tunes the base each iteration when `feedback_method` is ``raft``
    (`RaftConfig`). Its `PER_RUN` fields (name, base, run folder, galleries, rewards, seed,
    threads, progress, pool folder) are set by each iteration: the galleries of the iteration,
    each scored by its aspect's reward model, and `feedback_training`'s scene pool folder."""

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
    eval_gallery: bool = True
    """Evaluate every gallery model too (the report's comparison); False: only the current and the
    new base (a world model's 900 evaluation images take minutes, so this saves most of the
    evaluate stage of iteration 1)."""

    # ----------------------------------------------------------------------------- ReNO
    reno: bool = True
    """Evaluate noise optimisation (ReNO) with the aspect reward models as rewards."""
    reno_model: str = "world-onestep"
    """One/two-step generator ReNO runs on when the base is multi-step (a one/two-step base is
    optimised itself), unless `reno_steps` is set."""
    reno_steps: int | None = None
    """ReNO on a multi-step world base itself: its DDIM sampling steps under ReNO (the gradient
    flows through all of them, so time grows with them; 2-4 is practical on a CPU). The reno
    stage's plain row is then the base at these steps too. None: `reno_model` runs instead."""
    noise_optimization: ReNOConfig = field(default_factory=lambda: _nested("noise_optimization"))
    """How ReNO optimises each image's noise (`ReNOConfig`; here 20 iterations by default, no
    progress bar)."""
    reno_reward_scale: float = 0.1
    """Factor on each aspect's `reward_weights` in ReNO. The composition rewards are standardised:
    their noise gradient is 3-5x the world CLIP's, and at weight 1 ReNO's gradient clip (0.1)
    binds on nearly every step; 0.1 matches the world CLIP's step size
    (``docs/results/reward_models_world``)."""
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
        if self.eval_categories is not None:
            self.eval_categories = list(self.eval_categories)
        for name in NESTED:  # a dict (from JSON or the command line) becomes its config
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _nested(name, value))
            elif not isinstance(value, nested_class(name)):
                raise ValueError(f"{name}: expected a {nested_class(name).__name__} or a dict, got {value!r}")

    def to_dict(self) -> dict:
        """JSON-ready; the nested configs without their `PER_RUN` fields."""
        d = super().to_dict()
        for name in NESTED:
            d[name] = {k: v for k, v in d[name].items() if k not in PER_RUN[name]}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> IterateConfig:
        """`to_dict`'s inverse; also reads the flat fields of earlier versions (`LEGACY`)."""
        d = dict(d)
        nested = {name: dict(d.pop(name, None) or {}) for name in NESTED}
        for old, (name, f) in LEGACY.items():
            if old in d:
                nested[name].setdefault(f, d.pop(old))
        return super().from_dict({**d, **nested})

    # ----------------------------------------------------------------------------- recorded settings
    def recorded(self, name: str) -> dict:
        """The fields of nested config `name` that its stage always records (`RECORDED`)."""
        config = getattr(self, name)
        return _json({rec: getattr(config, f) for f, rec in RECORDED[name].items()})

    def changed(self, name: str) -> dict:
        """The other fields of nested config `name` that change what its stage computes and differ
        from iterate's default (recorded under their own names)."""
        config, default = getattr(self, name), _nested(name)
        skip = set(RECORDED[name]) | set(PER_RUN[name]) | runtime_fields(name)
        out = {}
        for f in fields(config):
            value = _json(getattr(config, f.name))
            if f.name not in skip and value != _json(getattr(default, f.name)):
                out[f.name] = value
        return out

    # ----------------------------------------------------------------------------- derived
    def weight(self, aspect: str) -> float:
        """The aspect reward's weight in feedback training (`reward_weights`, missing: 1.0)."""
        return self.reward_weights.get(aspect, 1.0)

    def reno_weight(self, aspect: str) -> float:
        """The aspect reward's weight in ReNO: its feedback weight x `reno_reward_scale`."""
        return self.weight(aspect) * self.reno_reward_scale

    def objective(self, models: dict[str, str | Path], reno: bool = False) -> list[RewardTerm]:
        """The reward objective of feedback training (`reno`: of ReNO): one term per aspect, its
        reward model ``composition:<models[aspect]>`` with `weight` (ReNO: `reno_weight`)."""
        weight = self.reno_weight if reno else self.weight
        return objective_from_weights({f"composition:{models[a]}": weight(a) for a in self.aspects})

    def categories_of_aspects(self) -> list[str]:
        from compalign.world.suites import list_categories  # lazy: loads scipy (compalign.world)

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


DEFAULT_GALLERY_MODELS = tuple(
    next(f for f in fields(IterateConfig) if f.name == "gallery_models").default_factory()
)
"""The gallery models of iteration 1 when none are given."""


def parse_stage_ref(text: str, what: str) -> tuple[int | None, str]:
    """``STAGE`` -> (None, STAGE); ``K:STAGE`` -> (K, STAGE); ValueError naming `what` otherwise."""
    m = re.fullmatch(r"(?:(\d+):)?([a-z_]+)", str(text).strip())
    if not m or m.group(2) not in STAGES or (m.group(1) is not None and int(m.group(1)) < 1):
        raise ValueError(
            f"{what} {text!r}: expected STAGE or K:STAGE (K >= 1) with STAGE one of {', '.join(STAGES)}"
        )
    return (int(m.group(1)) if m.group(1) else None), m.group(2)

"""`CompositionRewardModel`: an image-text backbone with a scalar head, one model per aspect
(IterComp's attribute-binding, spatial and non-spatial reward models).

``score = (head(backbone.features(images, prompts)) - score_mean) / score_std``, float32 ``[B]``,
higher is better, differentiable in the images (every backbone preprocesses differentiably).

Score normalisation is measured, not borrowed: after training, `score_mean` / `score_std` are the
mean and standard deviation of the raw scores of the model's own training images (every distinct
image-prompt combination of the train pairs), so scores are ~N(0, 1) on its training data
(IterComp's release reused ImageReward's constants). An untrained model has mean 0, std 1.

A model folder (`save_pretrained` / `from_pretrained`)::

    composition_reward.json   format version, aspect, backbone kind / source / config, head config,
                              freeze ratio, training image size, score mean / std (+ how measured)
    model.safetensors         every weight (backbone and head)
    backbone/tokenizer/       the backbone's tokenizer files
    training.json             the training record (written by the trainer)

As a reward: ``CompositionRewardModel("itercomp-spatial")`` (a shipped name, a model folder or a
run folder) or ``create_reward("composition:NAME_OR_FOLDER")``; loaded that way it is frozen (no
parameter requires grad, eval mode). ReNO's loss is ``2 - score`` (as ImageReward's, whose scores
are standardised the same way). Its default ReNO weight is 0.1, not ImageReward's 1.0: on
world-onestep a standardised score's noise gradient is 3-5x the world CLIP cosine's, so at weight 1
ReNO's gradient clip (0.1) binds on nearly every step (measured with `scripts/reno_grad_norms.py`:
75-81% of samples still clipped after 8 steps, against 28% for the world CLIP), and weight 0.1 gave
higher held-out accuracy than 1 for every aspect (docs/results/reward_models_world, "The ReNO step
size of standardised rewards").
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_model

from compalign.io import atomic_path, atomic_write_json
from compalign.world.suites import ASPECTS

from ..base import Reward, check_inputs
from ..real.common import resolve_dtype
from ..world_clip.reward import RewardNotTrainedError
from .backbones import apply_freeze_ratio, create_backbone, head_config, list_backbones, load_saved
from .folder import (  # noqa: F401 (the folder format is part of this module's API)
    BACKBONE_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    RECORD_FILE,
    SHIPPED,
    WEIGHTS_FILE,
    weights_root,
)
from .folder import load_weights as _load_weights  # noqa: F401 (the trainer's name for it)

ASPECT_SHORT = {v: k.removeprefix("itercomp-") for k, v in SHIPPED.items()}


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """The model folder of a shipped name (``weights/<name>``), a model folder or a run folder
    (its ``final/``)."""

    path = Path(name_or_path)
    for cand in (path, path / "final"):
        if (cand / CONFIG_FILE).is_file():
            return cand
    name = str(name_or_path)
    shipped = weights_root() / name
    if (shipped / CONFIG_FILE).is_file():
        return shipped
    if name in SHIPPED:
        raise RewardNotTrainedError(
            f"composition reward {name} ({SHIPPED[name]}) is not trained yet (no weights in {shipped}); "
            f"train and ship it with `compalign reward train --pairs PAIRS --aspect {SHIPPED[name]} "
            f"--export {name}`"
        )
    if path.exists():
        raise FileNotFoundError(f"{path} is not a composition reward model folder or run (no {CONFIG_FILE})")
    known = sorted(set(SHIPPED) | {p.name for p in weights_root().glob("*") if (p / CONFIG_FILE).is_file()})
    raise FileNotFoundError(
        f"unknown composition reward {name!r}: not a folder, and not one of {', '.join(known)}"
    )


class CompositionRewardModel(Reward):
    """Composition-aware reward of one aspect: backbone features -> scalar head -> standardised score.

    Args:
        source: a `Backbone`, a backbone spec (``world-clip``, ``clip:PATH``, ``blip:PATH``; needs
            `aspect`) or a `WorldCLIPModel` -> a new (trainable) model; or a shipped name /
            model folder / run folder (str or Path) -> a saved model, frozen by default.
        aspect: ``attribute_binding``, ``spatial_relationship`` or ``non_spatial_relationship``
            (new models only).
        head: the scoring head (default: the backbone's, `FusionHead` or ImageReward's MLP).
        head_hidden: hidden width of a new `FusionHead`.
        head_image_block: False: a new `FusionHead` reads the image only through its product with
            the prompt (no prompt-independent image term).
        freeze_ratio: freeze the lowest fraction of each backbone tower (new models; None: 0).
        device, dtype: where and in which precision the weights live (scores are float32).
        frozen: no parameter requires grad and the model stays in eval mode (default: True when
            loaded from a folder, False for a new model).
    """

    name = "composition"
    loss_offset = 2.0
    default_weight = 0.1  # measured on the world (see the module doc)

    def __init__(
        self,
        source="itercomp-attribute",
        aspect: str | None = None,
        *,
        head: torch.nn.Module | None = None,
        head_hidden: int = 256,
        head_image_block: bool = True,
        freeze_ratio: float | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        frozen: bool | None = None,
    ):
        super().__init__()
        is_saved = isinstance(source, Path) or (
            isinstance(source, str) and source.partition(":")[0] not in _backbone_names()
        )
        if is_saved:
            if aspect is not None or head is not None or freeze_ratio is not None:
                raise ValueError("aspect, head and freeze_ratio apply to new models, not to a saved one")
            folder = resolve_model_dir(source)
            config, self.backbone, self.head = load_saved(folder)
            self.config = config
            self.source = str(folder)
            frozen = True if frozen is None else frozen
            if not frozen:  # trainable again: the layers it was trained with frozen stay frozen
                self.freeze(float(config.get("freeze_ratio", 0.0)))
        else:
            if aspect not in ASPECTS:
                raise ValueError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
            self.backbone = create_backbone(source)
            own_head = head is None  # the backbone's head (BLIP: ImageReward's pretrained MLP)
            if own_head:
                head = self.backbone.make_head(head_hidden, image_block=head_image_block)
            self.head = head
            self.config = {
                "format_version": FORMAT_VERSION,
                "aspect": aspect,
                "backbone": {"kind": self.backbone.kind, "source": self.backbone.source},
                "head": head_config(self.head),
                "head_pretrained": bool(own_head and self.backbone.head_is_pretrained),
                "freeze_ratio": 0.0,
                "image_size": self.backbone.input_size,
                "score_mean": 0.0,
                "score_std": 1.0,
                "normalization": None,
            }
            self.source = self.backbone.source
            frozen = False if frozen is None else frozen
            self.freeze(freeze_ratio or 0.0)
        self.name = f"composition-{ASPECT_SHORT.get(self.aspect, self.aspect)}"
        if dtype is not None:
            self.to(dtype=resolve_dtype(dtype))
        if device is not None:
            self.to(device)
        self.frozen = bool(frozen)
        if self.frozen:
            self.requires_grad_(False)
        self.train(False)

    # ------------------------------------------------------------------------------ properties
    @property
    def aspect(self) -> str:
        return self.config["aspect"]

    @property
    def score_mean(self) -> float:
        return float(self.config["score_mean"])

    @property
    def score_std(self) -> float:
        return float(self.config["score_std"])

    @property
    def image_size(self) -> int:
        """Resolution the training images were loaded at (the backbone's input size)."""
        return int(self.config.get("image_size") or self.backbone.input_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def train(self, mode: bool = True):  # a frozen reward stays in eval mode
        return super().train(bool(mode) and not getattr(self, "frozen", False))

    # ------------------------------------------------------------------------------ set-up
    def freeze(self, ratio: float) -> dict:
        """Freeze the lowest `ratio` of each backbone tower (IterComp's fix_rate); the head trains.
        Returns the summary of `apply_freeze_ratio` (backbone counts) plus the head's size."""
        summary = apply_freeze_ratio(self.backbone, float(ratio))
        self.head.requires_grad_(True)
        summary["head_parameters"] = sum(p.numel() for p in self.head.parameters())
        self.config["freeze_ratio"] = float(ratio)
        return summary

    def set_normalization(self, mean: float, std: float, info: dict | None = None) -> None:
        """Standardise scores with `mean` / `std` of raw scores (`info`: how they were measured)."""
        if not (std > 0 and std == std and mean == mean):
            raise ValueError(f"normalisation needs a finite mean and a std > 0, got {mean}, {std}")
        self.config["score_mean"], self.config["score_std"] = float(mean), float(std)
        self.config["normalization"] = info

    # ------------------------------------------------------------------------------ scoring
    def raw_scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The head's output before standardisation, float32 `[B]`."""
        features = self.backbone.features(images, list(prompts))
        p = next(self.head.parameters())
        return self.head(features.to(p.device, p.dtype)).squeeze(-1).float()

    def forward(
        self, images: torch.Tensor, prompts: list[str], normalized: bool = True, check: bool = True
    ) -> torch.Tensor:
        """Scores `[B]` float32 (`normalized=False`: raw head outputs, as trained; `check=False`
        skips the input checks, for training loops)."""
        if check:
            check_inputs(images, prompts)
        if images.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        raw = self.raw_scores(images, prompts)
        if not normalized:
            return raw
        return ((raw - self.score_mean) / self.score_std).float()

    # ------------------------------------------------------------------------------ io
    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None, record: dict | None = None):
        """Write the model folder (`dtype`: e.g. torch.float16 for shipping; `record`: training.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self
        if dtype is not None:
            model = copy.deepcopy(self).to(dtype)
        with atomic_path(path / WEIGHTS_FILE, suffix=".safetensors") as tmp:
            save_model(model, str(tmp), metadata={"format": "pt"})
        self.backbone.save_assets(path / BACKBONE_DIR)
        config = dict(self.config)
        config["backbone"] = {**config["backbone"], "config": self.backbone.config()}
        config["dtype"] = str(dtype or next(self.parameters()).dtype).removeprefix("torch.")
        atomic_write_json(path / CONFIG_FILE, config)
        if record is not None:
            atomic_write_json(path / RECORD_FILE, record)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None, dtype=None, frozen: bool = False):
        """Load a model folder (or run folder / shipped name); trainable (with its frozen layers
        as trained) unless `frozen`."""
        return cls(Path(resolve_model_dir(path)), device=device, dtype=dtype, frozen=frozen)


def _backbone_names() -> set[str]:
    return set(list_backbones())

"""`WorldCLIPReward`: the world CLIP as a differentiable `Reward` (for ReNO noise optimisation).

``WorldCLIPReward("world-clip")`` loads the shipped weights
(``compalign/rewards/world_clip/weights/world-clip/``); any other argument is a model folder
(``final/`` of a run, or an exported folder) or a run folder. Scores:

- ``scaled=False`` (default): the cosine similarity of the image and prompt embeddings, in
  [-1, 1] (comparable across models and checkpoints);
- ``scaled=True``: the cosine times the model's learned logit scale (the logits it was trained
  with, ~tens).

forward: images `[B, 3, H, W]` in [0, 1], any float dtype, any size (resized to 32 px with
antialiased bilinear interpolation when different, differentiably), on the reward's device;
returns float32 `[B]`. Prompt embeddings are cached (they carry no gradient).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..base import Reward, check_inputs
from .model import WORLD_CLIP_FILE, WorldCLIPModel

SHIPPED = ("world-clip",)


class RewardNotTrainedError(LookupError):
    """A known reward whose weights are not shipped (yet)."""


def weights_root() -> Path:
    """Folder of the shipped world-clip weights inside the package."""
    return Path(__file__).resolve().parent / "weights"


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """The model folder of a shipped name, a model folder or a run folder (its ``final/``)."""
    path = Path(name_or_path)
    for cand in (path, path / "final"):
        if (cand / WORLD_CLIP_FILE).is_file():
            return cand
    if str(name_or_path) in SHIPPED:
        shipped = weights_root() / str(name_or_path)
        if (shipped / WORLD_CLIP_FILE).is_file():
            return shipped
        raise RewardNotTrainedError(
            f"{name_or_path} is not trained yet (no weights in {shipped}); train and ship it with "
            "`compalign reward train-world-clip --export` (or train_world_clip(WorldCLIPTrainConfig()) "
            "then export_world_clip('runs/world-clip'))"
        )
    if path.exists():
        raise FileNotFoundError(f"{path} is not a world-clip model folder or run (no {WORLD_CLIP_FILE})")
    raise FileNotFoundError(
        f"unknown world-clip model {str(name_or_path)!r}: not a folder, and not one of {', '.join(SHIPPED)}"
    )


class WorldCLIPReward(Reward):
    """Image-prompt agreement of a world CLIP (higher: the image matches the prompt better)."""

    name = "world-clip"
    # ReNO loss ``1 - cosine`` in [0, 2] (with ``scaled=True`` the score is ~logit_scale larger)
    loss_offset = 1.0
    default_weight = 1.0

    def __init__(
        self,
        name_or_path: str | Path | WorldCLIPModel = "world-clip",
        device: str | torch.device | None = None,
        scaled: bool = False,
        text_cache_size: int = 4096,
    ):
        super().__init__()
        if isinstance(name_or_path, WorldCLIPModel):
            model = name_or_path
            self.source = "<model>"
        else:
            src = resolve_model_dir(name_or_path)
            model = WorldCLIPModel.from_pretrained(src)
            self.source = str(src)
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.scaled = scaled
        self.text_cache_size = text_cache_size
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    def train(self, mode: bool = True):  # the reward stays in eval mode
        return super().train(False)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised prompt embeddings `[B, D]` (float32, cached per prompt and device).

        Each prompt is encoded on its own: a batched encoding differs in the last bits with the
        batch's other prompts, and the cache would make scores depend on which prompts came
        earlier (a resumed training run would then drift from the uninterrupted one)."""
        dev = self.device
        missing = [p for p in dict.fromkeys(prompts) if (str(dev), p) not in self._text_cache]
        if missing:
            emb = torch.cat([F.normalize(self.model.encode_text([p]).float(), dim=-1) for p in missing])
            if len(self._text_cache) + len(missing) > self.text_cache_size:
                self._text_cache.clear()
            for p, e in zip(missing, emb, strict=True):
                self._text_cache[(str(dev), p)] = e
        return torch.stack([self._text_cache[(str(dev), p)] for p in prompts])

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda(): cached embeddings are per device
        self._text_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Scores `[B]` float32: cosine (or logit-scaled cosine) of image and prompt embeddings."""
        check_inputs(images, prompts)
        images = images.to(self.device, torch.float32)
        with torch.autocast(device_type=self.device.type, enabled=False):
            img = F.normalize(self.model.encode_image(images).float(), dim=-1)
            score = (img * self.text_embeddings(list(prompts))).sum(-1)
            if self.scaled:
                score = score * self.model.logit_scale.float()
        return score.float()

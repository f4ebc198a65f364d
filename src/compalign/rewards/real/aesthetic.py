"""`LaionAestheticReward`: LAION's improved aesthetic predictor, an MLP on the L2-normalised CLIP
ViT-L/14 image embedding (scores ~1-10, ordinary images ~5-6; the prompt is ignored). ReNO's loss is
``10 - score``, off by default (weight 0).

The CLIP image tower is transformers' ``CLIPVisionModelWithProjection`` (default
``openai/clip-vit-large-patch14``, hub id or local folder with its ``preprocessor_config.json``); the
head is a ``torch.save`` state dict with keys ``layers.{0,2,4,6,7}.{weight,bias}``
(``sac+logos+ava1-l14-linearMSE.pth`` or ``ava+logos-l14-linearMSE.pth`` of
improved-aesthetic-predictor), from a local path or a hub file (default: ``aesthetic-model.pth`` of
``trl-lib/ddpo-aesthetic-predictor``, the mirror TRL's DDPO example loads).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..base import check_inputs
from .common import MLPHead, RealReward, hub_file, load_torch_state_dict, normalize, resolve_dtype
from .preprocess import PreprocessConfig, clip_preprocess
from .sources import hub_options, resolve_source

CLIP_L14 = "openai/clip-vit-large-patch14"
AESTHETIC_REPO = "trl-lib/ddpo-aesthetic-predictor"
AESTHETIC_FILE = "aesthetic-model.pth"


class LaionAestheticReward(RealReward):
    """``MLP(normalise(CLIP ViT-L/14 image embedding))``; prompts are checked but not used.

    Args:
        head: the MLP state dict file, or ``None`` for ``hub_repo`` / ``hub_filename``.
        clip_model: hub id or folder of a ``CLIPVisionModelWithProjection`` (a full ``CLIPModel``
            folder works too) with its ``preprocessor_config.json``; ``clip=FOLDER`` in a spec.
            Local paths are read offline; one that does not exist is a `FileNotFoundError`.
        device, dtype, gradient_checkpointing, frozen, cache_dir, local_files_only: as in
            `CLIPScoreReward`.
    """

    name = "aesthetic"
    loss_offset = 10.0
    default_weight = 0.0
    source_options = {"clip": "clip_model"}
    """``aesthetic:HEAD.pth,clip=FOLDER``: the head file and the CLIP folder, both offline."""

    def __init__(
        self,
        head: str | Path | None = None,
        clip_model: str | Path = CLIP_L14,
        *,
        hub_repo: str = AESTHETIC_REPO,
        hub_filename: str = AESTHETIC_FILE,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        frozen: bool = True,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ):
        super().__init__()
        from transformers import AutoConfig, CLIPVisionModelWithProjection  # lazy: loads transformers

        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        if head is not None:
            head, _ = resolve_source(head, "aesthetic head file")
        clip_model, clip_local = resolve_source(clip_model, "aesthetic CLIP model")
        clip_hub = hub_options(clip_local, hub)
        head_file = hub_file(hub_repo, hub_filename, **hub) if head is None else Path(head)
        torch_dtype = resolve_dtype(dtype)
        self.source = str(head_file)
        config = AutoConfig.from_pretrained(clip_model, **clip_hub)
        if hasattr(config, "vision_config"):  # a full CLIP folder: its vision tower and projection
            config.vision_config.projection_dim = config.projection_dim
            config = config.vision_config
        self.model = CLIPVisionModelWithProjection.from_pretrained(
            clip_model, config=config, dtype=torch_dtype, **clip_hub
        )
        self.preprocess_config = PreprocessConfig.from_pretrained(clip_model, **clip_hub)
        self.head = MLPHead.from_state_dict(load_torch_state_dict(head_file))
        dim = int(self.model.config.projection_dim)
        if self.head.input_size != dim:
            raise ValueError(
                f"aesthetic head expects {self.head.input_size}-d embeddings, {clip_model} gives {dim}-d"
            )
        self._finish(
            device=device,
            dtype=torch_dtype,
            frozen=frozen,
            checkpointed=(self.model,) if gradient_checkpointing else (),
        )

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float32 CLIP image embeddings `[B, D]`."""
        pixels = clip_preprocess(images.to(self.device), self.preprocess_config).to(self.dtype)
        return normalize(self.model(pixel_values=pixels).image_embeds)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        if images.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        emb = self.image_embeddings(images)
        return self.head(emb.to(self.dtype)).squeeze(-1).float()

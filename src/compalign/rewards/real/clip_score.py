"""`CLIPScoreReward`: CLIP image-text agreement, ``logit_scale.exp() * cos(image, prompt)``.

The model is a transformers ``CLIPModel`` given by hub id or local folder (default LAION's
CLIP ViT-H-14, the one ReNO uses); the tokenizer and the preprocessing settings come from
`processor` (default: the model's own folder). ReNO's loss is ``100 - score`` with weight 0.01
(off by default there).

Images `[B, 3, H, W]` in [0, 1] at any size are preprocessed differentiably (shorter side resized,
center crop, CLIP normalisation as in the model's ``preprocessor_config.json``); the score is a
float32 `[B]`, differentiable in the images. Prompt embeddings are cached while the reward is frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..base import check_inputs
from .common import RealReward, normalize, resolve_dtype
from .preprocess import PreprocessConfig, clip_preprocess
from .sources import hub_options, resolve_source

LAION_CLIP_H14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class CLIPScoreReward(RealReward):
    """``logit_scale.exp() * cos(image embedding, prompt embedding)`` of a transformers CLIP model.

    Args:
        model: hub id or local folder of a ``CLIPModel`` (``save_pretrained`` layout).
        processor: hub id or folder with the tokenizer and ``preprocessor_config.json``
            (default: `model` when it is such a folder or when the class has no default processor);
            ``clip:MODEL,processor=FOLDER`` in a spec. Local folders are read offline; a path that
            does not exist is a `FileNotFoundError` naming it.
        device, dtype: where and in which precision (``fp32``/``fp16``/``bf16``) the model runs;
            scores are float32 either way.
        gradient_checkpointing: recompute the backbone's activations in the backward pass.
        frozen: no parameter requires grad and the model stays in eval mode (default).
        cache_dir, local_files_only: passed to the hub downloads.
    """

    name = "clip"
    loss_offset = 100.0
    default_weight = 0.01
    default_model = LAION_CLIP_H14
    default_processor: str | None = None  # None: the model's own folder
    source_options = {"processor": "processor"}
    """Options of a ``NAME:SOURCE,KEY=VALUE`` spec, and the argument each sets."""

    def __init__(
        self,
        model: str | Path | None = None,
        processor: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        frozen: bool = True,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel  # lazy: loads transformers

        model, model_local = resolve_source(model or self.default_model, f"{self.name} model")
        if processor is None:
            # a local model folder with its own preprocessing and tokenizer files uses them
            own = Path(model).is_dir() and (Path(model) / "preprocessor_config.json").is_file()
            processor = model if own else (self.default_processor or model)
        processor, processor_local = resolve_source(processor, f"{self.name} processor")
        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        torch_dtype = resolve_dtype(dtype)
        self.source = model
        self.model = CLIPModel.from_pretrained(model, dtype=torch_dtype, **hub_options(model_local, hub))
        self.tokenizer = AutoTokenizer.from_pretrained(processor, **hub_options(processor_local, hub))
        self.preprocess_config = PreprocessConfig.from_pretrained(
            processor, **hub_options(processor_local, hub)
        )
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self._finish(
            device=device,
            dtype=torch_dtype,
            frozen=frozen,
            checkpointed=(self.model,) if gradient_checkpointing else (),
        )

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float32 image embeddings `[B, D]` (differentiable)."""
        pixels = clip_preprocess(images.to(self.device), self.preprocess_config).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return normalize(self.model.visual_projection(pooled))

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.model.text_model(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        return normalize(self.model.text_projection(out.pooler_output))

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised float32 prompt embeddings `[B, D]` (cached while frozen)."""
        return self._cached_text(list(prompts), self._encode_text)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        if images.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
        return (self.model.logit_scale.float().exp() * cos).float()

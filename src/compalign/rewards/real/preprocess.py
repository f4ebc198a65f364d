"""Differentiable CLIP-style image preprocessing for the real reward models.

The libraries' own preprocessing (transformers' ``CLIPImageProcessor``, open_clip's ``preprocess``
transform, ImageReward's ``_transform``) works on PIL images and is not differentiable. Here the
same steps run on a tensor ``[B, 3, H, W]`` in [0, 1], so a reward's gradient reaches the image:

1. resize so the shorter side equals ``size`` (the longer side becomes ``int(size * long / short)``,
   as in both libraries), with antialiased bicubic or bilinear interpolation (torch's antialiased
   kernels use PIL's cubic coefficient, a = -0.5, so they follow PIL closely);
2. center crop to ``crop_size`` (top/left offset ``(H - h) // 2``, as transformers does);
3. normalise with the model's mean and std.

No clamping after the resize (PIL clips bicubic overshoot to [0, 255]; clamping here would zero the
gradient of saturated pixels), hence small differences at sharp edges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# CLIP's (OpenAI) normalisation, used by ViT-H-14 (open_clip / HPSv2), BLIP / ImageReward and PickScore
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling codes (as stored in a transformers ``preprocessor_config.json``)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_SUPPORTED = ("bicubic", "bilinear")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its pixels: shorter side resized to `size`, center crop to `crop_size`
    ``(height, width)``, normalised with `mean` / `std`."""

    size: int = 224
    crop_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = field(default=OPENAI_CLIP_MEAN)
    std: tuple[float, float, float] = field(default=OPENAI_CLIP_STD)
    interpolation: str = "bicubic"
    do_center_crop: bool = True

    def __post_init__(self):
        if self.interpolation not in _SUPPORTED:
            raise ValueError(
                f"interpolation must be one of {', '.join(_SUPPORTED)}, got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")

    @classmethod
    def square(cls, size: int, **kwargs) -> PreprocessConfig:
        """Shorter side to `size`, center crop `size` x `size` (open_clip / ImageReward style)."""
        return cls(size=int(size), crop_size=(int(size), int(size)), **kwargs)

    @classmethod
    def from_processor_dict(cls, d: dict) -> PreprocessConfig:
        """From a transformers image processor's dict (``preprocessor_config.json``)."""
        size = d.get("size", 224)
        if isinstance(size, dict):
            if "shortest_edge" in size:
                size = size["shortest_edge"]
            elif "height" in size and "width" in size and size["height"] == size["width"]:
                size = size["height"]
            else:
                raise ValueError(f"unsupported image processor size {size!r} (need a shortest edge)")
        crop = d.get("crop_size", size)
        if isinstance(crop, dict):
            crop = (int(crop["height"]), int(crop["width"]))
        elif isinstance(crop, (int, float)):
            crop = (int(crop), int(crop))
        else:
            crop = (int(crop[0]), int(crop[1]))
        return cls(
            size=int(size),
            crop_size=crop,
            mean=tuple(float(v) for v in d.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(float(v) for v in d.get("image_std", OPENAI_CLIP_STD)),
            interpolation=_resample_name(d.get("resample", 3)),
            do_center_crop=bool(d.get("do_center_crop", True)),
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **hub_kwargs) -> PreprocessConfig:
        """From a model folder or hub id holding a ``preprocessor_config.json``."""
        path = Path(name_or_path)
        if path.is_dir():
            file = path / "preprocessor_config.json"
            if not file.is_file():
                raise FileNotFoundError(f"{path} has no preprocessor_config.json")
            return cls.from_processor_dict(json.loads(file.read_text()))
        from transformers.image_processing_base import ImageProcessingMixin  # lazy: loads transformers

        d, _ = ImageProcessingMixin.get_image_processor_dict(str(name_or_path), **hub_kwargs)
        return cls.from_processor_dict(d)


def _resample_name(resample) -> str:
    if isinstance(resample, str):
        name = resample.lower().rsplit(".", 1)[-1]
    else:
        name = _PIL_RESAMPLE.get(int(resample), str(resample))
    if name not in _SUPPORTED:
        raise ValueError(f"unsupported resampling {resample!r} (supported: {', '.join(_SUPPORTED)})")
    return name


def resize_shorter_side(images: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize `[B, C, H, W]` so that min(H, W) == `size` (differentiable, antialiased)."""
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if (new_h, new_w) == (h, w):
        return images
    return F.interpolate(images, size=(new_h, new_w), mode=interpolation, align_corners=False, antialias=True)


def center_crop(images: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
    """Center crop `[B, C, H, W]` to ``(h, w)`` (zero-padding first where the image is smaller)."""
    ch, cw = crop_size
    h, w = images.shape[-2:]
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = images.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[..., top : top + ch, left : left + cw]


def clip_preprocess(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Images `[B, 3, H, W]` in [0, 1] -> normalised float32 pixel values at the model's size."""
    x = images.float()
    x = resize_shorter_side(x, config.size, config.interpolation)
    if config.do_center_crop:
        x = center_crop(x, config.crop_size)
    mean = torch.tensor(config.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std

"""Pretrained reward models used by ReNO, as differentiable `Reward`s (see `compalign.rewards.base`).

- `CLIPScoreReward` (``clip``): LAION CLIP ViT-H-14, ``logit_scale * cos``; loss ``100 - s``, weight 0.01.
- `PickScoreReward` (``pickscore``): PickScore v1; loss ``30 - s``, weight 0.05.
- `HPSv2Reward` (``hpsv2``): HPS v2.1 (open_clip ViT-H-14 weights run by transformers); loss ``1 - s``,
  weight 5.0.
- `ImageRewardReward` (``imagereward``): ImageReward v1.0 (BLIP); loss ``2 - s``, weight 1.0.
- `LaionAestheticReward` (``aesthetic``): LAION aesthetic MLP on CLIP ViT-L/14; loss ``10 - s``, weight 0.

Each takes a local path or a hub id / file (downloaded on first use), ``device``, ``dtype``
(``fp32``/``fp16``/``bf16``), ``gradient_checkpointing`` and ``frozen``. Build them by name with
`compalign.rewards.registry.create_reward`. Classes are imported lazily (transformers is heavy).
"""

from __future__ import annotations

from ..._lazy import lazy_getattr

_CLASSES = {
    "CLIPScoreReward": "clip_score",
    "PickScoreReward": "pickscore",
    "HPSv2Reward": "hpsv2",
    "ImageRewardReward": "image_reward",
    "LaionAestheticReward": "aesthetic",
    "PreprocessConfig": "preprocess",
    "clip_preprocess": "preprocess",
}

__all__ = sorted(_CLASSES)

__getattr__ = lazy_getattr(__name__, _CLASSES)

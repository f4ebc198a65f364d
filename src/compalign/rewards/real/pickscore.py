"""`PickScoreReward`: PickScore v1, ``logit_scale.exp() * cos(image, prompt)`` of a CLIP ViT-H-14
fine-tuned on Pick-a-Pic preferences (scores are ~20-23 for ordinary images).

The model is ``yuvalkirstain/PickScore_v1`` (a transformers ``CLIPModel``) with the tokenizer and
preprocessing of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as PickScore's own inference code does;
both can be local folders. ReNO's loss is ``30 - score`` with weight 0.05.
"""

from __future__ import annotations

from .clip_score import LAION_CLIP_H14, CLIPScoreReward

PICKSCORE_V1 = "yuvalkirstain/PickScore_v1"


class PickScoreReward(CLIPScoreReward):
    """PickScore: same scoring as `CLIPScoreReward` (``model``: PickScore weights, ``processor``:
    the LAION ViT-H-14 tokenizer and preprocessing); see there for the options."""

    name = "pickscore"
    loss_offset = 30.0
    default_weight = 0.05
    default_model = PICKSCORE_V1
    default_processor = LAION_CLIP_H14

"""Feedback learning: fine-tune a text-to-image model against weighted rewards (ReFL, IterComp's
multi-reward base-model training), for world models and Stable-Diffusion-like pipelines.

- `FeedbackConfig` (``config.py``): base model, rewards and caps, prompts, ReFL schedule,
  regulariser, full fine-tune or LoRA, optimisation and run settings.
- `train_feedback` (``train.py``): the training loop (checkpoints, exact resume, time limit).
- ``compalign feedback train`` (``cli.py``).
"""

from __future__ import annotations

from .._lazy import lazy_getattr
from .config import FeedbackConfig

__all__ = ["FeedbackConfig", "train_feedback"]


__getattr__ = lazy_getattr(__name__, {"train_feedback": "train"})  # loads diffusers and transformers

"""Feedback learning: fine-tune a text-to-image model against weighted rewards (ReFL, IterComp's
multi-reward base-model training), for world models and Stable-Diffusion-like pipelines.

- `FeedbackConfig` (``config.py``): base model, rewards and caps, prompts, ReFL schedule,
  regulariser, full fine-tune or LoRA, optimisation and run settings.
- `train_feedback` (``train.py``): the training loop (checkpoints, exact resume, time limit).
- ``compalign feedback train`` (``cli.py``).
"""

from __future__ import annotations

from .config import FeedbackConfig

__all__ = ["FeedbackConfig", "train_feedback"]


def __getattr__(name: str):
    if name == "train_feedback":
        from .train import train_feedback  # lazy: loads diffusers and transformers

        return train_feedback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The reward contract shared by every reward model (learned world rewards, later real ones).

A `Reward` is a `torch.nn.Module` with a `name` and
``forward(images, prompts) -> scores``:

- `images`: a tensor ``[B, 3, H, W]``, floating point, values in ``[0, 1]`` (any resolution the
  reward supports; any float dtype, any device the reward was moved to);
- `prompts`: a list of ``B`` strings, one per image;
- returns: a float32 tensor ``[B]``, one score per image, **higher is better**, differentiable
  with respect to `images` (so ReNO can optimise the noise that produced them).

Rewards are frozen (no trainable parameters are expected to change while they score).
"""

from __future__ import annotations

import torch

# values this far outside [0, 1] are a caller bug (e.g. images still in [-1, 1] or in [0, 255]);
# small overshoots of a generator's output are tolerated
RANGE_TOLERANCE = 0.25


class Reward(torch.nn.Module):
    """Base class: ``forward(images [B, 3, H, W] in [0, 1], prompts: list[str]) -> [B]`` (higher is
    better, differentiable in `images`, float32)."""

    name: str = "reward"
    # ReNO turns a score into a bounded loss ``loss_offset - score`` (lower is better) and sums the
    # rewards' losses with these weights; real rewards override both with ReNO's values
    loss_offset: float = 0.0
    default_weight: float = 1.0

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def loss(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """ReNO's per-image reward loss ``loss_offset - forward(images, prompts)`` (float32 `[B]`,
        lower is better)."""
        return self.loss_offset - self(images, prompts)


def check_inputs(images, prompts) -> None:
    """Raise a `ValueError` naming the problem when `(images, prompts)` break the reward contract."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have 4 dimensions [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 channels in dimension 1 ([B, 3, H, W]), got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor with values in [0, 1], got {images.dtype}")
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) != images.shape[0]:
        raise ValueError(
            f"got {images.shape[0]} images but {len(prompts)} prompts; need one prompt per image"
        )
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings; prompt {bad[0]} is {type(prompts[bad[0]]).__name__}")
    if images.numel():
        with torch.no_grad():
            lo, hi = float(images.min()), float(images.max())
        if lo != lo or hi != hi:  # NaN
            raise ValueError("images contain NaN values")
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"image values must be in [0, 1]; got min {lo:.3g}, max {hi:.3g} "
                "(images in [-1, 1] or [0, 255] must be rescaled first)"
            )

"""The learning-rate schedule of every trainer: linear warm-up, then cosine decay to a floor (or
constant)."""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    min_ratio: float = 0.0,
    schedule: str = "cosine",
    time_frac: float = 0.0,
) -> float:
    """Learning-rate multiplier at `step` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` over the first `warmup_steps`; then ``constant``
    (1) or ``cosine`` from 1 down to `min_ratio` at `total_steps`. `time_frac` (elapsed time over a
    time limit) moves the cosine at least that far, so the rate has decayed when the time is up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be cosine or constant, got {schedule!r}")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(progress, time_frac))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

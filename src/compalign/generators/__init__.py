"""Text-to-image generators: one contract for world models and real diffusers pipelines.

`create_generator(name)` loads a shipped world model by name (``world-base``, ``world-onestep``,
...) with no network; `Generator.generate(prompts, seeds=...)` returns images `[B, 3, H, W]` in
`[0, 1]`, and differentiable (one/two-step) generators also offer `generate_from_noise`.
"""

from .base import Generator, noise_for_seeds, seeds_for
from .registry import (
    ModelNotTrainedError,
    create_generator,
    list_generators,
    register_generator,
    shipped_models,
)

__all__ = [
    "Generator",
    "ModelNotTrainedError",
    "create_generator",
    "list_generators",
    "noise_for_seeds",
    "register_generator",
    "seeds_for",
    "shipped_models",
]

"""The generator contract shared by world models and real diffusers pipelines.

A generator turns prompts plus initial noise into images `[B, 3, H, W]` float in `[0, 1]`.
Noise is drawn per image from its seed on the CPU (`noise_for_seeds`), so the image for
(prompt, seed) is the same whatever the batch it is generated in and whatever the device.

One- and few-step generators are `differentiable`: `generate_from_noise(noise, prompts)` keeps
the autograd graph from the noise to the image, which is what noise optimisation (ReNO) needs;
`noise_shape(batch)` tells it what to optimise.

Extension point for real pipelines (SD-Turbo, SDXL-Turbo, ...): subclass `Generator`
(latent noise shape, decode through the VAE inside `generate_from_noise`) and register a factory
with `compalign.generators.registry.register_generator`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


def noise_for_seeds(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """`[len(seeds), *shape]` standard Gaussian noise, image i drawn from its own seed on the CPU."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    )


def seeds_for(batch: int, seed: int | Sequence[int] | None) -> list[int]:
    """Per-image seeds: an int `s` means `s, s+1, ...`; None draws fresh random seeds."""
    if seed is None:
        return [int(s) for s in torch.randint(0, 2**31 - 1, (batch,))]
    if isinstance(seed, int):
        return [seed + i for i in range(batch)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    return seeds


class Generator(ABC):
    """A text-to-image generator: prompts (+ seeds or initial noise) -> images in `[0, 1]`."""

    name: str = "generator"
    differentiable: bool = False
    """True when `generate_from_noise` is cheap enough to back-propagate through (<= 2 steps)."""

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or torch.float32

    # ------------------------------------------------------------------ noise
    @abstractmethod
    def noise_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of the initial noise for `batch` images (latent shape for latent models)."""

    @property
    def resolution(self) -> int:
        """Side of the (square) output images in pixels."""
        raise NotImplementedError

    def sample_noise(self, batch: int, seed: int | Sequence[int] | None = None) -> torch.Tensor:
        """Initial noise on `self.device`; `seed` as in `seeds_for` (image i gets seed + i)."""
        seeds = seeds_for(batch, seed)
        return noise_for_seeds(seeds, self.noise_shape(1)[1:]).to(self.device, self.dtype)

    # ------------------------------------------------------------------ generation
    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        seeds: int | Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        **settings,
    ) -> torch.Tensor:
        """Images `[B, 3, H, W]` in `[0, 1]` (no gradient). `noise` wins over `seeds`."""

    def generate_from_noise(self, noise: torch.Tensor, prompts: Sequence[str], **settings) -> torch.Tensor:
        """Images `[B, 3, H, W]` in `[0, 1]`, differentiable with respect to `noise`."""
        raise NotImplementedError(f"{type(self).__name__} is not differentiable")

    def settings(self) -> dict:
        """Default sampling settings (steps, guidance, ...), for records."""
        return {}

    # ------------------------------------------------------------------ memory and speed
    checkpoint_mode: str = "off"
    """Gradient checkpointing: ``on`` (every component of `checkpoint_modules`), ``off``, or
    ``auto`` (noise optimisation checkpoints only the components the free memory requires)."""
    checkpointed: tuple[str, ...] = ()
    """The components checkpointed now."""

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """Components that can recompute their activations in the backward pass, by name (largest
        first, e.g. ``denoiser``, ``vae``). Only the differentiable path matters."""
        return {}

    def set_gradient_checkpointing(self, mode: bool | str | Sequence[str] = True) -> None:
        """``True``/``"on"``: checkpoint every component; ``False``/``"off"``: none; ``"auto"``: none
        until noise optimisation decides from the free memory; a list of component names: those."""
        modules = self.checkpoint_modules()
        if mode is True or mode == "on":
            self.checkpoint_mode, names = "on", list(modules)
        elif mode is False or mode is None or mode == "off":
            self.checkpoint_mode, names = "off", []
        elif mode == "auto":
            self.checkpoint_mode, names = "auto", []
        elif isinstance(mode, str):
            raise ValueError(f"gradient checkpointing must be auto, on or off, got {mode!r}")
        else:
            names = list(mode)
            unknown = [n for n in names if n not in modules]
            if unknown:
                raise ValueError(f"no component {unknown[0]!r} to checkpoint; known: {', '.join(modules)}")
        self._checkpoint(names)

    def _checkpoint(self, names: Sequence[str]) -> None:
        done = []
        for name, m in self.checkpoint_modules().items():
            if not getattr(m, "_supports_gradient_checkpointing", False):
                continue
            if name in names:
                m.enable_gradient_checkpointing()
                done.append(name)
            else:
                m.disable_gradient_checkpointing()
        self.checkpointed = tuple(done)

    def compile(self, **options) -> None:
        """`torch.compile` the modules that run on every generation (in place; `options` go to
        `torch.compile`, e.g. ``backend``, ``mode``)."""
        for m in self.checkpoint_modules().values():
            target = getattr(m, "decoder", None) if hasattr(m, "decode") else m  # a VAE: its decoder
            (target if isinstance(target, torch.nn.Module) else m).compile(**options)
        self.compiled = True

    compiled: bool = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype})"


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")

"""Real text-to-image pipelines (diffusers) behind the `Generator` contract.

Importing this package registers, with `compalign.generators.registry.register_generator`, one
prefix per family; ``create_generator("<prefix>:<hub id or local folder>")`` loads it, and an
empty rest (``"sd-turbo:"``) means the family's default hub id.

One step, differentiable (ReNO):

=============== ============================================ ========== ========= =========
prefix          default model                                 size       timestep  guidance
=============== ============================================ ========== ========= =========
sd-turbo        stabilityai/sd-turbo                          512        999       0
sdxl-turbo      stabilityai/sdxl-turbo                        512        999       0
pixart-dmd      PixArt-XL-2-1024-MS + Alpha-DMD-XL-2-512x512  512        400       1 (none)
hyper-sdxl      SDXL base + Hyper-SDXL-1step-Unet             1024       800       0
flux-schnell    black-forest-labs/FLUX.1-schnell              512        sigma 1   none
=============== ============================================ ========== ========= =========

Multi-step, through the pipeline call (galleries): ``sd``, ``sdxl``, ``sd3``, ``flux`` (dev style).

Common options (keyword arguments of `create_generator`): ``dtype`` (fp32 / fp16 / bf16),
``device``, ``height`` / ``width``, ``num_inference_steps``, ``guidance_scale``, ``offload``
(None; ``"model"``: one-step generators keep the text encoders on the CPU except while encoding a
new prompt, multi-step ones use diffusers' model offload; ``"sequential"``: diffusers' sequential
offload), hub options (``cache_dir``, ``revision``, ``variant``, ``local_files_only``), ``vae``
(a replacement VAE, e.g. ``madebyollin/sdxl-vae-fp16-fix``). One-step only: ``timestep``,
``vae_dtype`` (default: float32 where the VAE needs it), ``gradient_checkpointing`` (denoiser and
VAE decoder: ``"on"``, ``"off"``, or the default ``"auto"``: noise optimisation checkpoints only the
components the free memory requires, see `compalign.noise_optimization.memory`).
"""

from __future__ import annotations

from ...training.environment import parse_dtype
from ..adapters import register_generator
from .flux import FluxGenerator, FluxSchnellGenerator
from .generator import DiffusersGenerator
from .multistep import PipelineGenerator
from .onestep import OneStepGenerator
from .pixart import PixArtDMDGenerator
from .sd3 import StableDiffusion3Generator
from .stable_diffusion import (
    HyperSDXLGenerator,
    SDTurboGenerator,
    SDXLTurboGenerator,
    StableDiffusionGenerator,
    StableDiffusionXLGenerator,
)

ONE_STEP = (
    SDTurboGenerator,
    SDXLTurboGenerator,
    PixArtDMDGenerator,
    HyperSDXLGenerator,
    FluxSchnellGenerator,
)
MULTI_STEP = (StableDiffusionGenerator, StableDiffusionXLGenerator, StableDiffusion3Generator, FluxGenerator)
GENERATORS: dict[str, type[DiffusersGenerator]] = {cls.family: cls for cls in ONE_STEP + MULTI_STEP}


def register_all() -> None:
    """Register every family's prefix (idempotent; done on import)."""
    for family, cls in GENERATORS.items():
        register_generator(family, cls.factory)


register_all()

__all__ = [
    "GENERATORS",
    "DiffusersGenerator",
    "FluxGenerator",
    "FluxSchnellGenerator",
    "HyperSDXLGenerator",
    "OneStepGenerator",
    "PipelineGenerator",
    "PixArtDMDGenerator",
    "SDTurboGenerator",
    "SDXLTurboGenerator",
    "StableDiffusion3Generator",
    "StableDiffusionGenerator",
    "StableDiffusionXLGenerator",
    "parse_dtype",
    "register_all",
]

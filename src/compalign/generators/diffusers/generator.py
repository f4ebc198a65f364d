"""`DiffusersGenerator`: the common base of the diffusers-backed generators.

It holds a diffusers pipeline, its placement (device, CPU offload), its image size and the noise
shape. Two kinds of generator build on it:

- `OneStepGenerator` (``onestep.py``): one-step (or few-step) distilled models used by ReNO, with
  the denoising step written out in torch so that `generate_from_noise` is differentiable;
- `PipelineGenerator` (``multistep.py``): multi-step models used to build galleries, sampled by
  the diffusers pipeline call.

Noise convention (both kinds): the noise `z` is standard Gaussian of shape `noise_shape(batch)`
(the unpacked latent), and the image for a given `z` is the one the diffusers pipeline makes from
``latents=z`` (packed for Flux); a seed gives the same image whatever the batch (`noise_for_seeds`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...training.environment import parse_dtype
from ..base import Generator, noise_for_seeds, seeds_for
from .loading import freeze, load_pipeline, load_vae, pop_hub_kwargs

OFFLOAD_MODES = (None, "model", "sequential")


class DiffusersGenerator(Generator):
    """Common base: a diffusers pipeline, its placement (device / CPU offload) and noise shape."""

    family: str = "diffusers"
    """Registry prefix (``sd-turbo``, ``sdxl``, ...)."""
    pipeline_class: str = "DiffusionPipeline"
    default_model: str = ""
    default_steps: int = 1
    default_guidance: float = 0.0
    default_size: int | None = None
    """Default image side; None: the denoiser's `sample_size` times the VAE scale factor."""
    text_encoder_names: tuple[str, ...] = ("text_encoder",)
    one_step_offload: bool = False
    """Offload ``model`` handled here (text encoders only) rather than by diffusers' hooks."""

    def __init__(
        self,
        pipe,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        offload: str | None = None,
        batch_size: int = 4,
    ):
        dtype = parse_dtype(dtype) or self._denoiser_of(pipe).dtype
        super().__init__(device, dtype)
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        self.pipe = pipe
        self.name = name or self.family
        self.offload = offload
        self.batch_size = int(batch_size)
        self.num_inference_steps = int(num_inference_steps or self.default_steps)
        self.guidance_scale = float(self.default_guidance if guidance_scale is None else guidance_scale)
        side = self.default_size or self._config_size()
        self.height = int(height or side)
        self.width = int(width or height or side)
        m = 2 * self.vae_scale_factor if self.packed else self.vae_scale_factor
        if self.height % m or self.width % m:
            raise ValueError(f"height and width must be multiples of {m}, got {self.height}x{self.width}")
        if self._denoiser_of(pipe).dtype != self.dtype:
            pipe.to(dtype=self.dtype)
        freeze(*[getattr(pipe, k, None) for k in pipe.components])
        pipe.set_progress_bar_config(disable=True)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source: str, dtype: torch.dtype, hub: dict, options: dict, **components):
        """The diffusers pipeline for `source`; consumes the loading options it knows from `options`
        (here ``vae``: a replacement VAE, repo id / folder / module); `components` go to
        `from_pretrained` (modules replacing the pipeline's, or its init arguments)."""
        import diffusers  # lazy: loads diffusers

        vae = options.pop("vae", None)
        if vae is not None:
            components["vae"] = load_vae(vae, dtype, **hub) if isinstance(vae, (str, Path)) else vae
        return load_pipeline(getattr(diffusers, cls.pipeline_class), source, dtype, **hub, **components)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs,
    ):
        """Load `source` (a hub id or a local folder; default `default_model`) and wrap it.

        Hub options (`cache_dir`, `revision`, `variant`, `use_safetensors`, `local_files_only`,
        `token`) go to `from_pretrained`; the rest to the generator (`height`, `offload`, ...)."""
        source = str(source) if source else cls.default_model
        dtype = parse_dtype(dtype) or torch.float32
        hub = pop_hub_kwargs(kwargs)
        pipe = cls.load(source, dtype, hub, kwargs)
        name = kwargs.pop("name", None) or (
            cls.family if source == cls.default_model else f"{cls.family}:{source}"
        )
        return cls(pipe, name=name, device=device, dtype=dtype, **kwargs)

    @classmethod
    def factory(cls, rest: str = "", device=None, dtype=None, **kwargs):
        """Registry factory for ``<family>:<hub id or folder>`` (an empty rest: `default_model`)."""
        return cls.from_pretrained(rest or None, device=device, dtype=dtype, **kwargs)

    # ------------------------------------------------------------------ components
    @staticmethod
    def _denoiser_of(pipe) -> torch.nn.Module:
        return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer

    @property
    def denoiser(self) -> torch.nn.Module:
        return self._denoiser_of(self.pipe)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for k in self.text_encoder_names if (m := getattr(self.pipe, k, None)) is not None]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    packed: bool = False
    """Flux: the denoiser sees 2x2 patches of the latent (`noise_shape` stays unpacked)."""

    @property
    def latent_channels(self) -> int:
        c = self.denoiser.config.in_channels
        return c // 4 if self.packed else c

    def _config_size(self) -> int:
        size = getattr(self.denoiser.config, "sample_size", None)
        if isinstance(size, (list, tuple)):
            size = size[0]
        return int(size) * self.vae_scale_factor if size else 1024

    def place(self) -> DiffusersGenerator:
        """Move the pipeline to `self.device` following `self.offload` (a no-op offload on the CPU)."""
        if self.offload is None or self.device.type == "cpu":
            self.pipe.to(self.device)
        elif self.offload == "sequential":
            self.pipe.enable_sequential_cpu_offload(device=self.device)
        elif self.one_step_offload:  # "model": text encoders on the CPU except while encoding
            for m in self.pipe.components.values():
                if isinstance(m, torch.nn.Module):
                    m.to("cpu" if m in self.text_encoders else self.device)
        else:
            self.pipe.enable_model_cpu_offload(device=self.device)
        return self

    # ------------------------------------------------------------------ noise
    def noise_shape(self, batch: int = 1, height: int | None = None, width: int | None = None):
        h, w = (height or self.height), (width or self.width or height)
        f = self.vae_scale_factor
        if self.packed:
            return (batch, self.latent_channels, 2 * (h // (2 * f)), 2 * (w // (2 * f)))
        return (batch, self.latent_channels, h // f, w // f)

    @property
    def resolution(self) -> int:
        return self.height

    def _noise(self, prompts, seeds, noise, height=None, width=None) -> torch.Tensor:
        if noise is None:
            shape = self.noise_shape(1, height, width)[1:]
            noise = noise_for_seeds(seeds_for(len(prompts), seeds), shape)
        if noise.shape[0] != len(prompts):
            raise ValueError(f"noise batch {noise.shape[0]} != {len(prompts)} prompts")
        return noise

    def settings(self) -> dict:
        return {
            "model": self.name,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "dtype": str(self.dtype).removeprefix("torch."),
            "scheduler": type(self.pipe.scheduler).__name__,
            "offload": self.offload,
        }

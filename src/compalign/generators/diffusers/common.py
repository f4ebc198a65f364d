"""Shared machinery of the diffusers-backed generators.

Two kinds of generator live on top of a diffusers pipeline:

- `OneStepGenerator`: one-step (or few-step) distilled models used by ReNO. The denoising step is
  written out in torch (model call, then the scheduler's closed-form prediction of the clean
  latent), so `generate_from_noise` keeps the autograd graph from the noise to the image. Prompt
  embeddings are cached per prompt (the text encoders run once per prompt, without gradient).
- `PipelineGenerator`: multi-step models used to build galleries; `generate` calls the diffusers
  pipeline itself with latents built from `noise_for_seeds`, so a seed gives the same image whatever
  the batch.

Noise convention (both kinds): the noise `z` is standard Gaussian of shape `noise_shape(batch)`
(the unpacked latent), and the image for a given `z` is the one the diffusers pipeline makes from
``latents=z`` (packed for Flux). For variance-preserving (DDPM-discretised) models the one-step
sampler starts from the latent the pipeline starts from (`vp_sample`: `z` for DDPM / LCM,
``sqrt(1 - abar_t) * z`` for Euler with trailing spacing); for flow-matching models `z` is the
latent at sigma = 1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..base import Generator, noise_for_seeds, seeds_for
from ..world.generator import dtype_kwarg, quiet_loading

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

OFFLOAD_MODES = (None, "model", "sequential")

HUB_KEYS = ("cache_dir", "revision", "variant", "use_safetensors", "local_files_only", "token")
"""`from_pretrained` keyword arguments the factories pass through to diffusers."""


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or a name (``fp16``, ``bfloat16``, ``float32``, ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16")
    return DTYPES[key]


def is_local(source: str | Path) -> bool:
    return Path(str(source)).expanduser().exists()


def check_source(source: str | Path) -> None:
    """`FileNotFoundError` for a path that does not exist (``/x``, ``./x``, ``~/x``, ``a/b/c``),
    before diffusers tries it as a hub id; hub ids (``org/name``) pass."""
    text = str(source)
    if is_local(text):
        return
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        raise FileNotFoundError(f"folder {text} does not exist (and it is not a hub id: org/name)")


def hub_kwargs(source: str | Path, kwargs: dict) -> dict:
    """The hub keyword arguments in `kwargs`; a local folder never touches the network."""
    out = {k: kwargs[k] for k in HUB_KEYS if kwargs.get(k) is not None}
    if is_local(source):
        out.setdefault("local_files_only", True)
    return out


def pop_hub_kwargs(kwargs: dict) -> dict:
    return {k: kwargs.pop(k) for k in HUB_KEYS if k in kwargs}


def load_pipeline(pipeline_cls, source: str | Path, dtype: torch.dtype, **kwargs):
    """`pipeline_cls.from_pretrained(source)` in `dtype`, quietly, with the progress bar off."""
    check_source(source)
    source = str(Path(str(source)).expanduser()) if is_local(source) else str(source)
    components = {k: v for k, v in kwargs.items() if k not in HUB_KEYS}
    with quiet_loading():
        pipe = pipeline_cls.from_pretrained(
            source, **{dtype_kwarg(): dtype}, **hub_kwargs(source, kwargs), **components
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(model_cls, source: str | Path, subfolder: str | None, dtype: torch.dtype, **kwargs):
    """One model (VAE, UNet, transformer) from `source` (its `subfolder` if it has one)."""
    check_source(source)
    source = str(Path(str(source)).expanduser()) if is_local(source) else str(source)
    hub = hub_kwargs(source, kwargs)
    with quiet_loading():
        if subfolder and is_local(source) and not (Path(source) / subfolder).is_dir():
            subfolder = None  # a folder holding the model itself
        if subfolder:
            return model_cls.from_pretrained(source, subfolder=subfolder, **{dtype_kwarg(): dtype}, **hub)
        return model_cls.from_pretrained(source, **{dtype_kwarg(): dtype}, **hub)


def load_vae(source: str | Path, dtype: torch.dtype, **kwargs):
    """An `AutoencoderKL` from a folder/repo holding it at its root (``madebyollin/sdxl-vae-fp16-fix``)
    or in a ``vae`` subfolder (a whole pipeline)."""
    from diffusers import AutoencoderKL

    kwargs = {k: v for k, v in kwargs.items() if k != "variant"}  # VAE repos rarely ship variants
    if is_local(source):
        sub = None if (Path(str(source)).expanduser() / "config.json").is_file() else "vae"
        return load_model(AutoencoderKL, source, sub, dtype, **kwargs)
    try:
        return load_model(AutoencoderKL, source, None, dtype, **kwargs)
    except OSError:
        return load_model(AutoencoderKL, source, "vae", dtype, **kwargs)


def freeze(*modules) -> None:
    for m in modules:
        if isinstance(m, torch.nn.Module):
            m.eval()
            m.requires_grad_(False)


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
        import diffusers

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


# ---------------------------------------------------------------------------------------------------
# one-step, differentiable


def vp_clean_latent(scheduler, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> torch.Tensor:
    """The clean latent predicted at discrete timestep `t` of a variance-preserving schedule.

    Exactly the `pred_original_sample` of diffusers' DDPM / LCM ``step`` (including the config's
    `thresholding` / `clip_sample`), and the Euler schedulers' one, written for a `sample` in VP
    form (unit variance at large t). Computed in float32.
    """
    abar = scheduler.alphas_cumprod[int(t)].to(device=sample.device, dtype=torch.float32)
    x, out = sample.float(), model_output.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0 = (x - (1 - abar).sqrt() * out) / abar.sqrt()
    elif kind == "v_prediction":
        x0 = abar.sqrt() * x - (1 - abar).sqrt() * out
    elif kind == "sample":
        x0 = out
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False) and hasattr(scheduler, "_threshold_sample"):
        x0 = scheduler._threshold_sample(x0)
    elif getattr(cfg, "clip_sample", False):
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    return x0


def vp_sample(scheduler, noise: torch.Tensor, t: int) -> torch.Tensor:
    """The VP-form latent at timestep `t` that a diffusers pipeline starts from, given unit noise.

    DDPM / LCM start from the noise itself (`init_noise_sigma` 1). The Euler schedulers start from
    ``noise * init_noise_sigma`` in sigma form and feed the model ``x / sqrt(sigma^2 + 1)``: with
    ``linspace`` / ``trailing`` spacing `init_noise_sigma` is sigma_t itself, so the VP latent is
    ``noise * sqrt(1 - abar_t)`` (``leading``: sqrt(sigma^2 + 1), the VP latent is the noise)."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    if isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
        if scheduler.config.timestep_spacing in ("linspace", "trailing"):
            abar = scheduler.alphas_cumprod[int(t)].to(device=noise.device, dtype=torch.float32)
            return noise * (1 - abar).sqrt().to(noise.dtype)
    return noise


def one_step_latent(scheduler, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> torch.Tensor:
    """What a one-step sampler returns at timestep `t`: the predicted clean latent, through the
    consistency boundary condition ``c_out * x0 + c_skip * x_t`` for LCM-style schedulers (the
    `denoised` of `LCMScheduler.step`, which is also its `prev_sample` at the last step)."""
    x0 = vp_clean_latent(scheduler, model_output, sample, t)
    if hasattr(scheduler, "get_scalings_for_boundary_condition_discrete"):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(int(t))
        x0 = c_out * x0 + c_skip * sample.float()
    return x0


class OneStepGenerator(DiffusersGenerator):
    """A one-step distilled model: `generate_from_noise` is differentiable with respect to the noise.

    Subclasses implement `_encode_batch(prompts) -> tuple of [n, ...] tensors` (the cached prompt
    conditioning) and `_denoise(z, cond, guidance_scale, timestep, steps) -> clean latent`.
    """

    differentiable = True
    one_step_offload = True
    default_timestep: int = 999
    max_steps: int = 1
    """Largest `num_inference_steps` the written-out sampler supports."""
    vae_needs_fp32: bool = False
    """Keep the VAE in float32 whatever `dtype` (Hyper-SDXL)."""

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
        timestep: int | None = None,
        vae_dtype: torch.dtype | str | None = None,
        gradient_checkpointing: bool | str = "auto",
        max_cached_prompts: int = 512,
    ):
        super().__init__(
            pipe,
            name=name,
            device=device,
            dtype=dtype,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            offload=offload,
            batch_size=batch_size,
        )
        if not 1 <= self.num_inference_steps <= self.max_steps:
            raise ValueError(
                f"{self.family} runs 1..{self.max_steps} written-out steps, not {self.num_inference_steps}; "
                "use the multi-step adapter (sd:, sdxl:, flux:) for more"
            )
        self.timestep = int(self.default_timestep if timestep is None else timestep)
        self.vae_dtype = parse_dtype(vae_dtype) or self._auto_vae_dtype()
        if self.pipe.vae.dtype != self.vae_dtype:
            self.pipe.vae.to(dtype=self.vae_dtype)
        self.max_cached_prompts = int(max_cached_prompts)
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self.set_gradient_checkpointing(gradient_checkpointing)
        self.place()

    def _auto_vae_dtype(self) -> torch.dtype:
        """float32 for Hyper-SDXL, and for a float16 VAE that diffusers marks `force_upcast` (SDXL's
        overflows in float16); else the model dtype (bfloat16 has float32's range)."""
        if self.vae_needs_fp32:
            return torch.float32
        if self.dtype == torch.float16 and getattr(self.pipe.vae.config, "force_upcast", False):
            return torch.float32
        return self.dtype

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """The denoiser and the VAE (its decoder recomputes in backward)."""
        return {"denoiser": self.denoiser, "vae": self.pipe.vae}

    @property
    def gradient_checkpointing(self) -> bool:
        """True while some component is checkpointed."""
        return bool(self.checkpointed)

    # ------------------------------------------------------------------ prompts
    @contextmanager
    def _text_encoders_on_device(self) -> Iterator[None]:
        """With offload ``model``: the text encoders visit the device while they encode."""
        moved = self.offload == "model" and self.device.type != "cpu"
        if moved:
            for m in self.text_encoders:
                m.to(self.device)
        try:
            yield
        finally:
            if moved:
                for m in self.text_encoders:
                    m.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _encode_batch(self, prompts: list[str]) -> tuple:
        raise NotImplementedError

    def encode_prompts(self, prompts: Sequence[str]) -> tuple:
        """The conditioning of `prompts` (a tuple of batched tensors, or None entries), from the
        per-prompt cache; new prompts are encoded together, without gradient."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            with torch.no_grad(), self._text_encoders_on_device():
                parts = self._encode_batch(missing)
            for i, p in enumerate(missing):
                self._cache[p] = tuple(None if x is None else x[i].detach().to(self.device) for x in parts)
        for p in prompts:
            self._cache.move_to_end(p)
        rows = [self._cache[p] for p in prompts]
        while len(self._cache) > max(self.max_cached_prompts, len(set(prompts))):
            self._cache.popitem(last=False)
        return tuple(
            None if rows[0][j] is None else torch.stack([r[j] for r in rows]) for j in range(len(rows[0]))
        )

    def clear_prompt_cache(self) -> None:
        self._cache.clear()

    def negative_conditioning(self, batch: int) -> tuple:
        """Unconditional conditioning (the empty prompt) for classifier-free guidance."""
        return self.encode_prompts([""] * batch)

    # ------------------------------------------------------------------ sampling
    def _denoise(self, z: torch.Tensor, cond: tuple, guidance_scale: float, timestep: int, steps: int):
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents -> images `[B, 3, H, W]` float32 in `[0, 1]` (differentiable)."""
        vae = self.pipe.vae
        cfg = vae.config
        z = latents.to(self.vae_dtype)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            c = z.shape[1]
            mean = torch.tensor(mean, device=z.device, dtype=z.dtype).view(1, c, 1, 1)
            std = torch.tensor(std, device=z.device, dtype=z.dtype).view(1, c, 1, 1)
            z = z * std / cfg.scaling_factor + mean
        else:
            z = z / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None) is not None:
                z = z + cfg.shift_factor
        image = vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _check_noise(self, noise: torch.Tensor) -> None:
        f = self.vae_scale_factor
        if noise.ndim != 4 or noise.shape[1] != self.latent_channels or noise.shape[-2] * f < 8:
            raise ValueError(f"noise must be [B, {self.latent_channels}, h, w], got {tuple(noise.shape)}")

    def _run(self, noise, prompts, guidance_scale=None, timestep=None, num_inference_steps=None):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if noise.shape[0] != len(prompts):
            raise ValueError(f"noise batch {noise.shape[0]} != {len(prompts)} prompts")
        self._check_noise(noise)
        steps = int(num_inference_steps or self.num_inference_steps)
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"{self.family} runs 1..{self.max_steps} steps, not {steps}")
        g = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        t = self.timestep if timestep is None else int(timestep)
        cond = self.encode_prompts(prompts)
        z = noise.to(self.device)
        latents = self._denoise(z, cond, g, t, steps)
        return self.decode(latents)

    def generate_from_noise(
        self,
        noise: torch.Tensor,
        prompts: Sequence[str],
        guidance_scale: float | None = None,
        timestep: int | None = None,
        num_inference_steps: int | None = None,
        **_ignored,
    ) -> torch.Tensor:
        """Images `[B, 3, H, W]` float32 in `[0, 1]`, differentiable with respect to `noise`."""
        return self._run(noise, prompts, guidance_scale, timestep, num_inference_steps)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: int | Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        timestep: int | None = None,
        num_inference_steps: int | None = None,
        batch_size: int | None = None,
        **_ignored,
    ) -> torch.Tensor:
        """Images `[B, 3, H, W]` in `[0, 1]` without gradient (the same computation)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        noise = self._noise(prompts, seeds, noise)
        bs = int(batch_size or self.batch_size)
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), bs):
                z = noise[i : i + bs].to(self.device, self.dtype)
                out.append(self._run(z, prompts[i : i + bs], guidance_scale, timestep, num_inference_steps))
        return torch.cat(out)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "timestep": self.timestep,
            "vae_dtype": str(self.vae_dtype).removeprefix("torch."),
            "gradient_checkpointing": self.checkpoint_mode,
            "checkpointed": list(self.checkpointed),
        }


def cfg_combine(pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a batch ordered [unconditional, conditional]."""
    uncond, cond = pred.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def cat_cond(neg: tuple, pos: tuple) -> tuple:
    return tuple(None if p is None else torch.cat([n, p]) for n, p in zip(neg, pos, strict=True))


# ---------------------------------------------------------------------------------------------------
# multi-step, through the pipeline call


class PipelineGenerator(DiffusersGenerator):
    """A multi-step model sampled by its diffusers pipeline (no gradient), latents from the seeds."""

    differentiable = False
    default_steps = 50
    default_guidance = 7.5

    def __init__(self, pipe, *args, scheduler_kwargs: dict | None = None, **kwargs):
        super().__init__(pipe, *args, **kwargs)
        if scheduler_kwargs:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **scheduler_kwargs)
        self.place()

    def _pipeline_latents(self, noise: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return noise

    def _call_kwargs(self) -> dict:
        return {}

    def generate(
        self,
        prompts: Sequence[str],
        seeds: int | Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        batch_size: int | None = None,
        negative_prompt: str | None = None,
        **_ignored,
    ) -> torch.Tensor:
        """Images `[B, 3, H, W]` float32 in `[0, 1]`, image i from `noise[i]` (or its seed)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        h = int(height or self.height)
        w = int(width or (height if height else self.width))
        noise = self._noise(prompts, seeds, noise, h, w)
        expected = self.noise_shape(len(prompts), h, w)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise shape {tuple(noise.shape)} != {expected} for {h}x{w}")
        steps = int(num_inference_steps or self.num_inference_steps)
        g = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        bs = int(batch_size or self.batch_size)
        out = []
        for i in range(0, len(prompts), bs):
            chunk = prompts[i : i + bs]
            latents = self._pipeline_latents(noise[i : i + bs].to(self.device, self.dtype), h, w)
            kwargs = {**self._call_kwargs()}
            if negative_prompt is not None:
                kwargs["negative_prompt"] = [negative_prompt] * len(chunk)
            with torch.no_grad():
                images = self.pipe(
                    prompt=chunk,
                    latents=latents,
                    num_inference_steps=steps,
                    guidance_scale=g,
                    height=h,
                    width=w,
                    output_type="pt",
                    **kwargs,
                ).images
            out.append(images.float().to(self.device))
        return torch.cat(out)

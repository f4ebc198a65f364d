"""`OneStepGenerator`: a one-step (or few-step) distilled model whose `generate_from_noise` keeps
the autograd graph from the noise to the image (ReNO).

The denoising step is written out in torch (model call, then the scheduler's closed-form
prediction of the clean latent, `schedulers.py`). Prompt embeddings are cached per prompt (the text
encoders run once per prompt, without gradient).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ...training.environment import parse_dtype
from .generator import DiffusersGenerator


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
    """Conditioning tuples joined along the batch as [unconditional, conditional] (None stays None)."""
    return tuple(None if p is None else torch.cat([n, p]) for n, p in zip(neg, pos, strict=True))

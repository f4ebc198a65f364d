"""FLUX: FLUX.1-schnell (one/few steps, differentiable) and FLUX.1-dev style (multi-step).

Flow matching: the noise `z` ([B, 16, H/8, W/8], the unpacked latent) is the latent at sigma = 1;
the transformer sees it packed in 2x2 patches and predicts the velocity `v`. Each Euler step is

    x <- x + (sigma_next - sigma) * v

on the sigma schedule `FluxPipeline` uses (``linspace(1, 1/n, n)``, shifted by the scheduler's
config, then 0). Schnell's single step is therefore ``x0 = z - v(z, sigma=1)``. The latent is
unpacked and decoded as ``vae.decode(x0 / scaling_factor + shift_factor)``.
"""

from __future__ import annotations

import numpy as np
import torch

from .multistep import PipelineGenerator
from .onestep import OneStepGenerator


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C] (FluxPipeline._pack_latents)."""
    from diffusers import FluxPipeline  # lazy: loads diffusers

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, h/2 * w/2, 4C] -> [B, C, h, w] (inverse of `pack`; h, w latent sizes)."""
    b, n, d = packed.shape
    x = packed.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


class FluxSchnellGenerator(OneStepGenerator):
    """FLUX.1-schnell (`FluxPipeline`): 1 step by default (1..4 written out), no guidance, 512 px
    (ReNO's size; pass ``height=1024`` for the native one). T5 prompts up to 256 tokens."""

    family = "flux-schnell"
    pipeline_class = "FluxPipeline"
    default_model = "black-forest-labs/FLUX.1-schnell"
    default_steps = 1
    max_steps = 4
    default_guidance = 0.0
    default_size = 512
    default_timestep = 1000
    packed = True
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def __init__(self, pipe, *args, max_sequence_length: int = 256, **kwargs):
        self.max_sequence_length = int(max_sequence_length)
        self._schedules: dict = {}
        super().__init__(pipe, *args, **kwargs)

    def _encode_batch(self, prompts):
        emb, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return (emb, pooled)

    def schedule(self, steps: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas [steps + 1] ending in 0, timesteps [steps]) as `FluxPipeline` sets them."""
        key = (steps, seq_len)
        if key not in self._schedules:
            # lazy: loads diffusers
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

            sched = self.pipe.scheduler
            cfg = sched.config
            sigmas = None if cfg.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
            mu = calculate_shift(
                seq_len,
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.15),
            )
            timesteps, _ = retrieve_timesteps(sched, steps, "cpu", sigmas=sigmas, mu=mu)
            self._schedules[key] = (sched.sigmas.float().clone(), timesteps.float().clone())
        sig, ts = self._schedules[key]
        return sig.to(self.device), ts.to(self.device)

    def _denoise(self, z, cond, guidance_scale, timestep, steps):
        from diffusers import FluxPipeline  # lazy: loads diffusers

        tr = self.pipe.transformer
        b, _, h, w = z.shape
        emb, pooled = cond
        x = pack(z.float())
        sigmas, timesteps = self.schedule(steps, x.shape[1])
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, tr.dtype)
        txt_ids = torch.zeros(emb.shape[1], 3, device=x.device, dtype=tr.dtype)
        guidance = None
        if tr.config.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=x.device, dtype=torch.float32)
        for i in range(steps):
            v = tr(
                hidden_states=x.to(tr.dtype),
                timestep=timesteps[i].expand(b).to(tr.dtype) / 1000,
                guidance=guidance,
                pooled_projections=pooled.to(tr.dtype),
                encoder_hidden_states=emb.to(tr.dtype),
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
            x = x + (sigmas[i + 1] - sigmas[i]) * v.float()
        return unpack(x, h, w)

    def settings(self) -> dict:
        s = super().settings()
        s.pop("timestep", None)
        return {**s, "max_sequence_length": self.max_sequence_length}


class FluxGenerator(PipelineGenerator):
    """FLUX.1-dev style (`FluxPipeline` with guidance embedding), multi-step; the latents are the
    seeds' unpacked noise, packed for the pipeline."""

    family = "flux"
    pipeline_class = "FluxPipeline"
    default_model = "black-forest-labs/FLUX.1-dev"
    default_steps = 28
    default_guidance = 3.5
    default_size = 1024
    packed = True
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def __init__(self, pipe, *args, max_sequence_length: int = 512, **kwargs):
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(pipe, *args, **kwargs)

    def _pipeline_latents(self, noise, height, width):
        return pack(noise)

    def _call_kwargs(self) -> dict:
        return {"max_sequence_length": self.max_sequence_length}

"""Stable Diffusion (UNet) families: SD-Turbo, SDXL-Turbo, Hyper-SDXL (one step, differentiable) and
SD / SDXL (multi-step, through the pipeline call).

One step (variance-preserving, DDPM-discretised training schedule) at timestep `t` (999 for the
Turbos, 800 for Hyper-SDXL): the UNet sees the VP latent `x_t` the pipeline starts from (the noise
`z` times sqrt(1 - abar_t) under Euler with trailing spacing, whose `init_noise_sigma` is sigma_t;
`z` itself under LCM), predicts `eps` (or `v`), and

    x0 = (x_t - sqrt(1 - abar_t) * eps) / sqrt(abar_t)      (epsilon)
    x0 = sqrt(abar_t) * x_t - sqrt(1 - abar_t) * v          (v-prediction)

which is what Euler(-ancestral) returns after its single step (it steps from sigma_t straight to 0,
adding no noise). Hyper-SDXL's LCM scheduler then applies the consistency boundary condition
``c_out * x0 + c_skip * x_t``. The clean latent is decoded by the VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file

from .loading import hub_kwargs, is_local
from .multistep import PipelineGenerator
from .onestep import OneStepGenerator, cat_cond, cfg_combine
from .schedulers import one_step_latent, vp_sample


def _timesteps(t: int, n: int, device) -> torch.Tensor:
    return torch.full((n,), float(t), device=device)


def _timestep_cond(pipe, guidance_scale: float, n: int, device, dtype):
    """Guidance-scale embedding for UNets distilled with one (`time_cond_proj_dim`), else None."""
    dim = pipe.unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.tensor(guidance_scale - 1).repeat(n)
    return pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(device=device, dtype=dtype)


NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}


# ---------------------------------------------------------------------------------------------------
# one step


class SDTurboGenerator(OneStepGenerator):
    """SD-Turbo: `StableDiffusionPipeline`, 512 px, one step at timestep 999, no guidance.

    The pipeline's scheduler is set to Euler-ancestral with trailing spacing (what SD-Turbo is
    sampled with); the written-out step equals that scheduler's single step."""

    family = "sd-turbo"
    pipeline_class = "StableDiffusionPipeline"
    default_model = "stabilityai/sd-turbo"
    default_timestep = 999
    default_guidance = 0.0

    def __init__(self, pipe, *args, **kwargs):
        from diffusers import EulerAncestralDiscreteScheduler  # lazy: loads diffusers

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
        super().__init__(pipe, *args, **kwargs)

    @classmethod
    def load(cls, source, dtype, hub, options, **components):
        return super().load(source, dtype, hub, options, **NO_SAFETY_CHECKER, **components)

    def _encode_batch(self, prompts):
        emb, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return (emb,)

    def _denoise(self, z, cond, guidance_scale, timestep, steps):
        unet = self.pipe.unet
        z = vp_sample(self.pipe.scheduler, z, timestep)
        x = z.to(unet.dtype)
        (emb,) = cond
        if guidance_scale > 1:
            (emb,) = cat_cond(self.negative_conditioning(z.shape[0]), (emb,))
            x = torch.cat([x, x])
        out = unet(
            x,
            _timesteps(timestep, x.shape[0], x.device),
            encoder_hidden_states=emb.to(unet.dtype),
            timestep_cond=_timestep_cond(self.pipe, guidance_scale, x.shape[0], x.device, unet.dtype),
            return_dict=False,
        )[0]
        if guidance_scale > 1:
            out = cfg_combine(out, guidance_scale)
        return one_step_latent(self.pipe.scheduler, out, z, timestep)


class _SDXLOneStep(OneStepGenerator):
    """SDXL UNet one-step sampling (two CLIP text encoders, pooled text + size micro-conditions)."""

    pipeline_class = "StableDiffusionXLPipeline"
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def _encode_batch(self, prompts):
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return (emb, pooled)

    def negative_conditioning(self, batch: int) -> tuple:
        if getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            return tuple(torch.zeros_like(x) for x in self.encode_prompts([""] * batch))
        return super().negative_conditioning(batch)

    def _denoise(self, z, cond, guidance_scale, timestep, steps):
        pipe, unet = self.pipe, self.pipe.unet
        f = self.vae_scale_factor
        size = (z.shape[-2] * f, z.shape[-1] * f)
        z = vp_sample(pipe.scheduler, z, timestep)
        x = z.to(unet.dtype)
        emb, pooled = cond
        if guidance_scale > 1:
            emb, pooled = cat_cond(self.negative_conditioning(z.shape[0]), (emb, pooled))
            x = torch.cat([x, x])
        te2 = getattr(pipe, "text_encoder_2", None)
        proj = te2.config.projection_dim if te2 is not None else int(pooled.shape[-1])
        time_ids = pipe._get_add_time_ids(
            size, (0, 0), size, dtype=unet.dtype, text_encoder_projection_dim=proj
        )
        time_ids = time_ids.to(x.device).repeat(x.shape[0], 1)
        out = unet(
            x,
            _timesteps(timestep, x.shape[0], x.device),
            encoder_hidden_states=emb.to(unet.dtype),
            timestep_cond=_timestep_cond(pipe, guidance_scale, x.shape[0], x.device, unet.dtype),
            added_cond_kwargs={"text_embeds": pooled.to(unet.dtype), "time_ids": time_ids},
            return_dict=False,
        )[0]
        if guidance_scale > 1:
            out = cfg_combine(out, guidance_scale)
        return one_step_latent(pipe.scheduler, out, z, timestep)


class SDXLTurboGenerator(_SDXLOneStep):
    """SDXL-Turbo: 512 px, one step at timestep 999, no guidance, Euler-ancestral trailing.

    SDXL's VAE overflows in float16: with `dtype=float16` it is kept in float32 (diffusers'
    `force_upcast`), or pass ``vae="madebyollin/sdxl-vae-fp16-fix"`` for an fp16-safe VAE."""

    family = "sdxl-turbo"
    default_model = "stabilityai/sdxl-turbo"
    default_timestep = 999
    default_guidance = 0.0

    def __init__(self, pipe, *args, **kwargs):
        from diffusers import EulerAncestralDiscreteScheduler  # lazy: loads diffusers

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
        super().__init__(pipe, *args, **kwargs)


HYPER_REPO = "ByteDance/Hyper-SD"
HYPER_FILE = "Hyper-SDXL-1step-Unet.safetensors"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"


def resolve_file(spec: str | Path, hub: dict) -> Path:
    """A local file, or ``owner/repo/path/in/repo`` fetched with `hf_hub_download`."""
    path = Path(str(spec)).expanduser()
    if path.is_file():
        return path
    parts = str(spec).split("/")
    if len(parts) < 3:
        raise FileNotFoundError(f"{spec} is neither a file nor 'owner/repo/filename' on the hub")

    keep = {k: hub[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in hub}
    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), **keep))


class HyperSDXLGenerator(_SDXLOneStep):
    """Hyper-SDXL 1-step: the SDXL base pipeline with ByteDance's one-step UNet, `LCMScheduler`,
    one step at timestep 800, no guidance, the VAE upcast to float32.

    ``unet_weights``: the UNet state dict (a local ``.safetensors`` or ``owner/repo/file``).
    Default: for a hub base, ``ByteDance/Hyper-SD/Hyper-SDXL-1step-Unet.safetensors``; for a
    local folder, its ``Hyper-SDXL-1step-Unet.safetensors`` if present, else the folder's own UNet
    (a saved Hyper pipeline). ``unet_weights=None`` keeps the folder's UNet."""

    family = "hyper-sdxl"
    default_model = SDXL_BASE
    default_timestep = 800
    default_guidance = 0.0
    vae_needs_fp32 = True

    def __init__(self, pipe, *args, **kwargs):
        from diffusers import LCMScheduler  # lazy: loads diffusers

        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        super().__init__(pipe, *args, **kwargs)

    @classmethod
    def load(cls, source, dtype, hub, options, **components):
        from diffusers import UNet2DConditionModel  # lazy: loads diffusers

        weights = options.pop("unet_weights", "auto")
        if weights == "auto":
            if is_local(source):
                local = Path(source).expanduser() / HYPER_FILE
                weights = local if local.is_file() else None
            else:
                weights = f"{HYPER_REPO}/{HYPER_FILE}"
        if weights is not None:
            from accelerate import init_empty_weights  # lazy: loads accelerate

            cfg_hub = {
                k: v for k, v in hub_kwargs(source, hub).items() if k not in ("variant", "use_safetensors")
            }
            config = UNet2DConditionModel.load_config(source, subfolder="unet", **cfg_hub)
            with init_empty_weights():
                unet = UNet2DConditionModel.from_config(config)
            unet.load_state_dict(load_file(str(resolve_file(weights, hub))), strict=True, assign=True)
            components["unet"] = unet.to(dtype)
        return super().load(source, dtype, hub, options, **components)


# ---------------------------------------------------------------------------------------------------
# multi-step


class StableDiffusionGenerator(PipelineGenerator):
    """SD 1.x / 2.x (`StableDiffusionPipeline`), multi-step; no safety checker is loaded."""

    family = "sd"
    pipeline_class = "StableDiffusionPipeline"
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    default_steps = 50
    default_guidance = 7.5

    @classmethod
    def load(cls, source, dtype, hub, options, **components):
        return super().load(source, dtype, hub, options, **NO_SAFETY_CHECKER, **components)


class StableDiffusionXLGenerator(PipelineGenerator):
    """SDXL (`StableDiffusionXLPipeline`), multi-step (the pipeline upcasts an fp16 VAE itself)."""

    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    default_model = SDXL_BASE
    default_steps = 50
    default_guidance = 5.0
    text_encoder_names = ("text_encoder", "text_encoder_2")

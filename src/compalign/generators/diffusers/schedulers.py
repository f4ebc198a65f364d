"""Scheduler maths of the one-step samplers, written out in torch (differentiable).

For variance-preserving (DDPM-discretised) models the one-step sampler starts from the latent the
diffusers pipeline starts from (`vp_sample`: `z` for DDPM / LCM, ``sqrt(1 - abar_t) * z`` for Euler
with trailing spacing) and returns the scheduler's closed-form prediction of the clean latent
(`vp_clean_latent`, through the consistency boundary condition for LCM: `one_step_latent`); for
flow-matching models `z` is the latent at sigma = 1.
"""

from __future__ import annotations

import torch


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
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler  # lazy: loads diffusers

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

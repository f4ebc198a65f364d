"""PixArt-alpha DMD (one step, differentiable).

ReNO's set-up: the PixArt-XL pipeline (T5 text encoder, VAE) with its transformer swapped for the
distribution-matching-distilled ``PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512`` one and that repo's
`DDPMScheduler`; one step at timestep 400, no guidance, 512 px.

One step: the noise `z` is the latent at t = 400; the transformer predicts `eps` (its learned-sigma
channels are dropped) and the image is decoded from the DDPM `pred_original_sample`

    x0 = (z - sqrt(1 - abar_400) * eps) / sqrt(abar_400)

(with the scheduler config's `clip_sample` / `thresholding`, as `DDPMScheduler.step` applies them).
"""

from __future__ import annotations

import torch

from .loading import hub_kwargs, is_local, load_model
from .onestep import OneStepGenerator, cat_cond, cfg_combine
from .schedulers import one_step_latent

PIXART_BASE = "PixArt-alpha/PixArt-XL-2-1024-MS"
PIXART_DMD = "PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512"


class PixArtDMDGenerator(OneStepGenerator):
    """`PixArtAlphaPipeline` with the DMD transformer: one step at timestep 400, 512 px.

    ``transformer``: where the (DMD) transformer and its scheduler come from (``transformer`` and
    ``scheduler`` subfolders). Default: for a hub base, ``PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512``;
    for a local folder, the folder's own (a saved DMD pipeline). None keeps the base's."""

    family = "pixart-dmd"
    pipeline_class = "PixArtAlphaPipeline"
    default_model = PIXART_BASE
    default_timestep = 400
    default_guidance = 1.0

    def __init__(self, pipe, *args, max_sequence_length: int = 120, **kwargs):
        from diffusers import DDPMScheduler  # lazy: loads diffusers

        if not isinstance(pipe.scheduler, DDPMScheduler):
            pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(pipe, *args, **kwargs)

    @classmethod
    def load(cls, source, dtype, hub, options, **components):
        from diffusers import DDPMScheduler, PixArtTransformer2DModel  # lazy: loads diffusers

        swap = options.pop("transformer", "auto")
        if swap == "auto":
            swap = None if is_local(source) else PIXART_DMD
        if isinstance(swap, torch.nn.Module):
            components["transformer"] = swap
        elif swap is not None:
            components["transformer"] = load_model(
                PixArtTransformer2DModel, swap, "transformer", dtype, **hub
            )
            try:
                sched_hub = {
                    k: v for k, v in hub_kwargs(swap, hub).items() if k not in ("variant", "use_safetensors")
                }
                components["scheduler"] = DDPMScheduler.from_pretrained(
                    str(swap), subfolder="scheduler", **sched_hub
                )
            except OSError:
                pass  # no scheduler beside the transformer: the base's, as DDPM
        return super().load(source, dtype, hub, options, **components)

    def _encode_batch(self, prompts):
        emb, mask, _, _ = self.pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.device,
            clean_caption=False,
            max_sequence_length=self.max_sequence_length,
        )
        return (emb, mask)

    def _denoise(self, z, cond, guidance_scale, timestep, steps):
        tr = self.transformer
        f = self.vae_scale_factor
        x = z.to(tr.dtype)
        emb, mask = cond
        if guidance_scale > 1:
            emb, mask = cat_cond(self.negative_conditioning(z.shape[0]), (emb, mask))
            x = torch.cat([x, x])
        n = x.shape[0]
        added = {"resolution": None, "aspect_ratio": None}
        if getattr(tr, "use_additional_conditions", False):
            h, w = z.shape[-2] * f, z.shape[-1] * f
            added = {
                "resolution": torch.tensor([[h, w]], device=x.device, dtype=tr.dtype).repeat(n, 1),
                "aspect_ratio": torch.tensor([[h / w]], device=x.device, dtype=tr.dtype).repeat(n, 1),
            }
        out = tr(
            x,
            encoder_hidden_states=emb.to(tr.dtype),
            encoder_attention_mask=mask,
            timestep=torch.full((n,), int(timestep), device=x.device, dtype=torch.long),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        if guidance_scale > 1:
            out = cfg_combine(out, guidance_scale)
        if tr.config.out_channels // 2 == self.latent_channels:  # learned sigma
            out = out.chunk(2, dim=1)[0]
        return one_step_latent(self.pipe.scheduler, out, z, timestep)

    @property
    def transformer(self):
        return self.pipe.transformer

    def settings(self) -> dict:
        return {**super().settings(), "max_sequence_length": self.max_sequence_length}

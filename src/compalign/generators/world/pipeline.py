"""`WorldPipeline`: a diffusers pipeline for the world text-to-image models.

Components: ``unet`` (the denoiser in folded pixel space: `UNet2DConditionModel`, or `WorldDiT`
with the same call signature), ``text_encoder``
(`CLIPTextModel` or `T5EncoderModel`), ``tokenizer`` (word-level fast tokenizer) and
``scheduler`` (the sampler). `save_pretrained` / `from_pretrained` give the usual diffusers folder
(``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``); the sampling
defaults (`default_steps`, `default_guidance_scale`) and `patch_size` live in
``model_index.json``.

The initial noise is a `[B, 3, 32, 32]` Gaussian in pixel space (the model folds it itself), so
the noise shape does not depend on the architecture. `denoise(noise, prompts)` maps noise to
images in `[0, 1]`; with `enable_grad=True` it is differentiable with respect to the noise.

A denoiser whose config asks for two input channels more than it outputs (``coord_channels`` in
`WorldArch`) gets two coordinate channels, x and y in `[-1, 1]` across the image, appended to its
input by `predict`; the saved denoiser config is all that records it.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image

from ..base import noise_for_seeds
from . import dit as _dit  # noqa: F401  (imported, so from_pretrained can load a saved WorldDiT)
from .models import IMAGE_CHANNELS, IMAGE_SIZE
from .tokenizer import tokenize


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """`[B, 2, H, W]`: x (left -1 to right 1) and y (top -1 to bottom 1) of each cell's centre."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
    grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
    return grid.unsqueeze(0).expand(b, 2, h, w)


def predict_x0(scheduler, model_output: torch.Tensor, sample: torch.Tensor, t) -> torch.Tensor:
    """Clean-sample prediction from a model output at timestep `t` (any prediction type)."""
    ac = scheduler.alphas_cumprod.to(sample.device, torch.float32)[t]
    a, s = ac.sqrt().to(sample.dtype), (1 - ac).sqrt().to(sample.dtype)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return a * sample - s * model_output
    if kind == "epsilon":
        return (sample - s * model_output) / a
    if kind == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {kind!r}")


class WorldPipeline(DiffusionPipeline):
    """Text-to-image pipeline of a world model (32x32 RGB, pixel-space diffusion)."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self,
        unet,
        text_encoder,
        tokenizer,
        scheduler,
        patch_size: int = 2,
        default_steps: int = 25,
        default_guidance_scale: float = 3.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        if type(tokenizer).__name__ == "TokenizersBackend":
            # transformers 5 names its fast tokenizers so; record the name older versions know too
            self.register_to_config(tokenizer=("transformers", "PreTrainedTokenizerFast"))
        self.register_to_config(
            patch_size=int(patch_size),
            default_steps=int(default_steps),
            default_guidance_scale=float(default_guidance_scale),
        )

    # ---------------------------------------------------------------- shapes and folding
    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    def noise_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 32, 32]` -> UNet input `[B, 3*p*p, 32/p, 32/p]` (lossless)."""
        p = self.config.patch_size
        return F.pixel_unshuffle(x, p) if p > 1 else x

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        return F.pixel_shuffle(x, p) if p > 1 else x

    # ---------------------------------------------------------------- text
    def encode_prompt(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(hidden_states [B, L, D], attention_mask [B, L])` for a list of prompts."""
        device = device or self.unet.device
        ids, mask = tokenize(self.tokenizer, prompts, device=device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden.to(self.unet.dtype), mask

    def predict(self, x, t, text: torch.Tensor, mask: torch.Tensor, unet=None) -> torch.Tensor:
        """Denoiser output for folded `x` at timestep(s) `t` given encoded text (pooled text too, when
        the denoiser has a projection class embedding; coordinate channels when it takes them)."""
        unet = unet if unet is not None else self.unet
        extra = int(getattr(unet.config, "in_channels", x.shape[1])) - x.shape[1]
        if extra == 2:
            x = torch.cat([x, coordinate_channels(x)], dim=1)
        elif extra:
            raise ValueError(
                f"the denoiser takes {x.shape[1] + extra} channels, the folded image has {x.shape[1]}"
            )
        pooled = None
        if getattr(unet.config, "class_embed_type", None) == "projection":
            w = mask.to(text.dtype).unsqueeze(-1)
            pooled = (text * w).sum(1) / w.sum(1).clamp(min=1)
        return unet(x, t, text, class_labels=pooled, encoder_attention_mask=mask).sample

    # ---------------------------------------------------------------- sampling
    def denoise(
        self,
        noise: torch.Tensor,
        prompts: list[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        enable_grad: bool = False,
        clamp: bool = True,
    ) -> torch.Tensor:
        """Initial noise `[B, 3, 32, 32]` + prompts -> images `[B, 3, 32, 32]` in `[0, 1]`.

        `clamp=False` returns the raw model image (`[0, 1]` only approximately), which distillation
        uses so that out-of-range pixels still get a gradient.
        """
        steps = int(num_inference_steps or self.config.default_steps)
        g = float(self.config.default_guidance_scale if guidance_scale is None else guidance_scale)
        if noise.shape[1:] != self.noise_shape(1)[1:]:
            raise ValueError(
                f"noise must be [B, {IMAGE_CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}], got {tuple(noise.shape)}"
            )
        if len(prompts) != noise.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for a noise batch of {noise.shape[0]}")
        device, dtype = self.unet.device, self.unet.dtype
        ctx = nullcontext() if enable_grad else torch.no_grad()
        with ctx:
            cond, mask = self.encode_prompt(list(prompts), device)
            if g != 1.0:
                unc, umask = self.encode_prompt([""] * len(prompts), device)
                cond, mask = torch.cat([unc, cond]), torch.cat([umask, mask])
            sched = self.scheduler
            sched.set_timesteps(steps, device=device)
            x = self.fold(noise.to(device, dtype)) * sched.init_noise_sigma
            for t in sched.timesteps:
                xin = torch.cat([x, x]) if g != 1.0 else x
                xin = sched.scale_model_input(xin, t)
                out = self.predict(xin, t, cond, mask)
                if g != 1.0:
                    out_u, out_c = out.chunk(2)
                    out = out_u + g * (out_c - out_u)
                x = sched.step(out, t, x, return_dict=False)[0]
            image = self.unfold(x)
            image = (image.clamp(-1, 1) if clamp else image) * 0.5 + 0.5
        return image

    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seeds: list[int] | int | None = None,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample images. Noise comes from `latents`, else per-image `seeds`, else `generator`."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        shape = self.noise_shape(1)[1:]
        if latents is None:
            if seeds is not None:
                seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else seeds
                latents = noise_for_seeds(list(seeds), shape)
            else:
                latents = torch.randn((len(prompts), *shape), generator=generator)
        image = self.denoise(latents, prompts, num_inference_steps, guidance_scale)
        if output_type == "pt":
            out = image
        else:
            arr = image.permute(0, 2, 3, 1).float().cpu().numpy()
            out = arr if output_type == "np" else self.numpy_to_pil(arr)
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)


def to_pil_images(images: torch.Tensor):
    """`[B, 3, H, W]` in `[0, 1]` -> list of PIL images."""

    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return [Image.fromarray(a) for a in arr]

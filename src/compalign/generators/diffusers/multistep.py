"""`PipelineGenerator`: a multi-step model sampled by its diffusers pipeline call (galleries).

`generate` calls the pipeline itself with latents built from `noise_for_seeds`, so a seed gives the
same image whatever the batch. No gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .generator import DiffusersGenerator


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

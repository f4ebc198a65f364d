"""Stable Diffusion 3 (`StableDiffusion3Pipeline`), multi-step, for galleries."""

from __future__ import annotations

from .multistep import PipelineGenerator


class StableDiffusion3Generator(PipelineGenerator):
    """SD3 (flow matching, three text encoders); latents [B, 16, H/8, W/8] from the seeds."""

    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    default_model = "stabilityai/stable-diffusion-3-medium-diffusers"
    default_steps = 28
    default_guidance = 7.0
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, pipe, *args, max_sequence_length: int = 256, **kwargs):
        self.max_sequence_length = int(max_sequence_length)
        super().__init__(pipe, *args, **kwargs)

    def _call_kwargs(self) -> dict:
        return {"max_sequence_length": self.max_sequence_length}

"""`WorldGenerator`: the `Generator` contract around a `WorldPipeline`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..base import Generator, noise_for_seeds, seeds_for
from .pipeline import WorldPipeline

RECORD_FILE = "training.json"


@contextmanager
def quiet_loading():
    """Silence diffusers' and transformers' loading progress bars, restoring their state."""
    # lazy: loads diffusers, transformers
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = [(log, log.is_progress_bar_enabled()) for log in (dlog, tlog)]
    for log, _ in was:
        log.disable_progress_bar()
    try:
        yield
    finally:
        for log, enabled in was:
            if enabled:
                log.enable_progress_bar()


def dtype_kwarg() -> str:
    """The name of the dtype argument of diffusers' ``from_pretrained`` (``dtype`` or ``torch_dtype``)."""
    from diffusers.pipelines import pipeline_utils  # lazy: loads diffusers

    # diffusers >= 0.36 renamed `torch_dtype` to `dtype` (the old name warns)
    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32) -> WorldPipeline:
    """Load a saved `WorldPipeline` folder (offline: a local folder never touches the network)."""
    # diffusers loads a component by its module path only if that module is imported already
    from . import dual_text  # noqa: F401  (lazy: loads transformers)

    with quiet_loading():
        pipe = WorldPipeline.from_pretrained(str(path), local_files_only=True, **{dtype_kwarg(): dtype})
    pipe.set_progress_bar_config(disable=True)
    return pipe


class WorldGenerator(Generator):
    """A world model (multi-step, or one/two-step and then `differentiable`).

    `steps` fixes its DDIM sampling steps (None: the pipeline's default). A multi-step model given
    `steps` is `differentiable` too: ReNO back-propagates through every one of those steps, so its
    time and memory grow with them (ReNO on an IterComp-fine-tuned base at 2-4 steps)."""

    def __init__(
        self,
        pipeline: WorldPipeline,
        name: str = "world",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        record: dict | None = None,
        steps: int | None = None,
    ):
        super().__init__(device, dtype or pipeline.unet.dtype)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps of world model {name!r} must be a positive integer, got {steps!r}")
        if pipeline.unet.dtype != self.dtype:
            pipeline = pipeline.to(dtype=self.dtype)
        self.pipe = pipeline.to(self.device)
        for m in (self.pipe.unet, self.pipe.text_encoder):
            m.eval()
            m.requires_grad_(False)
        self.name = name
        self.record = record
        self.steps = steps
        self.differentiable = steps is not None or int(self.pipe.config.default_steps) <= 2

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        steps: int | None = None,
    ) -> WorldGenerator:
        path = Path(path)
        record_path = path / RECORD_FILE
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        pipe = load_pipeline(path, dtype or torch.float32)
        return cls(pipe, name=name or path.name, device=device, dtype=dtype, record=record, steps=steps)

    @property
    def training_captions(self) -> str | None:
        """The caption preset (`compalign.world.captions`) the model learnt from, from its record:
        a world training's ``config.captions``, a feedback run's ``captions`` (what its
        regulariser used); None when the record does not say (models from before captions:
        exact prompts)."""
        r = self.record or {}
        return r.get("captions") or (r.get("config") or {}).get("captions")

    # ------------------------------------------------------------------ contract
    def noise_shape(self, batch: int = 1) -> tuple[int, ...]:
        return self.pipe.noise_shape(batch)

    @property
    def resolution(self) -> int:
        return self.pipe.image_size

    def settings(self) -> dict:
        c = self.pipe.config
        return {
            "num_inference_steps": int(self.steps or c.default_steps),
            "guidance_scale": float(c.default_guidance_scale),
            "scheduler": type(self.pipe.scheduler).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "gradient_checkpointing": self.checkpoint_mode,
            "checkpointed": list(self.checkpointed),
        }

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.pipe.unet}

    def generate(
        self,
        prompts: Sequence[str],
        seeds: int | Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if noise is None:
            noise = noise_for_seeds(seeds_for(len(prompts), seeds), self.noise_shape(1)[1:])
        if noise.shape[0] != len(prompts):
            raise ValueError(f"noise batch {noise.shape[0]} != {len(prompts)} prompts")
        out = []
        for i in range(0, len(prompts), batch_size):
            out.append(
                self.pipe.denoise(
                    noise[i : i + batch_size].to(self.device, self.dtype),
                    prompts[i : i + batch_size],
                    num_inference_steps or self.steps,
                    guidance_scale,
                )
            )
        return torch.cat(out).float()

    def generate_from_noise(
        self,
        noise: torch.Tensor,
        prompts: Sequence[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        steps = num_inference_steps or self.steps
        return self.pipe.denoise(noise, prompts, steps, guidance_scale, enable_grad=True)

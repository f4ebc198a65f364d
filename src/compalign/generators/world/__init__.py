"""World text-to-image models: small pixel-space diffusion models of the embedded world.

- `WorldPipeline` (diffusers pipeline: unet, text_encoder, tokenizer, scheduler)
- `WorldGenerator` (the `Generator` contract around it)
- `WorldTrainConfig`, `list_presets`, `create_preset` (named, reproducible training recipes)
- `train_world_model`, `export_model` (training with checkpoints/resume; shipping as fp16)
"""

from .config import WorldTrainConfig, create_preset, list_presets
from .generator import WorldGenerator, load_pipeline
from .models import WorldArch
from .pipeline import WorldPipeline

__all__ = [
    "WorldArch",
    "WorldGenerator",
    "WorldPipeline",
    "WorldTrainConfig",
    "create_preset",
    "list_presets",
    "load_pipeline",
]

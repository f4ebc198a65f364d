"""`DualTextEncoder`: a causal CLIP text encoder and a bidirectional T5 encoder, side by side.

The denoiser A/B (``docs/results/world_denoiser_ab``) found the two encoders' strengths apart. The
causal CLIP encoder gives each object word the colour word just before it (few binding swaps) but
leaves the first object's tokens blind to the relation word after them: its models place the
objects of left / right / above / below prompts barely above chance. The bidirectional T5 encoder
lets every token see the relation (directional relations placed well above chance) but mixes the
two objects' colours. SD3 and FLUX feed CLIP and T5 features to one denoiser; so does this encoder,
at world scale: both read the same word-level tokens, and each token's features are the two
encoders' outputs concatenated (``[B, L, D_clip + D_t5]``), so the denoiser's cross-attention and
pooled-text projection read both.

A diffusers `ModelMixin` / `ConfigMixin` holding the two transformers models, rebuilt from their
configs (``config.json``), so a `WorldPipeline` saves and loads it as its ``text_encoder``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers.modeling_outputs import BaseModelOutput


class DualTextEncoder(ModelMixin, ConfigMixin):
    """CLIP (causal) and T5 (bidirectional) text encoders on the same tokens, features concatenated."""

    @register_to_config
    def __init__(self, clip_config: dict, t5_config: dict):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        self.clip = CLIPTextModel(CLIPTextConfig(**clip_config))
        # the encoder stack alone: `T5EncoderModel` ties `shared` to it, which safetensors refuses
        self.t5 = T5EncoderModel(T5Config(**t5_config)).encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BaseModelOutput:
        # input_ids, attention_mask: [B, L] -> last_hidden_state [B, L, D_clip + D_t5]
        a = self.clip(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        b = self.t5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return BaseModelOutput(last_hidden_state=torch.cat([a, b], dim=-1))

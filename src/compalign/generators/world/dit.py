"""`WorldDiT`: a small diffusion transformer for the world models, built from diffusers' blocks.

The PixArt-alpha design (`PixArtTransformer2DModel`) at world scale: the folded image (the
pipeline's 2x2 pixel unshuffle, so each token is one 2x2x3 pixel patch) is embedded by
`PatchEmbed` with fixed 2-D sine-cosine position embeddings, then `depth` `BasicTransformerBlock`s
(self-attention over all tokens, cross-attention to the projected text tokens, feed-forward), each
modulated by adaLN-single (one shift/scale/gate table per block plus a shared time projection).
One addition to PixArt: with ``class_embed_type="projection"`` the pooled prompt embedding
(`class_labels`, as `UNet2DConditionModel` names it) is projected and added to the timestep
embedding, so every block's modulation sees the prompt too.

The model is a diffusers `ModelMixin` / `ConfigMixin`: `save_pretrained` / `from_pretrained`
rebuild it from its ``config.json``, and a `WorldPipeline` loads it as its ``unet`` component. Its
call signature is the UNet's (`sample, timestep, encoder_hidden_states, class_labels,
encoder_attention_mask`), so the pipeline and the trainer use either denoiser unchanged.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn


class WorldDiT(ModelMixin, ConfigMixin):
    """PixArt-style transformer denoiser on a `sample_size` x `sample_size` grid (see module doc)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        in_channels: int = 12,
        out_channels: int = 12,
        patch_size: int = 1,
        width: int = 128,
        depth: int = 6,
        attention_head_dim: int = 32,
        ff_mult: int = 4,
        cross_attention_dim: int = 64,
        class_embed_type: str | None = "projection",
        projection_class_embeddings_input_dim: int | None = 64,
    ):
        super().__init__()
        if width % attention_head_dim:
            raise ValueError(f"width {width} is not a multiple of attention_head_dim {attention_head_dim}")
        if class_embed_type not in (None, "projection"):
            raise ValueError(f"class_embed_type must be None or 'projection', got {class_embed_type!r}")
        self.pos_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=width,
            interpolation_scale=1,
            pos_embed_type="sincos",
        )
        self.adaln_single = AdaLayerNormSingle(width, use_additional_conditions=False)
        self.class_embedding = (
            nn.Linear(projection_class_embeddings_input_dim or cross_attention_dim, width)
            if class_embed_type == "projection"
            else None
        )
        self.caption_projection = PixArtAlphaTextProjection(
            in_features=cross_attention_dim, hidden_size=width
        )
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                width,
                width // attention_head_dim,
                attention_head_dim,
                cross_attention_dim=width,
                activation_fn="gelu-approximate",
                num_embeds_ada_norm=1000,
                attention_bias=True,
                norm_type="ada_norm_single",
                norm_elementwise_affine=False,
                norm_eps=1e-6,
                ff_inner_dim=width * ff_mult,
            )
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, width) / width**0.5)
        self.proj_out = nn.Linear(width, patch_size * patch_size * out_channels)
        self.gradient_checkpointing = False

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Denoiser output for `sample [B, C, H, W]` at `timestep` (scalar or `[B]`) given the text
        tokens `[B, L, cross_attention_dim]`, their mask `[B, L]` and (with a class embedding) the
        pooled text `class_labels [B, projection_class_embeddings_input_dim]`."""
        b, _, h, w = sample.shape
        p = self.config.patch_size
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        x = self.pos_embed(sample)
        emb = self.adaln_single.emb(t, None, None, batch_size=b, hidden_dtype=x.dtype)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError(
                    "this WorldDiT adds the pooled text to its timestep embedding: pass class_labels"
                )
            emb = emb + self.class_embedding(class_labels.to(x.dtype))
        modulation = self.adaln_single.linear(self.adaln_single.silu(emb))
        text = self.caption_projection(encoder_hidden_states.to(x.dtype))
        bias = None
        if encoder_attention_mask is not None:
            bias = ((1 - encoder_attention_mask.to(x.dtype)) * -10000.0).unsqueeze(1)
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, None, text, bias, modulation)
            else:
                x = block(x, encoder_hidden_states=text, encoder_attention_mask=bias, timestep=modulation)
        shift, scale = (self.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)
        hp, wp = h // p, w // p
        x = x.reshape(b, hp, wp, p, p, self.config.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", x).reshape(b, self.config.out_channels, hp * p, wp * p)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


__all__ = ["WorldDiT"]

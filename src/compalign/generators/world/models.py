"""Architecture of a world text-to-image model: build its diffusers / transformers components.

A world model is pixel-space diffusion on 32x32 RGB images. The image is folded into
`patch_size` x `patch_size` blocks (pixel unshuffle, lossless) so a 2x2 fold gives the UNet a
16x16 input with 12 channels: four times cheaper than running at 32x32, which matters on a CPU.
The text encoder is a small `CLIPTextModel` (causal, like Stable Diffusion's), a small
`T5EncoderModel` (bidirectional, relative positions) or both side by side (`DualTextEncoder`,
``clip+t5``: each token's features concatenated, as SD3 and FLUX feed CLIP and T5); all read the
word-level world tokenizer.

The denoiser (the pipeline's ``unet`` component) is diffusers' `UNet2DConditionModel`
(``denoiser="unet"``), optionally with two coordinate input channels (``coord_channels``, which the
pipeline appends: CoordConv), or `WorldDiT` (``denoiser="dit"``), a PixArt-style transformer on
the 16x16 grid of folded patches with 2-D sine-cosine position embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..._config import DictConfig
from ...training import count_parameters
from .dit import WorldDiT
from .tokenizer import MAX_LENGTH, build_tokenizer, build_vocab

IMAGE_SIZE = 32
IMAGE_CHANNELS = 3
TEXT_ENCODERS = ("clip", "t5", "clip+t5")
DENOISERS = ("unet", "dit")
SAMPLERS = ("ddim", "dpmsolver", "euler")


@dataclass
class WorldArch(DictConfig):
    """Architecture and sampler of one world model (everything `build_components` needs)."""

    _fields_name = "architecture fields"

    denoiser: str = "unet"
    """`unet` (`UNet2DConditionModel`: the fields below up to `norm_num_groups`, plus
    `coord_channels`) or `dit` (`WorldDiT`: the `dit_*` fields); both see the folded image."""
    patch_size: int = 2
    """Pixel-unshuffle factor: the UNet sees `[3*p*p, 32/p, 32/p]` (1 = plain 32x32 pixels); the
    DiT makes one token of each folded pixel (a p x p patch of the image)."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """UNet channels per resolution level (each level after the first halves the resolution)."""
    layers_per_block: int = 1
    """ResNet layers per UNet level (the up path has one more)."""
    attention_levels: tuple[bool, ...] = (False, True, True)
    """Per level: self- plus cross-attention (`CrossAttn*Block2D`) or plain ResNets."""
    attention_head_dim: int = 8
    """Channels per attention head in the UNet."""
    norm_num_groups: int = 8
    """GroupNorm groups in the UNet; must divide every entry of `block_out_channels`."""
    coord_channels: bool = False
    """UNet: the pipeline appends two coordinate channels (x and y in [-1, 1] across the image) to
    the UNet's input, so its convolutions and attention know where each cell is (CoordConv)."""
    dit_width: int = 128
    """DiT: token width."""
    dit_depth: int = 6
    """DiT: transformer blocks (self-attention, cross-attention to the text, feed-forward)."""
    dit_head_dim: int = 32
    """DiT: channels per attention head (`dit_width` / `dit_head_dim` heads)."""
    dit_ff_mult: int = 4
    """DiT: feed-forward width as a multiple of `dit_width`."""
    dit_patch_size: int = 1
    """DiT: folded cells per token side. 1: a token per folded cell (256 tokens of 2x2 pixels at
    `patch_size` 2); 2: 64 tokens of 4x4 pixels, about a quarter of the compute per step."""
    text_encoder: str = "clip"
    """`clip` (causal `CLIPTextModel`), `t5` (bidirectional `T5EncoderModel`) or `clip+t5`
    (both, features concatenated: `DualTextEncoder`)."""
    text_hidden_size: int = 64
    """Width of the text encoder (of each of the two with `clip+t5`)."""
    text_layers: int = 3
    """Transformer layers in the text encoder."""
    text_heads: int = 4
    """Attention heads in the text encoder."""
    text_ff_mult: int = 4
    """Feed-forward width of the text encoder as a multiple of `text_hidden_size`."""
    pooled_text: bool = True
    """Also add the mean text embedding to the timestep embedding (every ResNet sees the prompt;
    `class_embed_type="projection"`), besides cross-attention to the tokens. In 300-800-step
    probes it made the model use the prompt much sooner."""
    prediction_type: str = "v_prediction"
    """What the UNet predicts: `v_prediction`, `epsilon` or `sample` (x0)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule (diffusers name): `squaredcos_cap_v2` (cosine), `scaled_linear`, `linear`."""
    num_train_timesteps: int = 1000
    """Diffusion timesteps of the training schedule."""
    sampler: str = "ddim"
    """Sampler shipped with the model: `ddim`, `dpmsolver` (DPM-Solver++ 2M) or `euler`."""
    sample_steps: int = 25
    """Default number of sampling steps."""
    guidance_scale: float = 3.0
    """Default classifier-free guidance scale (1 = no guidance, a single forward per step)."""

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one entry per block_out_channels level")
        if IMAGE_SIZE % self.patch_size or (IMAGE_SIZE // self.patch_size) % 2 ** (
            len(self.block_out_channels) - 1
        ):
            raise ValueError(
                f"patch_size {self.patch_size} with {len(self.block_out_channels)} levels does not "
                f"divide the {IMAGE_SIZE} px image evenly"
            )
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide {self.block_out_channels}")
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {DENOISERS}, got {self.denoiser!r}")
        if self.dit_width % self.dit_head_dim:
            raise ValueError(
                f"dit_width {self.dit_width} is not a multiple of dit_head_dim {self.dit_head_dim}"
            )
        if self.dit_patch_size < 1 or (IMAGE_SIZE // self.patch_size) % self.dit_patch_size:
            raise ValueError(
                f"dit_patch_size {self.dit_patch_size} does not divide the "
                f"{IMAGE_SIZE // self.patch_size}-cell folded grid"
            )
        if self.coord_channels and self.denoiser != "unet":
            raise ValueError("coord_channels is a UNet option (the DiT has position embeddings)")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")

    @property
    def text_width(self) -> int:
        """Width of a token's text features: the denoiser's `cross_attention_dim` (and pooled-text
        input); twice `text_hidden_size` with `clip+t5`."""
        return self.text_hidden_size * (2 if self.text_encoder == "clip+t5" else 1)


def build_unet(arch: WorldArch):
    """The denoiser of `arch`: a `UNet2DConditionModel` or a `WorldDiT` (the pipeline's ``unet``)."""
    if arch.denoiser == "dit":
        return build_dit(arch)
    from diffusers import UNet2DConditionModel  # lazy: loads diffusers

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.attention_levels))
    channels = IMAGE_CHANNELS * arch.patch_size**2
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // arch.patch_size,
        in_channels=channels + (2 if arch.coord_channels else 0),
        out_channels=channels,
        block_out_channels=arch.block_out_channels,
        layers_per_block=arch.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=arch.text_width,
        attention_head_dim=arch.attention_head_dim,
        norm_num_groups=arch.norm_num_groups,
        class_embed_type="projection" if arch.pooled_text else None,
        projection_class_embeddings_input_dim=arch.text_width if arch.pooled_text else None,
    )


def build_dit(arch: WorldArch):
    channels = IMAGE_CHANNELS * arch.patch_size**2
    return WorldDiT(
        sample_size=IMAGE_SIZE // arch.patch_size,
        in_channels=channels,
        out_channels=channels,
        patch_size=arch.dit_patch_size,
        width=arch.dit_width,
        depth=arch.dit_depth,
        attention_head_dim=arch.dit_head_dim,
        ff_mult=arch.dit_ff_mult,
        cross_attention_dim=arch.text_width,
        class_embed_type="projection" if arch.pooled_text else None,
        projection_class_embeddings_input_dim=arch.text_width if arch.pooled_text else None,
    )


def _clip_config(arch: WorldArch, vocab: dict):
    from transformers import CLIPTextConfig  # lazy: loads transformers

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=arch.text_hidden_size,
        intermediate_size=arch.text_hidden_size * arch.text_ff_mult,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
    )


def _t5_config(arch: WorldArch, vocab: dict):
    from transformers import T5Config  # lazy: loads transformers

    return T5Config(
        vocab_size=len(vocab),
        d_model=arch.text_hidden_size,
        d_kv=arch.text_hidden_size // arch.text_heads,
        d_ff=arch.text_hidden_size * arch.text_ff_mult,
        num_layers=arch.text_layers,
        num_heads=arch.text_heads,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=MAX_LENGTH,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<eos>"],
        decoder_start_token_id=vocab["<pad>"],
    )


def build_text_encoder(arch: WorldArch):
    vocab = build_vocab()
    if arch.text_encoder == "clip":
        from transformers import CLIPTextModel  # lazy: loads transformers

        return CLIPTextModel(_clip_config(arch, vocab))
    if arch.text_encoder == "t5":
        from transformers import T5EncoderModel  # lazy: loads transformers

        return T5EncoderModel(_t5_config(arch, vocab))
    from .dual_text import DualTextEncoder  # lazy: loads transformers

    return DualTextEncoder(
        clip_config=_clip_config(arch, vocab).to_dict(), t5_config=_t5_config(arch, vocab).to_dict()
    )


def scheduler_config(arch: WorldArch) -> dict:
    return dict(
        num_train_timesteps=arch.num_train_timesteps,
        beta_schedule=arch.beta_schedule,
        prediction_type=arch.prediction_type,
    )


def build_sampler(arch: WorldArch):
    """The inference scheduler shipped in the pipeline (deterministic samplers only)."""
    # lazy: loads diffusers
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    common = scheduler_config(arch)
    if arch.sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if arch.sampler == "dpmsolver":
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    return EulerDiscreteScheduler(**common, timestep_spacing="trailing")


def build_training_scheduler(config: dict):
    """The DDPM scheduler used for training (add_noise, get_velocity) from any scheduler config."""
    from diffusers import DDPMScheduler  # lazy: loads diffusers

    keep = ("num_train_timesteps", "beta_schedule", "prediction_type", "beta_start", "beta_end")
    return DDPMScheduler(**{k: config[k] for k in keep if k in config})


def build_components(arch: WorldArch) -> dict:
    """Fresh (randomly initialised) components of a `WorldPipeline`."""
    return dict(
        unet=build_unet(arch),
        text_encoder=build_text_encoder(arch),
        tokenizer=build_tokenizer(),
        scheduler=build_sampler(arch),
    )


__all__ = [
    "DENOISERS",
    "IMAGE_CHANNELS",
    "IMAGE_SIZE",
    "SAMPLERS",
    "TEXT_ENCODERS",
    "WorldArch",
    "build_components",
    "build_dit",
    "build_sampler",
    "build_text_encoder",
    "build_training_scheduler",
    "build_unet",
    "count_parameters",
    "scheduler_config",
]

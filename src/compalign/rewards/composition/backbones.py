"""Image-text backbones of the composition reward models (``create_backbone(spec)``).

A `Backbone` turns ``(images [B, 3, H, W] in [0, 1], prompts)`` into features ``[B, F]``
(differentiable in the images; the preprocessing is part of it) and proposes the head that scores
them. Specs (``NAME`` or ``NAME:SOURCE``):

- ``world-clip`` / ``world-clip:FOLDER``: the world CLIP (`WorldCLIPModel`; the shipped weights,
  a model folder or a run folder). Dual encoder: image and prompt embeddings are L2-normalised and
  fused as ``[sqrt(D) i, sqrt(D) t, D (i * t)]`` (`fuse`), scored by a `FusionHead`.
- ``clip:PATH_OR_ID``: a transformers ``CLIPModel`` folder or hub id (loaded by the real reward
  adapter `CLIPScoreReward`, with its differentiable CLIP preprocessing); same fusion and head.
- ``blip:PATH`` (``blip`` alone: the hub's ``THUDM/ImageReward``): ImageReward's BLIP (loaded by
  `ImageRewardReward`): the prompt is encoded by BLIP's text encoder with cross-attention to the
  image tokens and the [CLS] output is the feature; the head is ImageReward's own MLP, initialised
  from the checkpoint (IterComp starts its reward models from ImageReward).

Frozen layers (`apply_freeze_ratio`, IterComp's ``fix_rate``): in each tower (vision, text) the
embeddings and the lowest ``int(ratio * layers)`` transformer layers are frozen, the rest (upper
layers, final norms, projections) train; ratio 1 freezes the whole backbone (only the head
trains). IterComp (after ImageReward's trainer) froze parameters in name order up to and including
the first parameter of layer ``int(ratio * layers)``; here that layer stays wholly trainable.
Parameters the features never use (CLIP's ``logit_scale``) are always frozen.

A backbone rebuilds without its original checkpoint: `config()` (JSON) + `save_assets(folder)`
(tokenizer files) + the model's safetensors state dict; `backbone_from_config` does the inverse.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from compalign.generators.world.tokenizer import MAX_LENGTH

from ..real.clip_score import CLIPScoreReward
from ..real.common import MLPHead
from ..real.image_reward import ImageRewardReward
from ..real.preprocess import PreprocessConfig, clip_preprocess
from ..world_clip.model import IMAGE_SIZE, WorldCLIPModel, eos_positions, quiet_transformers
from ..world_clip.reward import resolve_model_dir
from .folder import BACKBONE_DIR, CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, load_weights, saved_model_dir

# transformers and the world CLIP (which loads transformers) are imported where a backbone is built

TOKENIZER_DIR = "tokenizer"


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # lazy: loads transformers
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers.modeling_utils import no_init_weights  # lazy: loads transformers
    return no_init_weights()


def _checkpoint(model) -> None:
    """Activation checkpointing of a transformers model (non-reentrant)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False})
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ------------------------------------------------------------------------------------------- heads
class FusionHead(torch.nn.Module):
    """Score of fused dual-encoder features ``f = [sqrt(D) i, sqrt(D) t, D (i * t)]`` (`fuse`):
    ``linear(f) + mlp(f)`` with ``mlp = Linear(3D, hidden) -> GELU -> Linear(hidden, 1)``.

    Initialisation: the linear term reads only the product block, with weight ``init_scale / D``,
    and the MLP's last layer is zero, so the untrained head scores ``init_scale * cos(i, t)``: the
    backbone's own CLIP score (with ``init_scale`` its logit scale). Training refines that ranking
    instead of starting from noise. ``hidden=0`` drops the MLP: the score stays linear in the fused
    features, a learned re-weighting of the CLIP score.

    ``image_block=False`` leaves the image-only block ``sqrt(D) i`` out of the head's input: every
    term that reads the image then reads it through its product with the prompt, so the head has
    no prompt-independent image term. (Measured on the world: lower pair accuracy and no better as
    a ReNO reward; see docs/results/reward_models_world, "The ReNO step size of standardised
    rewards".)
    """

    def __init__(
        self,
        embed_dim: int,
        hidden: int = 256,
        init_scale: float = 10.0,
        extra: int = 0,
        image_block: bool = True,
    ):
        super().__init__()
        self.embed_dim, self.hidden, self.extra = int(embed_dim), int(hidden), int(extra)
        self.image_block = bool(image_block)
        self.skip = 0 if self.image_block else self.embed_dim  # input features dropped from the front
        d = self.embed_dim
        n = 3 * d + self.extra - self.skip  # `extra` features follow the fused ones
        self.linear = torch.nn.Linear(n, 1)
        self.mlp = None  # hidden 0: the linear term alone (a learned re-weighting of the CLIP score)
        if self.hidden > 0:
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(n, self.hidden), torch.nn.GELU(), torch.nn.Linear(self.hidden, 1)
            )
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[0, 2 * d - self.skip : 3 * d - self.skip] = float(init_scale) / d
            self.linear.bias.zero_()
            if self.mlp is not None:
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features[..., self.skip :]  # [B, 3D + extra - skip]
        out = self.linear(features)
        return out if self.mlp is None else out + self.mlp(features)

    def config(self) -> dict:
        c = {"type": "fusion", "embed_dim": self.embed_dim, "hidden": self.hidden}
        c |= {"extra": self.extra} if self.extra else {}
        return c | ({"image_block": False} if not self.image_block else {})


def fuse(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``[sqrt(D) i, sqrt(D) t, D (i * t)]`` of L2-normalised embeddings (float32; entries ~1)."""
    i, t = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    d = i.shape[-1]
    return torch.cat([i * math.sqrt(d), t * math.sqrt(d), i * t * d], dim=-1)


def build_head(config: dict) -> torch.nn.Module:
    """A head from its `config()` (weights random / zero: load them afterwards)."""
    kind = config.get("type")
    if kind == "fusion":
        return FusionHead(
            config["embed_dim"],
            config["hidden"],
            extra=config.get("extra", 0),
            image_block=config.get("image_block", True),
        )
    if kind == "imagereward_mlp":
        return MLPHead(config["input_size"])
    raise ValueError(f"unknown head type {kind!r} (expected fusion or imagereward_mlp)")


def head_config(head: torch.nn.Module) -> dict:
    if isinstance(head, FusionHead):
        return head.config()
    if isinstance(head, MLPHead):
        return {"type": "imagereward_mlp", "input_size": head.input_size}
    raise TypeError(f"no config for head type {type(head).__name__}")


# ------------------------------------------------------------------------------------------- backbones
class Backbone(torch.nn.Module):
    """``features(images, prompts) -> [B, F]`` (float32, differentiable in the images)."""

    kind: str = "backbone"
    head_is_pretrained: bool = False  # the head from `make_head` carries trained weights

    source: str = "<module>"

    @property
    def input_size(self) -> int:
        """Native square input resolution (training images are loaded at this size)."""
        raise NotImplementedError

    def features(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def make_head(self, hidden: int = 256, image_block: bool = True) -> torch.nn.Module:  # pragma: no cover
        raise NotImplementedError

    def towers(self) -> dict[str, tuple[list[torch.nn.Module], torch.nn.ModuleList]]:
        """``{tower: (bottom modules (embeddings), transformer layers bottom-up)}``."""
        raise NotImplementedError  # pragma: no cover

    def unused_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that `features` never uses (always frozen)."""
        return []

    def config(self) -> dict:  # pragma: no cover
        raise NotImplementedError

    def save_assets(self, folder: Path) -> None:
        """Write the non-weight files the backbone needs to be rebuilt (tokenizer)."""

    def text_window(self) -> tuple[object, int] | None:
        """``(tokenizer, max tokens)`` of the text encoder (None: no limit to report)."""
        return None

    def count_truncated(self, prompts: list[str]) -> int:
        """How many of `prompts` are longer than the text window (their ends are cut off; IterComp
        trained on prompts longer than ImageReward's 35 tokens)."""
        window = self.text_window()
        if window is None or not prompts:
            return 0
        tokenizer, limit = window
        ids = tokenizer(list(dict.fromkeys(prompts)), truncation=False, verbose=False)["input_ids"]
        return sum(len(x) > limit for x in ids)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in the backward pass where the towers support it."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class _DualEncoder(Backbone):
    """Shared parts of the CLIP-like backbones: fusion features, fusion head, towers."""

    def clip_model(self):  # the transformers CLIPModel
        raise NotImplementedError  # pragma: no cover

    @property
    def embed_dim(self) -> int:
        return int(self.clip_model().config.projection_dim)

    def make_head(self, hidden: int = 256, image_block: bool = True) -> torch.nn.Module:
        scale = float(self.clip_model().logit_scale.detach().float().exp().clamp(max=100.0))
        return FusionHead(self.embed_dim, hidden, init_scale=scale, image_block=image_block)

    def towers(self):
        clip = self.clip_model()
        v, t = clip.vision_model, clip.text_model
        return {
            "vision": ([v.embeddings, v.pre_layrnorm], v.encoder.layers),
            "text": ([t.embeddings], t.encoder.layers),
        }

    def unused_parameters(self):
        return [self.clip_model().logit_scale]

    def gradient_checkpointing_enable(self) -> None:
        _checkpoint(self.clip_model())


class WorldCLIPBackbone(_DualEncoder):
    """The world CLIP as a backbone (its own differentiable preprocessing: resize to 32 px,
    normalise)."""

    kind = "world-clip"

    def __init__(self, model, source: str = "<module>"):
        super().__init__()
        self.model = model
        self.source = source

    @classmethod
    def from_spec(cls, source: str | None = None) -> WorldCLIPBackbone:
        folder = resolve_model_dir(source or "world-clip")
        return cls(WorldCLIPModel.from_pretrained(folder), source=source or "world-clip")

    def clip_model(self):
        return self.model.clip

    @property
    def input_size(self) -> int:
        return IMAGE_SIZE

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        # `WorldCLIPModel.preprocess`, in float32 whatever the weights' dtype (torch has no bf16
        # antialiased resize on the CPU)
        m, size = self.model, self.input_size
        x = images.to(m.pixel_mean.device, torch.float32)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return ((x - m.pixel_mean.float()) / m.pixel_std.float()).to(self.dtype)

    def features(self, images, prompts):
        m = self.model
        return fuse(m.encode_pixels(self.pixels(images)), m.encode_text(list(prompts)))

    def config(self) -> dict:
        m = self.model
        return {
            "clip_config": m.clip.config.to_dict(),
            "mean": m.pixel_mean.flatten().tolist(),
            "std": m.pixel_std.flatten().tolist(),
            "arch": m.arch,
        }

    def save_assets(self, folder: Path) -> None:
        self.model.tokenizer.save_pretrained(folder / TOKENIZER_DIR)

    def text_window(self):
        return self.model.tokenizer, MAX_LENGTH

    @classmethod
    def from_config(cls, config: dict, folder: Path, source: str) -> WorldCLIPBackbone:
        from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast  # lazy: loads transformers

        with quiet_transformers():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / TOKENIZER_DIR)
        with _no_init_weights():
            clip = CLIPModel(CLIPConfig.from_dict(config["clip_config"]))
        model = WorldCLIPModel(clip, tokenizer, config["mean"], config["std"], config.get("arch"))
        return cls(model, source=source)


class WorldBlipBackbone(WorldCLIPBackbone):
    """ImageReward's design on the world: the world CLIP's towers plus an image-grounded text
    encoder, as in BLIP. The prompt's token states (world-CLIP text tower) pass through
    `fusion_layers` transformer decoder layers (self-attention, cross-attention to the image's
    patch tokens from the world-CLIP vision tower, MLP; `torch.nn.TransformerDecoder`), and the
    ``<eos>`` output is the grounded feature. A dual encoder pools each side alone, so it sees "a
    red cube left of a blue ball" and its reverse almost alike; cross-attention lets the text read
    where each object is.

    Features: ``[fuse(i, t), grounded]`` (`fuse`: the world-CLIP dual-encoder block), scored by a
    `FusionHead` whose untrained start is the world-CLIP score; the grounded block is learned.

    Specs: ``world-blip`` (the shipped world CLIP, new fusion layers), ``world-blip:FOLDER`` where
    FOLDER is a world-CLIP model folder, or a saved ``world-blip`` composition reward model (its
    backbone and head: a pretraining stage to start from).
    """

    kind = "world-blip"

    def __init__(self, model, fusion: dict | None = None, source: str = "<module>"):
        super().__init__(model, source=source)
        cfg = model.clip.config
        width = int(cfg.text_config.hidden_size)
        f = {"layers": 2, "heads": 4, "ff_mult": 2} | dict(fusion or {})
        self.fusion_config = f
        self.memory_proj = torch.nn.Linear(int(cfg.vision_config.hidden_size), width)
        layer = torch.nn.TransformerDecoderLayer(
            width, int(f["heads"]), int(f["ff_mult"]) * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.fusion = torch.nn.TransformerDecoder(layer, int(f["layers"]), norm=torch.nn.LayerNorm(width))
        self._pretrained_head: list = [None]  # set when loaded from a saved reward model

    @property
    def head_is_pretrained(self) -> bool:
        return self._pretrained_head[0] is not None

    @classmethod
    def from_spec(cls, source: str | None = None) -> WorldBlipBackbone:
        saved_dir = saved_model_dir(source) if source else None
        if saved_dir is not None:
            config, bb, head = load_saved(saved_dir)
            if not isinstance(bb, WorldBlipBackbone):
                raise ValueError(f"{source}: a {bb.kind} reward model, not a world-blip one")
            bb.requires_grad_(True)
            bb._pretrained_head = [head.requires_grad_(True)]
            bb.source = str(source)
            return bb
        base = WorldCLIPBackbone.from_spec(source)
        return cls(base.model, source=source or "world-blip")

    def make_head(self, hidden: int = 256, image_block: bool = True) -> torch.nn.Module:
        if self._pretrained_head[0] is not None:
            if image_block != self._pretrained_head[0].image_block:
                raise ValueError(
                    f"this world-blip backbone ({self.source}) brings its trained head "
                    f"(image_block={self._pretrained_head[0].image_block}): a new head with "
                    f"image_block={image_block} would not be that head"
                )

            return copy.deepcopy(self._pretrained_head[0])
        scale = float(self.clip_model().logit_scale.detach().float().exp().clamp(max=100.0))
        width = self.fusion.layers[0].linear1.in_features
        return FusionHead(self.embed_dim, hidden, init_scale=scale, extra=width, image_block=image_block)

    def features(self, images, prompts):
        m, clip = self.model, self.model.clip
        vis = clip.vision_model(pixel_values=self.pixels(images))
        patches = self.memory_proj(vis.last_hidden_state)  # [B, 1 + patches, W]
        ids, mask = m.token_ids(list(prompts), device=patches.device)
        tokens = clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, W]
        rows, eos = torch.arange(ids.shape[0], device=ids.device), eos_positions(ids, m.eos_id)
        dual = fuse(clip.visual_projection(vis.pooler_output), clip.text_projection(tokens[rows, eos]))
        grounded = self.fusion(tokens, patches, tgt_key_padding_mask=mask == 0)  # [B, T, W]
        return torch.cat([dual, grounded[rows, eos].float()], dim=-1)

    def config(self) -> dict:
        return super().config() | {"fusion": dict(self.fusion_config)}

    @classmethod
    def from_config(cls, config: dict, folder: Path, source: str) -> WorldBlipBackbone:
        base = WorldCLIPBackbone.from_config(config, folder, source)
        return cls(base.model, fusion=config.get("fusion"), source=source)


class CLIPBackbone(_DualEncoder):
    """A transformers CLIP (loaded by `CLIPScoreReward`), with its differentiable preprocessing."""

    kind = "clip"

    def __init__(self, model, tokenizer, preprocess_config, max_length: int, source: str = "<module>"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess_config
        self.max_length = int(max_length)
        self.source = source

    @classmethod
    def from_spec(cls, source: str | None = None) -> CLIPBackbone:
        r = CLIPScoreReward(source, frozen=False)
        return cls(r.model, r.tokenizer, r.preprocess_config, r.max_length, source=r.source)

    def clip_model(self):
        return self.model

    @property
    def input_size(self) -> int:
        return int(self.preprocess_config.crop_size[0])

    def features(self, images, prompts):
        pixels = clip_preprocess(images.to(self.device), self.preprocess_config).to(self.dtype)
        img = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = self.model.text_model(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        return fuse(img, self.model.text_projection(out.pooler_output))

    def config(self) -> dict:
        pc = asdict(self.preprocess_config)
        return {"clip_config": self.model.config.to_dict(), "preprocess": pc, "max_length": self.max_length}

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)

    def text_window(self):
        return self.tokenizer, self.max_length

    @classmethod
    def from_config(cls, config: dict, folder: Path, source: str) -> CLIPBackbone:
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel  # lazy: loads transformers

        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        with _no_init_weights():
            model = CLIPModel(CLIPConfig.from_dict(config["clip_config"]))
        pc = dict(config["preprocess"])
        pc["crop_size"], pc["mean"], pc["std"] = tuple(pc["crop_size"]), tuple(pc["mean"]), tuple(pc["std"])
        return cls(model, tokenizer, PreprocessConfig(**pc), config["max_length"], source=source)


class BlipBackbone(Backbone):
    """ImageReward's BLIP: [CLS] output of the image-grounded text encoder (as ImageReward scores)."""

    kind = "blip"
    head_is_pretrained = True

    def __init__(
        self, vision, text, tokenizer, preprocess_config, max_length: int, head=None, source="<module>"
    ):
        super().__init__()
        self.vision = vision
        self.text = text
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess_config
        self.max_length = int(max_length)
        self.source = source
        self._head = [head]  # kept outside the module tree: the model owns the head

    @classmethod
    def from_spec(cls, source: str | None = None) -> BlipBackbone:
        r = ImageRewardReward(source, frozen=False)
        return cls(
            r.vision, r.text, r.tokenizer, r.preprocess_config, r.max_length, head=r.head, source=r.source
        )

    @property
    def input_size(self) -> int:
        return int(self.preprocess_config.crop_size[0])

    def make_head(self, hidden: int = 256, image_block: bool = True) -> torch.nn.Module:
        if not image_block:
            raise ValueError(
                "a BLIP backbone scores one fused feature (ImageReward's head): no image block to drop"
            )

        head = self._head[0]
        if head is None:  # rebuilt from a config: the model loads the head's weights
            return MLPHead(int(self.text.config.hidden_size))
        return copy.deepcopy(head)

    def features(self, images, prompts):
        pixels = clip_preprocess(images.to(self.device), self.preprocess_config).to(self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = self.text(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        return out.last_hidden_state[:, 0, :].float()

    def towers(self):
        return {
            "vision": ([self.vision.embeddings], self.vision.encoder.layers),
            "text": ([self.text.embeddings], self.text.encoder.layer),
        }

    def gradient_checkpointing_enable(self) -> None:
        # transformers does not checkpoint BlipTextModel (35 tokens: cheap); the ViT is the cost
        _checkpoint(self.vision)

    def config(self) -> dict:
        return {
            "vision_config": self.vision.config.to_dict(),
            "text_config": self.text.config.to_dict(),
            "preprocess": asdict(self.preprocess_config),
            "max_length": self.max_length,
        }

    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)

    def text_window(self):
        return self.tokenizer, self.max_length

    @classmethod
    def from_config(cls, config: dict, folder: Path, source: str) -> BlipBackbone:
        # lazy: loads transformers
        from transformers import (
            BertTokenizer,
            BlipTextConfig,
            BlipTextModel,
            BlipVisionConfig,
            BlipVisionModel,
        )

        tokenizer = BertTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        with _no_init_weights():
            vision = BlipVisionModel(BlipVisionConfig.from_dict(config["vision_config"]))
            text = BlipTextModel(BlipTextConfig.from_dict(config["text_config"]), add_pooling_layer=False)
        pc = dict(config["preprocess"])
        pc["crop_size"], pc["mean"], pc["std"] = tuple(pc["crop_size"]), tuple(pc["mean"]), tuple(pc["std"])
        return cls(vision, text, tokenizer, PreprocessConfig(**pc), config["max_length"], source=source)


# ------------------------------------------------------------------------------------------- registry
_BACKBONES: dict[str, type[Backbone]] = {
    "world-clip": WorldCLIPBackbone,
    "world-blip": WorldBlipBackbone,
    "clip": CLIPBackbone,
    "blip": BlipBackbone,
}


def register_backbone(name: str, cls: type[Backbone], *, overwrite: bool = False) -> None:
    """Add a backbone class (with ``from_spec(source)``, ``from_config(config, folder, source)``)."""
    if not name or ":" in name:
        raise ValueError(f"backbone name must be non-empty without ':', got {name!r}")
    if name in _BACKBONES and not overwrite:
        raise ValueError(f"backbone {name!r} is already registered (pass overwrite=True to replace it)")
    _BACKBONES[name] = cls


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(spec: str | Backbone) -> Backbone:
    """A backbone from ``NAME`` or ``NAME:SOURCE`` (``world-clip``, ``clip:FOLDER``, ``blip:FOLDER``),
    or a `Backbone` (returned as is) or a `WorldCLIPModel` (wrapped)."""
    if isinstance(spec, Backbone):
        return spec

    if isinstance(spec, WorldCLIPModel):
        return WorldCLIPBackbone(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backbone spec must be a non-empty string, got {spec!r}")
    name, sep, source = spec.partition(":")
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r} in {spec!r}; known: {', '.join(list_backbones())}")
    if sep and not source:
        raise ValueError(f"backbone spec {spec!r} has an empty source after ':'")
    return _BACKBONES[name].from_spec(source or None)


def backbone_from_config(kind: str, config: dict, folder: Path, source: str = "<saved>") -> Backbone:
    """Rebuild a saved backbone's architecture (weights uninitialised: load the state dict after)."""
    if kind not in _BACKBONES:
        raise KeyError(f"unknown backbone kind {kind!r}; known: {', '.join(list_backbones())}")
    return _BACKBONES[kind].from_config(config, Path(folder), source)


def load_saved(folder: Path) -> tuple[dict, Backbone, torch.nn.Module]:
    """(config, backbone, head) of a saved composition reward model folder, weights loaded (float32,
    eval mode)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder / CONFIG_FILE}: format_version {config.get('format_version')!r} "
            f"is not supported (expected {FORMAT_VERSION})"
        )
    bb = config["backbone"]
    backbone = backbone_from_config(bb["kind"], bb["config"], folder / BACKBONE_DIR, bb["source"])
    parts = torch.nn.ModuleDict({"backbone": backbone.float(), "head": build_head(config["head"])})
    load_weights(parts, folder / WEIGHTS_FILE)  # a config may carry the dtype it was saved in
    return config, parts["backbone"].eval(), parts["head"].eval()


# ------------------------------------------------------------------------------------------- freezing
def freeze_plan(backbone: Backbone, ratio: float) -> dict[str, dict]:
    """Per tower: its layer count and how many (from the bottom) `ratio` freezes."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"freeze_ratio must be in [0, 1], got {ratio}")
    plan = {}
    for name, (_, layers) in backbone.towers().items():
        n = len(layers)
        k = n if ratio >= 1.0 else int(n * ratio + 1e-9)
        plan[name] = {"layers": n, "frozen_layers": k, "embeddings_frozen": ratio > 0}
    return plan


def apply_freeze_ratio(backbone: Backbone, ratio: float) -> dict:
    """Freeze the lowest `ratio` of each tower (see the module notes); returns a summary with the
    per-tower plan and trainable / frozen parameter counts. Everything else becomes trainable."""
    plan = freeze_plan(backbone, ratio)
    backbone.requires_grad_(ratio < 1.0)
    if 0.0 < ratio < 1.0:
        for name, (bottom, layers) in backbone.towers().items():
            for m in bottom:
                m.requires_grad_(False)
            for layer in list(layers)[: plan[name]["frozen_layers"]]:
                layer.requires_grad_(False)
    for p in backbone.unused_parameters():
        p.requires_grad_(False)
    params = list(backbone.parameters())
    return {
        "freeze_ratio": ratio,
        "towers": plan,
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in params if not p.requires_grad),
    }

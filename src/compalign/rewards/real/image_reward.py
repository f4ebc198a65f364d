"""`ImageRewardReward`: ImageReward v1.0 (BLIP ViT-L image encoder, BERT "med" text encoder with
cross-attention to the image, MLP head), standardised with the model's mean 0.16717362830052426 and
std 1.0333394966054072 (scores ~N(0, 1) over its training data). ReNO's loss is ``2 - score`` with
weight 1.0.

Scoring follows ImageReward's ``score``: the prompt is tokenised by BLIP's BERT tokenizer
(``bert-base-uncased`` plus ``[DEC]`` / ``[ENC]``, padded to 35 tokens), encoded with the image
tokens as cross-attention input, and the first ([CLS]) token's output goes through the MLP head.

The official checkpoint ``ImageReward.pt`` (hub ``THUDM/ImageReward``, beside ``med_config.json``) is
a state dict of BLIP's own modules (``blip.visual_encoder.blocks.0.attn.qkv.weight``,
``blip.text_encoder.encoder.layer.0.crossattention.self.query.weight``, ``mlp.layers.0.weight``, ...).
It is mapped key by key onto transformers' ``BlipVisionModel`` and ``BlipTextModel`` (the modules of
``BlipForImageTextRetrieval``'s ITM path); the mapping is exact for every key the score uses. The
keys the score does not use (``blip.vision_proj``, ``blip.text_proj``: BLIP's contrastive
projections) are dropped; anything else unknown is an error.

Not read from the checkpoint: the vision tower's number of attention heads (not recoverable from
tensor shapes; BLIP's ViTs use 64-dimensional heads, so ``width // 64``: 16 for ViT-L; override with
`vision_heads`) and its LayerNorm epsilon (BLIP's ViT uses 1e-6).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..base import check_inputs
from .common import MLPHead, RealReward, hub_file, load_torch_state_dict, resolve_dtype
from .preprocess import PreprocessConfig, clip_preprocess
from .sources import hub_options, resolve_source

IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
BLIP_TOKENIZER = "bert-base-uncased"
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35
BLIP_VIT_EPS = 1e-6

_VIS = "blip.visual_encoder."
_TXT = "blip.text_encoder."
_VIS_BLOCK = re.compile(r"^blip\.visual_encoder\.blocks\.(\d+)\.(.+)$")
_VIS_BLOCK_PARTS = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.qkv.bias": "self_attn.qkv.bias",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_VIS_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
# BLIP's med.py BertModel and transformers' BlipTextModel share module names (the latter is a port)
_TXT_SAME = re.compile(
    r"^(embeddings\.(word_embeddings|position_embeddings|LayerNorm)\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(attention|crossattention)\.(self\.(query|key|value)|output\.(dense|LayerNorm))"
    r"\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(intermediate\.dense|output\.dense|output\.LayerNorm)\.(weight|bias))$"
)
_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def image_reward_to_hf_state_dicts(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split the official ``ImageReward.pt`` state dict into ``(vision, text, head)`` state dicts for
    ``BlipVisionModel``, ``BlipTextModel(add_pooling_layer=False)`` and `MLPHead`. Raises `ValueError`
    naming any key with no counterpart (other than the unused contrastive projections)."""
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(_UNUSED):
            continue
        m = _VIS_BLOCK.match(key)
        if m and m.group(2) in _VIS_BLOCK_PARTS:
            vision[f"encoder.layers.{int(m.group(1))}.{_VIS_BLOCK_PARTS[m.group(2)]}"] = value
        elif key.startswith(_VIS) and key[len(_VIS) :] in _VIS_TOP:
            name = _VIS_TOP[key[len(_VIS) :]]
            vision[name] = value
        elif key.startswith(_TXT) and _TXT_SAME.match(key[len(_TXT) :]):
            text[key[len(_TXT) :]] = value
        elif key.startswith("mlp.layers."):
            head[key[len("mlp.") :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"ImageReward checkpoint keys with no transformers BLIP counterpart: {', '.join(unknown[:8])}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    for part, sd in (("visual_encoder", vision), ("text_encoder", text), ("mlp", head)):
        if not sd:
            raise ValueError(f"the checkpoint has no {part} weights (is it an ImageReward.pt?)")
    return vision, text, head


def blip_configs_from_checkpoint(
    vision_sd: dict[str, torch.Tensor], med_config: dict, vision_heads: int | None = None
):
    """``(BlipVisionConfig, BlipTextConfig)`` from the mapped vision weights' shapes and BLIP's
    ``med_config.json``."""
    from transformers import BlipTextConfig, BlipVisionConfig  # lazy: loads transformers

    width = int(vision_sd["embeddings.class_embedding"].shape[-1])
    patch = int(vision_sd["embeddings.patch_embedding.weight"].shape[-1])
    n_pos = int(vision_sd["embeddings.position_embedding"].shape[1])
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid != n_pos - 1:
        raise ValueError(f"vision position embedding of {n_pos} tokens is not 1 + a square grid")
    layers = 1 + max(int(k.split(".")[2]) for k in vision_sd if k.startswith("encoder.layers."))
    heads = int(vision_heads) if vision_heads else max(width // 64, 1)
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=int(vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=BLIP_VIT_EPS,
    )
    if not med_config.get("add_cross_attention", False):
        raise ValueError("med_config.json must have add_cross_attention: true (ImageReward's text encoder)")
    if med_config.get("position_embedding_type", "absolute") != "absolute":
        raise NotImplementedError("only absolute position embeddings are supported")
    text = BlipTextConfig(
        vocab_size=int(med_config["vocab_size"]),
        hidden_size=int(med_config["hidden_size"]),
        encoder_hidden_size=width,  # BLIP sets encoder_width to the vision width
        intermediate_size=int(med_config["intermediate_size"]),
        num_hidden_layers=int(med_config["num_hidden_layers"]),
        num_attention_heads=int(med_config["num_attention_heads"]),
        max_position_embeddings=int(med_config["max_position_embeddings"]),
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        hidden_dropout_prob=float(med_config.get("hidden_dropout_prob", 0.0)),
        attention_probs_dropout_prob=float(med_config.get("attention_probs_dropout_prob", 0.0)),
        pad_token_id=int(med_config.get("pad_token_id", 0)),
        is_decoder=True,  # builds the cross-attention layers; the forward runs bidirectionally
    )
    return vision, text


def _load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("position_ids")]
    unexpected = [k for k in sd if k not in expected]
    bad_shape = [k for k in sd if k in expected and sd[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"ImageReward {what} weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {bad_shape[:5]}"
        )
    module.load_state_dict(sd, strict=False)


class ImageRewardReward(RealReward):
    """ImageReward v1.0 score (standardised; higher is better).

    Args:
        checkpoint: ``ImageReward.pt`` or a folder holding it and ``med_config.json`` (and optionally
            a BERT ``vocab.txt``); ``None``: both downloaded from ``hub_repo``.
        med_config: path of ``med_config.json`` (default: beside the checkpoint, else the hub).
        tokenizer: folder or hub id of the BERT tokenizer (default: the checkpoint folder if it has a
            ``vocab.txt``, else ``bert-base-uncased``).
        vision_heads: attention heads of the ViT (default ``width // 64``).
        device, dtype, frozen, cache_dir, local_files_only: as in `CLIPScoreReward`.
        gradient_checkpointing: checkpoints the ViT (transformers does not support checkpointing
            ``BlipTextModel``; the text encoder sees 35 tokens and is cheap).
    """

    name = "imagereward"
    loss_offset = 2.0
    default_weight = 1.0
    source_options = {"tokenizer": "tokenizer", "med_config": "med_config"}
    """``imagereward:CHECKPOINT,tokenizer=FOLDER,med_config=FILE``, all offline."""
    mean = IMAGE_REWARD_MEAN
    std = IMAGE_REWARD_STD

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        med_config: str | Path | None = None,
        tokenizer: str | Path | None = None,
        vision_heads: int | None = None,
        hub_repo: str = IMAGE_REWARD_REPO,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        frozen: bool = True,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ):
        super().__init__()
        from transformers import BertTokenizer, BlipTextModel, BlipVisionModel  # lazy: loads transformers

        try:
            from transformers.initialization import no_init_weights  # lazy: loads transformers
        except ImportError:  # pragma: no cover - transformers 4.x
            from transformers.modeling_utils import no_init_weights  # lazy: loads transformers

        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        folder = None
        if tokenizer is not None:
            tokenizer, _ = resolve_source(tokenizer, "ImageReward tokenizer")
        if med_config is not None:
            med_config, _ = resolve_source(med_config, "ImageReward med_config.json")
        if checkpoint is None:
            ckpt_file = hub_file(hub_repo, IMAGE_REWARD_FILE, **hub)
        else:
            path = Path(resolve_source(checkpoint, "ImageReward checkpoint")[0])
            if path.is_dir():
                folder, ckpt_file = path, path / IMAGE_REWARD_FILE
            elif path.is_file():
                folder, ckpt_file = path.parent, path
            else:
                raise FileNotFoundError(f"ImageReward checkpoint not found: {checkpoint}")
        if med_config is None:
            local = folder / MED_CONFIG_FILE if folder is not None else None
            med_config = (
                local if local is not None and local.is_file() else hub_file(hub_repo, MED_CONFIG_FILE, **hub)
            )
        med = json.loads(Path(med_config).read_text())
        if tokenizer is None:
            tokenizer = folder if folder is not None and (folder / "vocab.txt").is_file() else BLIP_TOKENIZER

        vision_sd, text_sd, head_sd = image_reward_to_hf_state_dicts(load_torch_state_dict(ckpt_file))
        vision_cfg, text_cfg = blip_configs_from_checkpoint(vision_sd, med, vision_heads)
        with no_init_weights():  # every weight is overwritten below
            self.vision = BlipVisionModel(vision_cfg)
            self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        _load_strict(self.vision, vision_sd, "vision")
        _load_strict(self.text, text_sd, "text")
        self.head = MLPHead.from_state_dict(head_sd)
        if self.head.input_size != text_cfg.hidden_size:
            raise ValueError(
                f"MLP head expects {self.head.input_size} features, text encoder gives {text_cfg.hidden_size}"
            )
        # BLIP's init_tokenizer: bert-base-uncased + [DEC] as bos + [ENC]
        tok_local = Path(str(tokenizer)).exists()
        self.tokenizer = BertTokenizer.from_pretrained(str(tokenizer), **hub_options(tok_local, hub))
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) > text_cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens, the text encoder only {text_cfg.vocab_size}"
            )
        self.source = str(ckpt_file)
        self.max_length = TEXT_MAX_LENGTH
        # ImageReward's _transform: Resize(224, bicubic), CenterCrop(224), CLIP normalisation
        self.preprocess_config = PreprocessConfig.square(int(vision_cfg.image_size))
        self._finish(
            device=device,
            dtype=resolve_dtype(dtype),
            frozen=frozen,
            checkpointed=(self.vision,) if gradient_checkpointing else (),
        )

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def raw_scores(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The MLP head's output before standardisation, float32 `[B]`."""
        pixels = clip_preprocess(images.to(self.device), self.preprocess_config).to(self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        tok = self.tokenize(prompts)
        out = self.text(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )
        return self.head(out.last_hidden_state[:, 0, :]).squeeze(-1).float()

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        if images.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        return ((self.raw_scores(images, prompts) - self.mean) / self.std).float()

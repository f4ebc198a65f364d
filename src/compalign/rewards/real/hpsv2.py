"""`HPSv2Reward`: Human Preference Score v2(.1), the cosine of an open_clip ViT-H-14's normalised
image and prompt embeddings (HPS scores ``image_features @ text_features.T`` of normalised features,
~0.2-0.35 for ordinary images). ReNO's loss is ``1 - score`` with weight 5.0.

The HPS checkpoint is an open_clip state dict (``HPS_v2.1_compressed.pt`` of the hub repository
``xswu/HPSv2``: ``{"state_dict": {...}}`` with keys ``visual.conv1.weight``,
``visual.transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``, ...). It is
converted key by key into a transformers ``CLIPModel`` of the same architecture (open_clip's
standard ViT: pre-LayerNorm blocks, class-token pooling after ``ln_post``, text pooled at the EOT
token (the largest token id, open_clip's ``argmax`` pooling), GELU, projections without bias). The
mapping is exact (the same one the open_clip -> transformers conversions of LAION's models use),
so transformers alone runs it: open_clip (which needs torchvision) is not required. Checkpoints of
architectures it cannot represent (layer scale, attentional pooling, custom attention blocks,
timm or HF towers) are refused with the offending setting or key named.

The tokenizer is CLIP's BPE (the one open_clip ships), read as a transformers ``CLIPTokenizer``
from a local folder or from the LAION ViT-H-14 hub repository (same vocabulary and merges).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..base import check_inputs
from .common import RealReward, hub_file, load_torch_state_dict, normalize, resolve_dtype
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PreprocessConfig, clip_preprocess
from .sources import hub_options, resolve_source

HPS_REPO = "xswu/HPSv2"
HPS_V21_FILE = "HPS_v2.1_compressed.pt"
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"  # the layout of open_clip's hub repositories

# open_clip's model_configs/ViT-H-14.json
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}

# open_clip settings this conversion represents, with the values it requires (None: any value)
_VISION_OK = {
    "layers": None,
    "width": None,
    "head_width": None,
    "mlp_ratio": None,
    "patch_size": None,
    "image_size": None,
    "patch_dropout": None,  # training only
    "output_tokens": None,
    "ls_init_value": (None,),
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable",),
    "final_ln_after_pool": (False,),
    "pool_type": ("tok",),
    "block_type": (None, "default"),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
}
_TEXT_OK = {
    "context_length": None,
    "vocab_size": None,
    "width": None,
    "heads": None,
    "layers": None,
    "mlp_ratio": None,
    "output_tokens": None,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "pad_id": None,  # padding sits after the EOT token under a causal mask: no effect on the pooled token
    "eos_id": None,  # only used by pool_type "eos"
    "ls_init_value": (None,),
    "embed_cls": (False,),
    "no_causal_mask": (False,),
    "final_ln_after_pool": (False,),
    "pool_type": ("argmax",),
    "proj_bias": (False,),
    "proj_type": ("linear",),
    "block_type": (None, "default"),
    "act_kwargs": (None, {}),
    "norm_kwargs": (None, {}),
}
_MODEL_OK = {"embed_dim": None, "vision_cfg": None, "text_cfg": None, "quick_gelu": None, "custom_text": None}


def load_open_clip_config(spec: str | Path | dict | None) -> tuple[dict, dict]:
    """``(model_cfg, preprocess_cfg)`` from a dict or JSON file, either a bare open_clip model
    config (``model_configs/*.json``) or a hub ``open_clip_config.json``
    (``{"model_cfg": ..., "preprocess_cfg": ...}``); ``None`` or ``"ViT-H-14"``: ViT-H-14."""
    if spec is None or spec == "ViT-H-14":
        return json.loads(json.dumps(VIT_H_14)), {}
    if isinstance(spec, dict):
        d = spec
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / OPEN_CLIP_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {spec}")
        d = json.loads(path.read_text())
    if "model_cfg" in d:
        return dict(d["model_cfg"]), dict(d.get("preprocess_cfg") or {})
    return dict(d), {}


def _check_supported(cfg: dict, allowed: dict, where: str) -> None:
    for key, value in cfg.items():
        if key not in allowed:
            if value in (None, False, 0, 0.0, {}, "", []):  # a disabled feature
                continue
            raise NotImplementedError(f"open_clip {where} setting {key}={value!r} is not supported")
        ok = allowed[key]
        if ok is not None and value not in ok:
            raise NotImplementedError(f"open_clip {where} setting {key}={value!r} is not supported")


def hf_clip_config_from_open_clip(model_cfg: dict):
    """The transformers ``CLIPConfig`` of an open_clip model config (standard ViT towers only)."""
    from transformers import CLIPConfig  # lazy: loads transformers

    _check_supported(model_cfg, _MODEL_OK, "model")
    v, t = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    _check_supported(v, _VISION_OK, "vision_cfg")
    _check_supported(t, _TEXT_OK, "text_cfg")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    image_size = v.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if image_size[0] != image_size[1]:
            raise NotImplementedError(f"non-square image_size {image_size} is not supported")
        image_size = image_size[0]
    vw, tw = int(v.get("width", 768)), int(t.get("width", 512))
    embed_dim = int(model_cfg["embed_dim"])
    vision_config = {
        "hidden_size": vw,
        "intermediate_size": int(vw * float(v.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(v.get("layers", 12)),
        "num_attention_heads": vw // int(v.get("head_width", 64)),
        "image_size": int(image_size),
        "patch_size": int(v.get("patch_size", 16)),
        "projection_dim": embed_dim,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }
    text_config = {
        "vocab_size": int(t.get("vocab_size", 49408)),
        "hidden_size": tw,
        "intermediate_size": int(tw * float(t.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(t.get("layers", 12)),
        "num_attention_heads": int(t.get("heads", 8)),
        "max_position_embeddings": int(t.get("context_length", 77)),
        "projection_dim": embed_dim,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim)


_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection.weight": "text_projection.weight",  # open_clip's Linear variant
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_DROPPED = {"attn_mask"}  # open_clip's causal-mask buffer in old checkpoints; transformers builds its own


def open_clip_to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip CLIP state dict into transformers ``CLIPModel`` keys (exact: attention
    ``in_proj`` split into q/k/v, projection matrices transposed). Raises `ValueError` naming any key
    it cannot place."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _BLOCK.match(key)
        if m:
            tower = "vision_model" if m.group(1) else "text_model"
            dst = f"{tower}.encoder.layers.{int(m.group(2))}."
            part = m.group(3)
            if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = part.rsplit("_", 1)[-1]
                for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{dst}self_attn.{name}_proj.{kind}"] = chunk.clone()
            elif part in _BLOCK_PARTS:
                out[dst + _BLOCK_PARTS[part]] = value
            else:
                unknown.append(key)
        elif key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif key in _DROPPED:
            continue
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"open_clip checkpoint keys with no transformers CLIP counterpart: {', '.join(unknown[:8])}"
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    return out


def build_hf_clip_from_open_clip(state_dict: dict[str, torch.Tensor], model_cfg: dict):
    """A transformers ``CLIPModel`` holding an open_clip checkpoint (float32, eval mode)."""
    from transformers import CLIPModel  # lazy: loads transformers

    try:
        from transformers.initialization import no_init_weights  # lazy: loads transformers
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers.modeling_utils import no_init_weights  # lazy: loads transformers

    config = hf_clip_config_from_open_clip(model_cfg)
    with no_init_weights():  # every weight is overwritten below
        model = CLIPModel(config)
    hf_sd = open_clip_to_hf_state_dict(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in hf_sd and not k.endswith("position_ids")]
    unexpected = [k for k in hf_sd if k not in expected]
    bad_shape = [k for k in hf_sd if k in expected and hf_sd[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(
            "the checkpoint does not match the open_clip model config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {bad_shape[:5]}"
        )
    model.load_state_dict(hf_sd, strict=False)
    return model.float().eval()


class HPSv2Reward(RealReward):
    """HPS v2.1: cosine of normalised image and prompt embeddings of the HPS-tuned ViT-H-14.

    Args:
        checkpoint: the HPS ``.pt`` file, or a folder holding it (``HPS_v2.1_compressed.pt`` or the
            only ``*.pt``/``*.bin`` there), optionally with an ``open_clip_config.json`` and
            tokenizer files; ``None``: downloaded from ``hub_repo`` / ``hub_filename``.
        model_config: open_clip model config (dict, JSON file, or ``"ViT-H-14"``); default: the
            checkpoint folder's ``open_clip_config.json`` if any, else ViT-H-14.
        tokenizer: folder or hub id of the CLIP BPE tokenizer; default: the checkpoint folder if
            it has tokenizer files, else the LAION ViT-H-14 repository.
        device, dtype, gradient_checkpointing, frozen, cache_dir, local_files_only: as in
            `CLIPScoreReward`.
    """

    name = "hpsv2"
    loss_offset = 1.0
    default_weight = 5.0
    source_options = {"tokenizer": "tokenizer", "config": "model_config"}
    """``hpsv2:CHECKPOINT,tokenizer=FOLDER,config=FILE``, all offline."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model_config: str | Path | dict | None = None,
        tokenizer: str | Path | None = None,
        hub_repo: str = HPS_REPO,
        hub_filename: str = HPS_V21_FILE,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        frozen: bool = True,
        cache_dir: str | None = None,
        local_files_only: bool = False,
    ):
        super().__init__()
        from transformers import AutoTokenizer  # lazy: loads transformers

        hub = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        folder = None
        if tokenizer is not None:
            tokenizer, _ = resolve_source(tokenizer, "HPSv2 tokenizer")
        if isinstance(model_config, (str, Path)) and model_config != "ViT-H-14":
            model_config, _ = resolve_source(model_config, "HPSv2 open_clip model config")
        if checkpoint is None:
            ckpt_file = hub_file(hub_repo, hub_filename, **hub)
        else:
            path = Path(resolve_source(checkpoint, "HPSv2 checkpoint")[0])
            if path.is_dir():
                folder = path
                ckpt_file = _find_checkpoint(path, hub_filename)
            elif path.is_file():
                ckpt_file = path
            else:
                raise FileNotFoundError(f"HPSv2 checkpoint not found: {checkpoint}")
        if model_config is None and folder is not None and (folder / OPEN_CLIP_CONFIG_FILE).is_file():
            model_config = folder / OPEN_CLIP_CONFIG_FILE
        model_cfg, pre_cfg = load_open_clip_config(model_config)
        if tokenizer is None:
            has_tok = folder is not None and any(
                (folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
            )
            tokenizer = folder if has_tok else HPS_TOKENIZER
        torch_dtype = resolve_dtype(dtype)
        self.source = str(ckpt_file)
        self.model = build_hf_clip_from_open_clip(load_torch_state_dict(ckpt_file), model_cfg)
        tok_local = Path(str(tokenizer)).exists()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), **hub_options(tok_local, hub))
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        image_size = int(self.model.config.vision_config.image_size)
        self.preprocess_config = PreprocessConfig.square(
            image_size,
            mean=tuple(pre_cfg.get("mean", OPENAI_CLIP_MEAN)),
            std=tuple(pre_cfg.get("std", OPENAI_CLIP_STD)),
            interpolation=pre_cfg.get("interpolation", "bicubic"),
        )
        if pre_cfg.get("resize_mode", "shortest") != "shortest":
            raise NotImplementedError(f"open_clip resize_mode {pre_cfg['resize_mode']!r} is not supported")
        self._finish(
            device=device,
            dtype=torch_dtype,
            frozen=frozen,
            checkpointed=(self.model,) if gradient_checkpointing else (),
        )

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float32 image embeddings `[B, D]` (open_clip ``encode_image``, normalised)."""
        pixels = clip_preprocess(images.to(self.device), self.preprocess_config).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return normalize(self.model.visual_projection(pooled))

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = tok["input_ids"].to(self.device)
        # open_clip: causal mask only (padding follows the EOT token), pooled at argmax(ids) (the EOT)
        hidden = self.model.text_model(input_ids=ids).last_hidden_state
        pooled = hidden[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return normalize(self.model.text_projection(pooled))

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised float32 prompt embeddings `[B, D]` (cached while frozen)."""
        return self._cached_text(list(prompts), self._encode_text)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_inputs(images, prompts)
        if images.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        return (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1).float()


def _find_checkpoint(folder: Path, preferred: str) -> Path:
    if (folder / preferred).is_file():
        return folder / preferred
    found = sorted(p for ext in ("*.pt", "*.pth", "*.bin") for p in folder.glob(ext))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{folder}: expected {preferred} or exactly one *.pt/*.pth/*.bin checkpoint, found "
            f"{[p.name for p in found] or 'none'}"
        )
    return found[0]

"""Shared machinery of the real reward models: dtype names, freezing, gradient checkpointing in
eval mode, checkpoint files (local or hub), the improved-aesthetic / ImageReward MLP head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download

from ...training.environment import parse_dtype
from ..base import Reward


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` -> float32; a name (``fp32``, ``fp16``, ``bf16``, ...) or a floating torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        return dtype
    try:
        return parse_dtype(dtype)
    except ValueError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16 (or a torch dtype)") from None


def hub_file(repo_id: str, filename: str, **hub_kwargs) -> Path:
    """Download (or find in the cache) one file of a Hugging Face hub repository."""

    kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, **kwargs))


def load_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file (tensors only, ``weights_only``); unwraps a
    ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoint and a DataParallel ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled non-tensor objects, a truncated file, ...
        raise ValueError(f"cannot read {path} as a torch state dict (weights_only load failed: {e})") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


class MLPHead(torch.nn.Module):
    """The scoring MLP of LAION's improved aesthetic predictor, reused by ImageReward:
    ``in -> 1024 -> 128 -> 64 -> 16 -> 1`` linear layers (no activations) with dropouts between
    the first four; state-dict keys ``layers.{0,2,4,6,7}.{weight,bias}``."""

    def __init__(self, input_size: int):
        super().__init__()
        self.input_size = int(input_size)
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(self.input_size, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], prefix: str = "") -> MLPHead:
        sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if "layers.0.weight" not in sd:
            raise ValueError(f"no MLP head in the state dict (missing {prefix}layers.0.weight)")
        head = cls(sd["layers.0.weight"].shape[1])
        try:
            head.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"the state dict's MLP head does not have the expected layout: {e}") from e
        return head


class RealReward(Reward):
    """Base of the pretrained reward adapters: frozen by default, one dtype, optional gradient
    checkpointing that stays active while the reward is in eval mode.

    Subclasses build their modules, then call `_finish(...)`. They expose `preprocess_config`
    (a `PreprocessConfig`) and implement `forward`.
    """

    def _finish(
        self,
        device=None,
        dtype: torch.dtype = torch.float32,
        frozen: bool = True,
        checkpointed: tuple[torch.nn.Module, ...] = (),
    ) -> None:
        self.frozen = bool(frozen)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.gradient_checkpointing = bool(checkpointed)
        for model in checkpointed:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.to(dtype=dtype)
        if device is not None:
            self.to(device)
        if self.frozen:
            self.requires_grad_(False)
        self.train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def train(self, mode: bool = True):
        # a frozen reward stays in eval mode (no dropout)
        super().train(bool(mode) and not getattr(self, "frozen", True))
        if getattr(self, "gradient_checkpointing", False) and not self.training:
            # transformers only checkpoints layers in training mode: mark the checkpointed layers
            # themselves (not their dropouts) as training so activations are recomputed in eval mode
            for m in self.modules():
                if getattr(m, "gradient_checkpointing", False) is True and _is_checkpoint_layer(m):
                    m.training = True
        return self

    def _apply(self, fn, *args, **kwargs):  # .to() / .half(): cached text embeddings are stale
        self._text_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def _cached_text(self, prompts: list[str], encode) -> torch.Tensor:
        """Rows of ``encode(unique_prompts) -> [N, D]`` for `prompts`, cached per prompt while frozen.

        Cached prompts are encoded one at a time, so that an embedding does not depend on the
        prompts it happened to be batched with (the last bits do), nor a score on the history."""
        if not self.frozen:
            return encode(list(prompts))
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                emb = torch.cat([encode([p]) for p in missing])
            if len(self._text_cache) + len(missing) > 4096:
                self._text_cache.clear()
            self._text_cache.update(zip(missing, emb, strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])


def _is_checkpoint_layer(module: torch.nn.Module) -> bool:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer  # lazy: loads transformers
    except ImportError:  # pragma: no cover - older transformers
        return False
    return isinstance(module, GradientCheckpointingLayer)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension in float32."""
    return F.normalize(x.float(), dim=-1)

"""`WorldCLIPModel`: a small CLIP (transformers `CLIPModel`) for 32 px world images and world prompts.

- vision tower: ViT on 32 px images, 4 px patches (64 patches + class token);
- text tower: the world word-level tokenizer (`compalign.generators.world.tokenizer`, one token per
  grammar word, ``<bos> ... <eos>`` padded to 32), causal transformer;
- projections to a shared embedding; similarity is the cosine of the two embeddings.

Text pooling. transformers' CLIP text model pools at ``argmax(input_ids)`` when
``eos_token_id == 2`` (a legacy rule for the original CLIP vocabulary, where the end token has the
largest id). In the world vocabulary ``<eos>`` is id 2 and grammar words have larger ids, so that
rule would pool the last-sorted *word*. `encode_text` therefore pools the hidden state at the first
``<eos>`` position itself (`eos_positions`), which is what the config's ``eos_token_id`` says.

A model folder (`save_pretrained` / `from_pretrained`) holds ``config.json`` and
``model.safetensors`` (the `CLIPModel`), ``tokenizer.json`` (+ its configs) and ``world_clip.json``
(format version, input resolution, normalisation mean / std).
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compalign.generators.world.tokenizer import BOS, EOS, MAX_LENGTH, PAD, build_tokenizer, build_vocab

from .config import WorldCLIPArch  # also importable from here

WORLD_CLIP_FILE = "world_clip.json"
FORMAT_VERSION = 1
IMAGE_SIZE = 32
# pixel normalisation: (x - mean) / std on images in [0, 1] (the world's background is ~0.08)
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def clip_config(arch: WorldCLIPArch):
    """The transformers `CLIPConfig` of an architecture (world vocabulary, 32 px images)."""
    from transformers import CLIPConfig  # lazy: loads transformers

    vocab = build_vocab()
    text = dict(
        vocab_size=len(vocab),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_mlp,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=arch.projection_dim,
        pad_token_id=vocab[PAD],
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
    )
    vision = dict(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_mlp,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=arch.patch_size,
        num_channels=3,
        projection_dim=arch.projection_dim,
    )
    return CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=arch.projection_dim,
        logit_scale_init_value=arch.logit_scale_init,
    )


@contextmanager
def quiet_transformers():
    """Silence transformers' loading / saving progress bars, restoring their state."""
    from transformers.utils import logging as tlog  # lazy: loads transformers

    was = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlog.enable_progress_bar()


def eos_positions(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Index of the first ``<eos>`` of each row (the last token when a row has none)."""
    is_eos = input_ids == eos_id
    first = is_eos.int().argmax(dim=-1)
    return torch.where(is_eos.any(dim=-1), first, torch.full_like(first, input_ids.shape[-1] - 1))


class WorldCLIPModel(torch.nn.Module):
    """A `CLIPModel` with the world tokenizer, pixel normalisation and EOS pooling."""

    def __init__(self, clip, tokenizer=None, mean=DEFAULT_MEAN, std=DEFAULT_STD, arch: dict | None = None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer or build_tokenizer()
        self.eos_id = int(self.tokenizer.convert_tokens_to_ids(EOS))
        if int(clip.config.text_config.eos_token_id) != self.eos_id:
            raise ValueError(
                f"text_config.eos_token_id is {clip.config.text_config.eos_token_id}, "
                f"but the tokenizer's <eos> is {self.eos_id}"
            )
        self.arch = dict(arch or {})
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self._tok_cache: dict[str, np.ndarray] = {}  # prompt -> [2, 32] ids and mask

    @classmethod
    def from_arch(cls, arch: WorldCLIPArch | None = None, seed: int | None = None) -> WorldCLIPModel:
        """A randomly initialised model (`seed`: torch.manual_seed first)."""
        from transformers import CLIPModel  # lazy: loads transformers

        arch = arch or WorldCLIPArch()
        if seed is not None:
            torch.manual_seed(seed)
        return cls(CLIPModel(clip_config(arch)), arch=arch.to_dict())

    # ---------------------------------------------------------------------------------- text
    def token_ids(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids, attention_mask)` `[B, 32]` long tensors (cached per prompt)."""
        cache = self._tok_cache
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            enc = self.tokenizer(missing, padding="max_length", max_length=MAX_LENGTH, truncation=True)
            if len(cache) > 1_000_000:
                cache.clear()
            for p, ids, mask in zip(missing, enc["input_ids"], enc["attention_mask"], strict=True):
                cache[p] = np.array([ids, mask], dtype=np.int64)
        rows = torch.from_numpy(np.stack([cache[p] for p in prompts])) if prompts else torch.zeros(0, 2, 0)
        ids, mask = rows[:, 0].long(), rows[:, 1].long()
        if device is not None:
            ids, mask = ids.to(device), mask.to(device)
        return ids, mask

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) text embeddings `[B, D]`, pooled at the first ``<eos>``."""
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pos = eos_positions(input_ids, self.eos_id)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
        return self.clip.text_projection(pooled)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.token_ids(prompts, device=self.pixel_mean.device)
        return self.encode_tokens(ids, mask)

    # ---------------------------------------------------------------------------------- image
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, H, W]` in [0, 1] -> normalised 32 px model input (differentiable)."""
        images = images.to(self.pixel_mean.dtype)
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            images = F.interpolate(
                images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
            )
        return (images - self.pixel_mean) / self.pixel_std

    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) image embeddings of preprocessed pixels."""
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
        return self.clip.visual_projection(pooled)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned log-scale), clamped at 100 as in CLIP."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def similarity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity `[B]` of each image with its prompt."""
        img = F.normalize(self.encode_image(images).float(), dim=-1)
        txt = F.normalize(self.encode_text(prompts).float(), dim=-1)
        return (img * txt).sum(-1)

    # ---------------------------------------------------------------------------------- io
    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the model folder (`dtype`: e.g. torch.float16 for shipping)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        clip = self.clip
        if dtype is not None:
            clip = copy.deepcopy(clip).to(dtype)
        with quiet_transformers():
            clip.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "image_size": IMAGE_SIZE,
            "mean": self.pixel_mean.flatten().tolist(),
            "std": self.pixel_std.flatten().tolist(),
            "pooling": "first <eos> token",
            "arch": self.arch,
        }
        (path / WORLD_CLIP_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None) -> WorldCLIPModel:
        """Load a model folder (weights are cast to float32)."""
        from transformers import CLIPModel, PreTrainedTokenizerFast  # lazy: loads transformers

        path = Path(path)
        meta_path = path / WORLD_CLIP_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} is not a world-clip model folder (no {WORLD_CLIP_FILE})")
        meta = json.loads(meta_path.read_text())
        with quiet_transformers():
            clip = CLIPModel.from_pretrained(path).float()
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        model = cls(clip, tokenizer, meta["mean"], meta["std"], meta.get("arch"))
        model.eval()
        if device is not None:
            model.to(device)
        return model

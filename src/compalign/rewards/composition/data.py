"""Preference pairs for the composition reward models: reading, validation, image loading.

A pairs file (JSONL, written by ``compalign pairs``) holds one pair per line::

    {"aspect": "spatial_relationship", "index": 12, "prompt": "a red circle above a blue square",
     "better": "images/0012_world-a.png", "worse": "images/0012_world-b.png",
     "better_model": "world-a", "worse_model": "world-b", "split": "train"}

- `aspect`: one of `ASPECTS` (one reward model is trained per aspect);
- `index`: the gallery record the pair comes from; `prompt`: that record's prompt;
- `better` / `worse`: image paths, relative to the pairs file's folder (or absolute);
- `better_model` / `worse_model`: the models that made the images (reported, not used);
- `split`: ``train`` or ``heldout``. Splits are by prompt (IterComp's release selected its "best"
  checkpoints on its training pairs): a prompt must not appear in both splits.

`read_pairs` checks every line before anything is trained and raises `PairsFileError` naming the
file, the line and the field. `load_images` decodes the images once, at the model's input size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from compalign.world.suites import ASPECTS

SPLITS = ("train", "heldout")
FIELDS: dict[str, type] = {
    "aspect": str,
    "index": int,
    "prompt": str,
    "better": str,
    "worse": str,
    "better_model": str,
    "worse_model": str,
    "split": str,
}


class PairsFileError(ValueError):
    """An unusable pairs file; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Pair:
    """One preference: `better` is preferred to `worse` for `prompt` (paths resolved)."""

    aspect: str
    index: int
    prompt: str
    better: Path
    worse: Path
    better_model: str
    worse_model: str
    split: str
    line: int  # 1-based line in the pairs file


def _field_error(where: str, name: str, message: str) -> PairsFileError:
    return PairsFileError(f"{where}: field {name!r}: {message}")


def parse_pair(record, where: str, base: Path, line: int, check_images: bool = True) -> Pair:
    """Validate one decoded line (`where` names it in errors) and resolve its image paths."""
    if not isinstance(record, dict):
        raise PairsFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    values = {}
    for name, kind in FIELDS.items():
        if name not in record:
            raise _field_error(where, name, "missing")
        v = record[name]
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if not ok:
            raise _field_error(where, name, f"expected {kind.__name__}, got {type(v).__name__} ({v!r})")
        if kind is str and not v.strip():
            raise _field_error(where, name, "empty")
        values[name] = v
    if values["aspect"] not in ASPECTS:
        raise _field_error(
            where, "aspect", f"unknown aspect {values['aspect']!r}; expected one of {', '.join(ASPECTS)}"
        )
    if values["split"] not in SPLITS:
        raise _field_error(
            where, "split", f"unknown split {values['split']!r}; expected one of {', '.join(SPLITS)}"
        )
    paths = {}
    for name in ("better", "worse"):
        p = Path(values[name])
        p = p if p.is_absolute() else base / p
        if check_images and not p.is_file():
            raise _field_error(where, name, f"image not found: {p}")
        paths[name] = p
    if paths["better"] == paths["worse"]:
        raise _field_error(where, "worse", f"same image as 'better' ({values['worse']})")
    return Pair(
        aspect=values["aspect"],
        index=values["index"],
        prompt=values["prompt"],
        better=paths["better"],
        worse=paths["worse"],
        better_model=values["better_model"],
        worse_model=values["worse_model"],
        split=values["split"],
        line=line,
    )


def read_pairs(
    path: str | Path,
    aspect: str | None = None,
    split: str | None = None,
    check_images: bool = True,
) -> list[Pair]:
    """Every pair of a pairs file (validated), then those of `aspect` and `split` (None: all).

    Raises `PairsFileError` for unreadable files, bad lines, missing images, a prompt in both
    splits, and when the selection is empty (naming the aspects / splits the file does have).
    """
    path = Path(path)
    if aspect is not None and aspect not in ASPECTS:
        raise PairsFileError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
    if split is not None and split not in SPLITS:
        raise PairsFileError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PairsFileError(f"{path}: cannot read: {e}") from None
    base = path.resolve().parent
    pairs: list[Pair] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {n}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PairsFileError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
        pairs.append(parse_pair(record, where, base, n, check_images))
    if not pairs:
        raise PairsFileError(f"{path}: no pairs (the file is empty)")
    check_split_by_prompt(pairs, str(path))
    selected = [
        p for p in pairs if (aspect is None or p.aspect == aspect) and (split is None or p.split == split)
    ]
    if not selected:
        have = sorted({(p.aspect, p.split) for p in pairs})
        raise PairsFileError(
            f"{path}: no pairs with aspect {aspect or 'any'} and split {split or 'any'}; the file has "
            + ", ".join(f"{a}/{s}" for a, s in have)
        )
    return selected


def check_split_by_prompt(pairs: list[Pair], source: str = "pairs") -> None:
    """Raise `PairsFileError` when a prompt (of one aspect) has pairs in both splits."""
    first: dict[tuple[str, str], Pair] = {}
    for p in pairs:
        other = first.setdefault((p.aspect, p.prompt), p)
        if other.split != p.split:
            raise PairsFileError(
                f"{source} line {p.line}: field 'split': prompt {p.prompt!r} is {p.split} here but "
                f"{other.split} on line {other.line}; splits must be by prompt "
                "(held-out prompts are never trained on)"
            )


def load_image(path: Path, size: int | None) -> np.ndarray:
    """An image file as uint8 ``[S, S, 3]``: RGB, shorter side resized to `size` (bicubic) and
    center-cropped to a square (`size` None: the file's own size, which must be square)."""

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if size is None:
                if w != h:
                    raise PairsFileError(f"{path}: image is {w}x{h}, not square; give an image size")
            elif (w, h) != (size, size):
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise PairsFileError(f"{path}: cannot read image: {e}") from None


class PairSet:
    """Pairs as index arrays into one uint8 image tensor (each image file decoded once).

    ``images``: uint8 ``[N, S, S, 3]``; ``better`` / ``worse``: image indices per pair;
    ``prompts``: the pairs' prompts. `items()` lists the distinct (image, prompt) combinations.
    """

    def __init__(self, pairs: list[Pair], size: int | None, progress: bool = False):
        self.pairs = list(pairs)
        index: dict[Path, int] = {}
        for p in self.pairs:
            for q in (p.better, p.worse):
                index.setdefault(q, len(index))
        self.paths = list(index)
        arrays = [
            load_image(q, size) for q in tqdm(self.paths, desc="images", disable=not progress, leave=False)
        ]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise PairsFileError(f"images have different sizes {sorted(shapes)}; give an image size")
        self.images = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
        self.better = np.array([index[p.better] for p in self.pairs], dtype=np.int64)
        self.worse = np.array([index[p.worse] for p in self.pairs], dtype=np.int64)
        self.prompts = [p.prompt for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def items(self) -> list[tuple[int, str]]:
        """Distinct ``(image index, prompt)`` of the pairs, in first-seen order."""
        seen: dict[tuple[int, str], None] = {}
        for b, w, p in zip(self.better.tolist(), self.worse.tolist(), self.prompts, strict=True):
            seen.setdefault((b, p), None)
            seen.setdefault((w, p), None)
        return list(seen)

"""Image-set manifests: a folder of PNGs plus `manifest.json` saying which prompt each image answers.

Format (version 1)::

    {"version": 1, "resolution": 32,
     "images": [{"file": "color/0000_00.png", "prompt": "a red circle and a blue square",
                 "category": "color", "seed": 0, ...}, ...]}

`file` is relative to the manifest's folder; `category` may be null; `seed` is optional; other
keys of an entry are kept as they are. Every stage that writes images (world renders, generators,
noise optimisation) writes this manifest, and `compalign world eval` reads it.

`validate_dir` checks everything before anything is evaluated or written, and raises
`ManifestError` with a message that names the file, the entry and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io import atomic_write_json
from .grammar import PromptError, Scene, parse_prompt

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_ENTRY_KEYS = ("file", "prompt", "category", "seed")


class ManifestError(ValueError):
    """A manifest or one of its images is unusable; the message names the file and the field."""


@dataclass(frozen=True)
class ImageEntry:
    file: str  # relative to the manifest's folder, '/'-separated
    prompt: str
    category: str | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "prompt": self.prompt, "category": self.category}
        if self.seed is not None:
            d["seed"] = self.seed
        d.update(self.extra)
        return d


@dataclass
class Manifest:
    resolution: int
    images: list[ImageEntry]
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "resolution": self.resolution,
            "images": [e.to_dict() for e in self.images],
        }


def manifest_path(path: str | os.PathLike) -> Path:
    """`path` itself if it names a .json file, else `path/manifest.json`."""
    p = Path(path)
    return p if p.suffix == ".json" and not p.is_dir() else p / MANIFEST_NAME


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> Path:
    """Write `directory/manifest.json` atomically."""
    return atomic_write_json(Path(directory) / MANIFEST_NAME, manifest.to_dict())


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_file_field(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: field 'file' must be a non-empty string, got {value!r}")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (len(value) > 1 and value[1] == ":"):
        raise ManifestError(
            f"{where}: field 'file' must be a path relative to the manifest's folder, got {value!r}"
        )
    return str(p)


def parse_manifest(data: Any, source: str = MANIFEST_NAME) -> Manifest:
    """Check the structure of decoded manifest JSON; `source` names the file in error messages."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    version = data.get("version")
    if version != MANIFEST_VERSION:
        raise ManifestError(f"{source}: field 'version' must be {MANIFEST_VERSION}, got {version!r}")
    if "resolution" not in data:
        raise ManifestError(f"{source}: missing field 'resolution'")
    res = data["resolution"]
    if not _is_int(res) or res < 1:
        raise ManifestError(f"{source}: field 'resolution' must be a positive integer, got {res!r}")
    if "images" not in data:
        raise ManifestError(f"{source}: missing field 'images'")
    images = data["images"]
    if not isinstance(images, list):
        raise ManifestError(f"{source}: field 'images' must be a list, got {type(images).__name__}")
    if not images:
        raise ManifestError(f"{source}: field 'images' is empty: nothing to evaluate")
    entries = []
    for i, item in enumerate(images):
        where = f"{source}: images[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: expected an object, got {type(item).__name__}")
        for key in ("file", "prompt"):
            if key not in item:
                raise ManifestError(f"{where}: missing field '{key}'")
        file = _check_file_field(where, item["file"])
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ManifestError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r}")
        category = item.get("category")
        if category is not None and not isinstance(category, str):
            raise ManifestError(f"{where}: field 'category' must be a string or null, got {category!r}")
        seed = item.get("seed")
        if seed is not None and not _is_int(seed):
            raise ManifestError(f"{where}: field 'seed' must be an integer, got {seed!r}")
        extra = {k: v for k, v in item.items() if k not in _ENTRY_KEYS}
        entries.append(ImageEntry(file, prompt, category, seed, extra))
    return Manifest(resolution=res, images=entries, version=version)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a manifest (a folder or the manifest file itself)."""
    mpath = manifest_path(path)
    if not mpath.is_file():
        if not mpath.parent.is_dir():
            raise ManifestError(f"{mpath.parent}: no such folder")
        raise ManifestError(f"{mpath}: no manifest (write images with `compalign world render` first)")
    try:
        text = mpath.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{mpath}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ManifestError(f"{mpath}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{mpath}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_manifest(data, str(mpath))


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Load one manifest image as uint8 [R, R, 3]; it must be an RGB image of the manifest's size."""
    if not path.is_file():
        raise ManifestError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            mode, (w, h) = im.mode, im.size
            arr = np.asarray(im) if mode == "RGB" else None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read image: {e}") from None
    if (w, h) != (resolution, resolution):
        raise ManifestError(
            f"{path}: wrong size: expected {resolution}x{resolution} (the manifest's resolution), got {w}x{h}"
        )
    if mode != "RGB" or arr is None:
        raise ManifestError(f"{path}: expected an RGB image, got mode {mode!r}")
    return arr


def check_prompts(manifest: Manifest, source: str = MANIFEST_NAME) -> list[Scene]:
    """Parse every prompt once; a prompt outside the grammar names its entry and the word."""
    cache: dict[str, Scene] = {}
    scenes = []
    for i, e in enumerate(manifest.images):
        if e.prompt not in cache:
            try:
                cache[e.prompt] = parse_prompt(e.prompt)
            except PromptError as err:
                raise ManifestError(f"{source}: images[{i}].prompt: {err}") from None
        scenes.append(cache[e.prompt])
    return scenes


@dataclass
class ImageSet:
    """A validated image folder: its manifest, the decoded images and the parsed scenes."""

    directory: Path
    manifest_file: Path
    manifest: Manifest
    images: list[np.ndarray]  # uint8 [R, R, 3], in manifest order
    scenes: list[Scene]
    manifest_sha256: str


def validate_dir(path: str | os.PathLike) -> ImageSet:
    """Check a manifest and all its images and prompts; raise `ManifestError` at the first problem.

    Order: the manifest parses and has the right structure; every image file exists; every image
    loads and is a resolution x resolution RGB image; every prompt is in the world grammar.
    """
    mpath = manifest_path(path)
    manifest = read_manifest(mpath)
    root = mpath.parent
    for i, e in enumerate(manifest.images):
        if not (root / e.file).is_file():
            raise ManifestError(f"{root / e.file}: image file not found (images[{i}] of {mpath})")
    images = [load_image(root / e.file, manifest.resolution) for e in manifest.images]
    scenes = check_prompts(manifest, str(mpath))
    digest = hashlib.sha256(mpath.read_bytes()).hexdigest()
    return ImageSet(root, mpath, manifest, images, scenes, digest)

"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves the old one.

Each helper writes a temporary file in the destination's folder (same file system), flushes it to
disk and renames it over the destination with `os.replace`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

__all__ = [
    "atomic_path",
    "current_umask",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_image",
]


def current_umask() -> int:
    """The process umask (read from /proc where it exists, so that it is never changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that want a file name (PIL, safetensors, torch.save). `suffix` keeps an extension
    for writers that pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{suffix}.tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _write(path: str | os.PathLike, mode: str, write: Callable[[IO], None], **open_kw: Any) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _write(path, "wb", lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return _write(path, "w", lambda f: f.write(text), encoding=encoding)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (UTF-8, trailing newline); serialisation errors leave `path` untouched."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def to_pil(image: Any):
    """A PIL RGB image from HxWx3 float [0, 1] / uint8 arrays, torch tensors [3, H, W] or PIL images."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if hasattr(image, "detach"):  # torch tensor [3, H, W] (or [H, W, 3]) in [0, 1]
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
            image = image.transpose(1, 2, 0)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(image))


def atomic_save_image(path: str | os.PathLike, image: Any, format: str | None = None) -> Path:
    """Save an image atomically; the format comes from `format` or the extension of `path`."""
    path = Path(path)
    pil = to_pil(image)
    fmt = format or Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the image format from the extension {path.suffix!r}")
    return _write(path, "wb", lambda f: pil.save(f, format=fmt))

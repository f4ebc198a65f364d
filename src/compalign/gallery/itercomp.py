"""Adopt an IterComp gallery file, and export a gallery in IterComp's exact format.

IterComp's file is a JSON list of ``{"index", "prompt", "image_<model>": path, ...,
["initial_rank": [...],] "rank": [...]}`` with paths relative to some root folder (its repository:
``datasets/train/attribute_binding/sd15_prompt_7.png``). `import_gallery` checks the whole file
(JSON, fields, duplicate indices, every record holding the same models, rank permutations, image
files under the root that decode as images) before writing anything, then writes
``ROOT/gallery.json`` (paths relative to ROOT), ``gallery_meta.json`` (models from the first
record, aspect) and an empty rank sidecar.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

from ..io import atomic_write_json
from ..world.suites import ASPECTS
from .format import (
    GALLERY_FILE,
    META_FILE,
    RANKS_FILE,
    Gallery,
    GalleryError,
    check_image_files,
    check_models,
    gallery_dir,
    load_gallery,
    new_meta,
    parse_records,
    read_json,
)


def _infer_aspect(paths: list[str]) -> str | None:
    found = {a for p in paths for a in ASPECTS if a in PurePosixPath(p).parts}
    return found.pop() if len(found) == 1 else None


def import_gallery(
    file: str | Path, root: str | Path, aspect: str | None = None, force: bool = False
) -> Gallery:
    """Validate an IterComp gallery file and adopt it as the gallery of folder `root`."""
    file, root = Path(file), Path(root)
    if not root.is_dir():
        raise GalleryError(
            f"{root}: --root must be an existing folder (the one the image paths are relative to)"
        )
    data = read_json(file, "gallery file")
    # absolute paths inside the root become relative ones
    base = root.resolve()
    if isinstance(data, list):
        for rec in data:
            if isinstance(rec, dict):
                for k, v in rec.items():
                    if k.startswith("image_") and isinstance(v, str) and Path(v).is_absolute():
                        p = Path(v).resolve()
                        if p.is_relative_to(base):
                            rec[k] = p.relative_to(base).as_posix()
    records = parse_records(data, str(file))
    models = records[0].models
    check_models(records, models, str(file))
    check_image_files(records, root, str(file), decode=True)
    if aspect is None:
        aspect = _infer_aspect([p for r in records for p in r.images.values()])
    if aspect is not None and aspect not in ASPECTS:
        raise GalleryError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
    if aspect is None:
        raise GalleryError(f"{file}: cannot tell the aspect from the image paths; give --aspect")
    target = root / GALLERY_FILE
    same = target.exists() and target.resolve() == file.resolve()
    if not force and not same and (target.exists() or (root / META_FILE).exists()):
        raise GalleryError(f"{root} already holds a gallery; give --force to replace it")
    meta = new_meta(
        aspect,
        [{"name": m, "spec": None} for m in models],
        seed=None,
        seeds={},
        settings={},
        prompt_source={"kind": "itercomp", "file": str(file)},
        complete=True,
        history=[{"event": "import", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "file": str(file)}],
    )
    ranked = any(r.rank is not None for r in records)
    ranks = {"version": 1, "method": "imported" if ranked else None, "records": {}}
    g = Gallery(root, records, meta, ranks)
    g.validate(check_images=False)
    g.save()
    return g


def export_records(g: Gallery, path_prefix: str | None = None, absolute: bool = False) -> list[dict]:
    out = []
    for r in g.records:
        d = r.to_json()
        for m, p in r.images.items():
            if absolute:
                d["image_" + m] = str((g.root / p).resolve())
            elif path_prefix:
                d["image_" + m] = path_prefix.rstrip("/") + "/" + p
        out.append(d)
    return out


def export_gallery(
    gallery: str | Path, out: str | Path, path_prefix: str | None = None, absolute: bool = False
):
    """Write the gallery as an IterComp JSON list (paths relative to the gallery, prefixed, or absolute)."""
    g = load_gallery(gallery_dir(gallery))
    out = Path(out)
    if out.is_dir():
        raise GalleryError(f"{out}: --out must be a file name, and a folder of that name exists")
    if out.resolve() in (
        (g.root / GALLERY_FILE).resolve(),
        (g.root / META_FILE).resolve(),
        (g.root / RANKS_FILE).resolve(),
    ):
        raise GalleryError(f"{out}: would overwrite the gallery's own files; choose another --out")
    atomic_write_json(out, export_records(g, path_prefix, absolute))
    return g

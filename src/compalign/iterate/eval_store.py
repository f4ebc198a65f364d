"""The evaluation store: ``eval/<model>.json`` (a model's held-out exact-evaluator result under the
key that identifies it: spec, weights, categories, prompts, seeds), ``eval/<model>.images.npz``
(its first-seed images, which the reward check scores and the report shows), the look-up of a
result computed earlier in this or an earlier iteration, and the evaluation itself."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..generators import create_generator
from ..generators.generate import to_uint8
from ..generators.registry import pipeline_dir, shipped_models, weights_root
from ..io import atomic_path
from ..world.quality import evaluate_generator
from .state import IterateError, plain
from .workspace import Workspace


def fingerprint(spec: str) -> str:
    """Identity of a generator's weights: sizes and times of the files of its folder ('' for a
    spec that is not a local world model)."""

    path = Path(spec)
    folder = None
    if path.exists():
        folder = pipeline_dir(path)
    elif spec in shipped_models():
        folder = weights_root() / spec
    if folder is None:
        return ""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def eval_images_path(eval_file: Path) -> Path:
    """``eval/<model>.images.npz`` next to ``eval/<model>.json``: the model's evaluation images of
    the first evaluation seed."""
    return eval_file.with_name(eval_file.stem + ".images.npz")


def save_eval_images(path: Path, batches: list, records: list[dict]) -> None:
    """Write the kept uint8 image batches ``[B, H, W, 3]`` of `records` (prompt, category each)."""

    images = np.concatenate(batches) if batches else np.zeros((0, 1, 1, 3), np.uint8)
    if len(images) != len(records):
        raise IterateError(f"{path}: {len(images)} kept images for {len(records)} first-seed records")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy adds no suffix
        np.savez_compressed(
            fh,
            images=images,
            prompts=np.array([r["prompt"] for r in records]),
            categories=np.array([r["category"] for r in records]),
        )


def load_eval_images(path: Path, categories: list[str], prompts: list[str]) -> torch.Tensor | None:
    """The stored evaluation images of (category, prompt) in this order, as ``[B, 3, H, W]`` in
    [0, 1]; None when the file is missing, unreadable or lacks one of them."""

    try:
        with np.load(path) as z:
            images, ps, cs = z["images"], z["prompts"].tolist(), z["categories"].tolist()
    except (OSError, KeyError, ValueError):
        return None
    where = {(c, p): i for i, (c, p) in enumerate(zip(cs, ps, strict=True))}
    try:
        idx = [where[(c, p)] for c, p in zip(categories, prompts, strict=True)]
    except KeyError:
        return None
    return torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255


def eval_key(ws: Workspace, spec: str, per_category: int, steps: int | None = None) -> dict:
    """What identifies an evaluation of `spec` (a stored result with this key is reused); `steps`:
    sampling steps other than the model's default."""
    c = ws.config
    return plain(
        {
            "spec": ws.spec_label(spec),
            "weights": fingerprint(spec),
            "categories": c.evaluation_categories(),
            "per_category": per_category,
            "seeds": c.eval_seeds,
            "split": "heldout",
            **({} if steps is None else {"steps": steps}),
        }
    )


def cached_eval(ws: Workspace, k: int, key: dict) -> tuple[dict, Path] | None:
    """(result, its file) of an evaluation with `key` stored in iteration k or an earlier one."""
    for j in range(k, 0, -1):
        d = ws.iter_dir(j)
        for f in [*sorted((d / "eval").glob("*.json")), d / "reno" / "plain.json"]:
            if not f.is_file():
                continue
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if data.get("key") == key:
                return data["result"], f
    return None


def evaluate_model(
    ws: Workspace,
    name: str,
    spec: str,
    per_category: int,
    generate: Callable | None = None,
    gen=None,
    keep_images: Path | None = None,
) -> dict:
    """Evaluate one model on the held-out prompts; with `keep_images`, its images of the first
    evaluation seed are written there (`save_eval_images`: the reward check scores them instead of
    rendering them again)."""

    c = ws.config
    gen = gen or create_generator(spec, device=c.device)
    first, kept = c.eval_seeds[0], []
    hook = generate
    if keep_images is not None:

        def hook(prompts, seeds, inner=generate):
            if inner is not None:
                images = inner(prompts, seeds)
            else:
                with torch.no_grad():
                    images = gen.generate(prompts, seeds=seeds)
            keep = [i for i, s in enumerate(seeds) if s == first]
            if keep:
                kept.append(to_uint8(images[keep]))
            return images

    res = evaluate_generator(
        gen,
        c.evaluation_categories(),
        per_category,
        c.eval_seeds,
        batch_size=c.eval_batch_size,
        workers=c.workers,
        progress=c.progress,
        generate=hook,
    )
    res["model"] = name
    res["spec"] = ws.spec_label(spec)
    if keep_images is not None:
        save_eval_images(keep_images, kept, [r for r in res["records"] if r["seed"] == first])
    return res

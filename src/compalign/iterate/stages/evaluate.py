"""Stage 6, ``evaluate``: held-out exact-evaluator accuracy per category of every gallery model and
the new base (``iter_<k>/eval/<model>.json``, with its first-seed images in
``eval/<model>.images.npz``; results of unchanged models are reused from earlier iterations), then
the reward check (``reward_check.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ...gallery.format import load_gallery
from ...io import atomic_path, atomic_write_json
from ..config import base_name
from ..eval_store import cached_eval, eval_images_path, eval_key, evaluate_model
from ..reward_check import reward_check
from ..state import plain
from ..workspace import Workspace, abs_spec


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    return plain(
        {
            "categories": c.evaluation_categories(),
            "per_category": c.eval_per_category,
            "seeds": c.eval_seeds,
            "split": "heldout",
            **({} if c.eval_gallery else {"gallery": False}),
        }
    )


def eval_models(ws: Workspace, k: int) -> list[tuple[str, str]]:
    """(name, spec) of every model evaluated in iteration k: the gallery's (unless `eval_gallery`
    is off), the current base, the new base."""
    models = []
    if ws.config.eval_gallery:
        g = load_gallery(ws.gallery_dir(k, ws.config.aspects[0]), check_images=False)
        models = [(m["name"], m["spec"]) for m in g.meta["models"]]
    name, spec, _ = ws.current_base(k)
    if all(abs_spec(s) != spec for _, s in models):
        models.append((name if all(n != name for n, _ in models) else "start-base", spec))
    models.append((base_name(k), str(ws.base_dir(k).resolve())))
    return models


def run(ws: Workspace, k: int) -> dict:
    c = ws.config
    out_dir = ws.iter_dir(k) / "eval"
    out: dict = {"models": {}, "order": []}
    files: dict[str, Path] = {}  # absolute spec -> evaluation file
    for name, spec in eval_models(ws, k):
        key = eval_key(ws, spec, c.eval_per_category)
        f = out_dir / f"{name}.json"
        files[abs_spec(spec)] = f
        hit = cached_eval(ws, k, key)
        if hit is not None:
            res, src = hit
            if src != f:
                copy = {"key": key, "result": {**res, "model": name}, "copied_from": ws.rel(src)}
                atomic_write_json(f, copy)
                if eval_images_path(src).is_file():
                    with atomic_path(eval_images_path(f)) as tmp:
                        shutil.copyfile(eval_images_path(src), tmp)
            ws.log(f"  {name}: {100 * res['overall']:.1f}% (computed earlier: {ws.rel(src)})")
        else:
            n_img = len(key["categories"]) * c.eval_per_category * len(c.eval_seeds)
            ws.log(f"  {name}: generating and judging {n_img} images")
            res = evaluate_model(ws, name, spec, c.eval_per_category, keep_images=eval_images_path(f))
            atomic_write_json(f, {"key": key, "result": res})
            ws.log(f"  {name}: {100 * res['overall']:.1f}% of held-out images pass")
        out["order"].append(name)
        out["models"][name] = {
            "file": ws.rel(f),
            "spec": key["spec"],
            "overall": res["overall"],
            "aspects": res["aspects"],
            "categories": {cat: v["accuracy"] for cat, v in res["categories"].items()},
        }
    out["reward_check"] = reward_check(ws, k, files)
    return out

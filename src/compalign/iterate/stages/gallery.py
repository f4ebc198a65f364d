"""Stage 1, ``gallery``: one gallery per aspect (``iter_<k>/gallery/<aspect>/``).

Iteration 1 renders the gallery models on the train-split suite prompts of the aspect's categories
(plus a few held-out prompts for the reward models' held-out pairs); iteration k > 1 copies
iteration k-1's ranked gallery and expands it with the base fine-tuned in iteration k-1
(``gallery.expand``: the old rank becomes ``initial_rank``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...gallery.expand import expand_gallery
from ...gallery.format import Gallery, GalleryError, load_gallery
from ...gallery.generate import ModelSpec, generate_gallery, parse_models
from ...world.suites import list_categories, load_suite
from ..config import IterateConfig, base_name
from ..state import IterateError, plain
from ..workspace import Workspace, abs_spec


def gallery_prompts(config: IterateConfig, aspect: str) -> tuple[list[str], list[str], int]:
    """(prompts, their categories, number of train prompts): the first `per_category` train prompts
    of every category of `aspect`, then the last `reward_heldout_per_category` held-out prompts of
    each (deduplicated); each prompt `seeds_per_prompt` times in a row (one record, one seed each)."""
    prompts, cats, seen = [], [], set()

    def add(p: str, c: str) -> None:
        if p not in seen:
            seen.add(p)
            prompts.append(p)
            cats.append(c)

    for c in list_categories(aspect):
        for p in load_suite(c, "train")[: config.per_category]:
            add(p, c)
    n_train = len(prompts)
    m = config.reward_heldout_per_category
    for c in list_categories(aspect):
        held = load_suite(c, "heldout")
        for p in held[len(held) - m :] if m else []:
            add(p, c)
    r = config.seeds_per_prompt  # repeats keep the train prompts first
    train = [p for p in prompts[:n_train] for _ in range(r)]
    held = [p for p in prompts[n_train:] for _ in range(r)]
    cats = [c for c in cats[:n_train] for _ in range(r)] + [c for c in cats[n_train:] for _ in range(r)]
    return train + held, cats, len(train)


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    if k == 1:
        return plain(
            {
                "models": list(c.gallery_models),
                "aspects": c.aspects,
                "per_category": c.per_category,
                "reward_heldout_per_category": c.reward_heldout_per_category,
                "seeds_per_prompt": c.seeds_per_prompt,
                "seed": c.seed,
                "resolution": c.gallery_resolution,
                "steps": c.gallery_steps,
                "guidance": c.gallery_guidance,
            }
        )
    return plain(
        {
            "from": f"iter_{k - 1}/gallery",
            "add": {"name": base_name(k - 1), "spec": f"iter_{k - 1}/base"},
            "aspects": c.aspects,
            "merge": "none" if c.rank == "auto" else "people",
        }
    )


def run(ws: Workspace, k: int) -> dict:
    out: dict = {"galleries": {}, "records": {}, "models": None}
    for aspect in ws.config.aspects:
        dst = ws.gallery_dir(k, aspect)
        g = _generate(ws, aspect, dst) if k == 1 else _expand(ws, k, aspect, dst)
        out["galleries"][aspect] = ws.rel(dst)
        out["records"][aspect] = len(g.records)
        out["models"] = g.models
    return out


def _generate(ws: Workspace, aspect: str, dst: Path) -> Gallery:
    c = ws.config
    prompts, cats, n_train = gallery_prompts(c, aspect)
    specs = [ModelSpec(m.name, abs_spec(m.spec)) for m in parse_models(c.gallery_models)]
    ws.log(
        f"  {aspect}: {len(specs)} models x {len(prompts)} prompts ({n_train} train, "
        f"{len(prompts) - n_train} held-out for the reward model) -> {dst}"
    )
    try:
        return generate_gallery(
            dst,
            aspect,
            specs,
            prompts,
            categories=cats,
            prompt_source={
                "kind": "iterate",
                "train_per_category": c.per_category,
                "heldout_per_category": c.reward_heldout_per_category,
                "heldout_from": "end of the held-out suites",
            },
            seed=c.seed,
            resolution=c.gallery_resolution,
            steps=c.gallery_steps,
            guidance=c.gallery_guidance,
            batch_size=c.gallery_batch_size,
            device=c.device,
            progress=c.progress,
        )
    except GalleryError as e:
        raise IterateError(str(e)) from None


def _expand(ws: Workspace, k: int, aspect: str, dst: Path) -> Gallery:
    """Iteration k-1's gallery of `aspect`, copied to `dst` and expanded with iteration k-1's base."""
    c = ws.config
    src = ws.gallery_dir(k - 1, aspect)
    if not dst.exists():
        tmp = dst.parent / f".{aspect}.copy-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
        os.replace(tmp, dst)
    name, spec, _ = ws.current_base(k)
    try:
        g = load_gallery(dst)
        if name not in g.models:
            ws.log(f"  {aspect}: adding {name} ({ws.rel(spec)}) to {len(g.records)} records -> {dst}")
            expand_gallery(
                dst,
                [f"{name}={spec}"],
                mode="none" if c.rank == "auto" else "people",
                batch_size=c.gallery_batch_size,
                device=c.device,
                progress=c.progress,
            )
            g = load_gallery(dst)
    except GalleryError as e:
        raise IterateError(str(e)) from None
    return g

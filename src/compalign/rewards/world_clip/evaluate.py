"""Evaluation of a world CLIP on held-out suite prompts against grammar-edited hard negatives.

For each prompt of a suite split, the true scene is laid out and rendered at 32 px (seeded by
`(seed, category, prompt index)`), and up to `n_negatives` hard negatives are drawn (a fixed
seeded draw balanced over edit kinds, see `negatives.py`). Per category:

- **pairwise accuracy**: the fraction of (prompt, negative) pairs where the image scores its
  true prompt above the negative;
- **top-1**: the fraction of images whose true prompt scores highest among [true + negatives].

Pairwise accuracy is also reported per edit kind (over all categories).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compalign.io import atomic_write_text
from compalign.world.grammar import parse_prompt
from compalign.world.layout import LayoutError, sample_layout
from compalign.world.render import render
from compalign.world.suites import CATEGORIES, load_suite

from .model import WorldCLIPModel
from .negatives import EDIT_KINDS, hard_negative_candidates, sample_from_candidates
from .reward import resolve_model_dir


def _load(model_or_path, device=None) -> WorldCLIPModel:
    if isinstance(model_or_path, WorldCLIPModel):
        return model_or_path
    if hasattr(model_or_path, "model") and isinstance(model_or_path.model, WorldCLIPModel):
        return model_or_path.model  # a WorldCLIPReward

    return WorldCLIPModel.from_pretrained(resolve_model_dir(str(model_or_path)), device=device)


def eval_items(
    split: str = "heldout",
    n_per_category: int | None = 100,
    n_negatives: int = 8,
    seed: int = 0,
    categories: list[str] | None = None,
) -> list[dict]:
    """The evaluation set: per prompt its category, image `[32, 32, 3]`, negatives and their kinds."""

    items = []
    for ci, c in enumerate(categories or CATEGORIES):
        prompts = load_suite(c, split)
        if n_per_category is not None:
            prompts = prompts[:n_per_category]
        for i, p in enumerate(prompts):
            rng = np.random.default_rng([seed, CATEGORIES.index(c) if c in CATEGORIES else ci, i, 0xE7A1])
            try:
                objects = sample_layout(parse_prompt(p), rng)
            except LayoutError:
                continue
            cands = hard_negative_candidates(p)
            kind_of = {n: k for k, v in cands.items() for n in v}
            negs = sample_from_candidates(cands, n_negatives, rng)
            negs = list(dict.fromkeys(negs))
            items.append(
                {
                    "category": c,
                    "prompt": p,
                    "image": render(objects, 32),
                    "negatives": negs,
                    "kinds": [kind_of[n] for n in negs],
                }
            )
    return items


@torch.no_grad()
def evaluate_world_clip(
    model_or_path,
    split: str = "heldout",
    n_per_category: int | None = 100,
    n_negatives: int = 8,
    seed: int = 0,
    categories: list[str] | None = None,
    device=None,
    batch_size: int = 256,
    progress: bool = False,
    show: bool = False,
) -> dict:
    """Per-category pairwise and top-1 accuracy against hard negatives (see the module docstring).

    `model_or_path`: a `WorldCLIPModel`, a `WorldCLIPReward`, a model / run folder, or
    ``world-clip``. `show` prints the table. Returns ``{"categories": {c: {...}}, "kinds": {...},
    "overall": {...}, "split", "seed", "n_negatives"}``.
    """
    model = _load(model_or_path, device)
    was_training = model.training
    model.eval()
    dev = model.pixel_mean.device
    items = eval_items(split, n_per_category, n_negatives, seed, categories)
    rows = []

    for s in tqdm(range(0, len(items), batch_size), desc="world-clip eval", disable=not progress):
        chunk = items[s : s + batch_size]
        images = torch.from_numpy(np.stack([it["image"] for it in chunk])).permute(0, 3, 1, 2).to(dev)
        img = F.normalize(model.encode_image(images.float()).float(), dim=-1)
        texts = [t for it in chunk for t in [it["prompt"], *it["negatives"]]]
        txt = F.normalize(model.encode_text(texts).float(), dim=-1)
        o = 0
        for j, it in enumerate(chunk):
            n = 1 + len(it["negatives"])
            sims = (txt[o : o + n] @ img[j]).cpu()
            o += n
            rows.append((it, sims[0].item(), sims[1:].tolist()))
    model.train(was_training)

    def summary(pairs: list[bool], top1: list[bool] | None = None) -> dict:
        d = {"pairs": len(pairs), "pairwise_acc": float(np.mean(pairs)) if pairs else float("nan")}
        if top1 is not None:
            d.update(n=len(top1), top1=float(np.mean(top1)) if top1 else float("nan"))
        return d

    cats: dict[str, dict] = {}
    by_cat: dict[str, tuple[list[bool], list[bool]]] = {}
    by_kind: dict[str, list[bool]] = {k: [] for k in EDIT_KINDS}
    all_pairs, all_top1 = [], []
    for it, pos, negs in rows:
        wins = [pos > n for n in negs]
        p, t = by_cat.setdefault(it["category"], ([], []))
        p.extend(wins)
        t.append(all(wins))
        all_pairs.extend(wins)
        all_top1.append(all(wins))
        for k, w in zip(it["kinds"], wins, strict=True):
            by_kind[k].append(w)
    for c, (p, t) in by_cat.items():
        cats[c] = summary(p, t)
    report = {
        "split": split,
        "seed": seed,
        "n_negatives": n_negatives,
        "categories": cats,
        "kinds": {k: summary(v) for k, v in by_kind.items() if v},
        "overall": summary(all_pairs, all_top1),
    }
    if show:
        print(format_eval_table(report))
    return report


def format_eval_table(report: dict) -> str:
    """Plain-text tables of an evaluation report (per category, then per edit kind)."""
    lines = [
        f"world-clip on {report['split']} prompts (seed {report['seed']}, "
        f"up to {report['n_negatives']} hard negatives each)",
        f"{'category':<14} {'n':>5} {'pairs':>6} {'pairwise':>9} {'top-1':>7}",
    ]
    for c, s in report["categories"].items():
        lines.append(f"{c:<14} {s['n']:>5} {s['pairs']:>6} {s['pairwise_acc']:>9.3f} {s['top1']:>7.3f}")
    o = report["overall"]
    lines.append(f"{'overall':<14} {o['n']:>5} {o['pairs']:>6} {o['pairwise_acc']:>9.3f} {o['top1']:>7.3f}")
    lines.append("")
    lines.append(f"{'edit kind':<14} {'pairs':>6} {'pairwise':>9}")
    for k, s in report["kinds"].items():
        lines.append(f"{k:<14} {s['pairs']:>6} {s['pairwise_acc']:>9.3f}")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2))
    return path

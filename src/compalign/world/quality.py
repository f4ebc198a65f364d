"""Quality of a generator on the world: exact-evaluator accuracy on held-out suites.

`evaluate_generator(gen, categories, per_category, seeds)` generates every (prompt, seed) of the
chosen suites, judges each image with the exact evaluator (in worker processes) and returns

    {"model", "split", "seeds", "per_category", "categories": {cat: {"accuracy", "score", "n"}},
     "aspects": {aspect: accuracy averaged over its categories}, "records": [...]}

`accuracy` is the fraction of images passing every clause; `score` the mean fraction of clauses
passed. This is the number every quality claim in the README is. Categories whose prompts state
relations also get `objects` (the fraction of images whose object clauses all hold) and
`relation_given_objects` (of those, the fraction whose relation clauses hold too): whether a model
places the objects it draws, which moves before accuracy does while a model still learns to draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import resources

import numpy as np
import torch
from tqdm.auto import tqdm

from .evaluator import check, find_objects
from .grammar import parse_prompt
from .suites import ASPECTS, CATEGORIES, CATEGORY_ASPECT, load_suite


def evaluator_key() -> str:
    """Hash of the code that decides a held-out verdict (evaluator, suites, grammar): results with
    equal keys were judged alike."""
    h = hashlib.sha256()
    pkg = resources.files("compalign.world")
    for name in ("evaluator.py", "suites.py", "grammar.py"):
        h.update((pkg / name).read_bytes())
    return h.hexdigest()[:12]


def _judge(args: tuple[np.ndarray, str]) -> tuple[bool, float, bool, bool | None]:
    image, prompt = args
    scene = parse_prompt(prompt)
    v = check(scene, find_objects(image), prompt)  # what `evaluate` does, with the scene kept
    n_rel = len(scene.relations)  # `check` lists the relation clauses last
    if not n_rel:
        return v.passed, v.score, v.passed, None
    objects, relations = v.clauses[:-n_rel], v.clauses[-n_rel:]
    return v.passed, v.score, all(ok for _, ok in objects), all(ok for _, ok in relations)


def judge_images(images: torch.Tensor | np.ndarray, prompts: Sequence[str], workers: int = 0) -> list[tuple]:
    """`(passed, score)` per image (`[B, 3, H, W]` in [0, 1] or `[B, H, W, 3]` uint8)."""
    return [j[:2] for j in judge_clauses(images, prompts, workers)]


def judge_clauses(images: torch.Tensor | np.ndarray, prompts: Sequence[str], workers: int = 0) -> list[tuple]:
    """`(passed, score, objects_passed, relations_passed)` per image."""
    if isinstance(images, torch.Tensor):
        arr = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        arr = (arr * 255 + 0.5).astype(np.uint8)
    else:
        arr = np.asarray(images)
    jobs = list(zip(list(arr), prompts, strict=True))
    if workers and workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(workers) as ex:
            return list(ex.map(_judge, jobs, chunksize=8))
    return [_judge(j) for j in jobs]


def suite_items(
    categories: Sequence[str] | None = None,
    per_category: int | None = None,
    split: str = "heldout",
    offset: int = 0,
) -> list[tuple[str, str]]:
    """`(category, prompt)` for `per_category` prompts of each suite from its `offset`-th on."""
    items = []
    for c in categories or CATEGORIES:
        prompts = load_suite(c, split)[offset:]
        items += [(c, p) for p in prompts[: per_category or len(prompts)]]
    return items


def summarize(records: Sequence[dict]) -> dict:
    cats: dict[str, dict] = {}
    for r in records:
        d = cats.setdefault(r["category"], {"passed": 0, "score": 0.0, "n": 0, "obj": 0, "rel": 0, "nrel": 0})
        d["passed"] += int(r["passed"])
        d["score"] += r["score"]
        d["n"] += 1
        if r.get("relations_ok") is not None:  # a prompt with relations
            d["nrel"] += 1
            d["obj"] += int(r["objects_ok"])
            d["rel"] += int(r["objects_ok"] and r["relations_ok"])
    out = {}
    for c, d in cats.items():
        out[c] = {"accuracy": d["passed"] / d["n"], "score": d["score"] / d["n"], "n": d["n"]}
        if d["nrel"]:
            out[c]["objects"] = d["obj"] / d["nrel"]
            out[c]["relation_given_objects"] = d["rel"] / d["obj"] if d["obj"] else None
    aspects: dict[str, list[float]] = {}
    for c, d in out.items():
        a = CATEGORY_ASPECT.get(c)
        if a:
            aspects.setdefault(a, []).append(d["accuracy"])
    return {
        "categories": out,
        "aspects": {a: float(np.mean(v)) for a, v in aspects.items()},
        "overall": float(np.mean([d["accuracy"] for d in out.values()])) if out else 0.0,
    }


def evaluate_generator(
    generator,
    categories: Sequence[str] | None = None,
    per_category: int | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    split: str = "heldout",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
    generate: Callable[[list[str], list[int]], torch.Tensor] | None = None,
    offset: int = 0,
    **settings,
) -> dict:
    """Exact-evaluator accuracy of `generator` on the held-out suites (see the module doc).

    `generate(prompts, seeds) -> images` replaces the plain generator call (e.g. ReNO); `offset`
    skips the first prompts of each suite."""
    items = [(c, p, s) for c, p in suite_items(categories, per_category, split, offset) for s in seeds]
    records = []
    bar = tqdm(total=len(items), desc=f"eval {getattr(generator, 'name', '')}", disable=not progress)
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        prompts, sds = [p for _, p, _ in chunk], [s for _, _, s in chunk]
        if generate is not None:
            images = generate(prompts, sds)
        else:
            with torch.no_grad():
                images = generator.generate(prompts, seeds=sds, **settings)
        for (c, p, s), (ok, score, obj, rel) in zip(
            chunk, judge_clauses(images, prompts, workers), strict=True
        ):
            record = {"category": c, "prompt": p, "seed": s, "passed": bool(ok), "score": score}
            if rel is not None:
                record.update(objects_ok=bool(obj), relations_ok=bool(rel))
            records.append(record)
        bar.update(len(chunk))
    bar.close()
    return {
        "model": getattr(generator, "name", str(generator)),
        "split": split,
        "seeds": list(seeds),
        "per_category": per_category,
        **summarize(records),
        "records": records,
    }


def format_table(results: Sequence[dict]) -> str:
    """Markdown table: one row per category (plus aspects), one column per model."""
    cats = list(dict.fromkeys(c for r in results for c in r["categories"]))
    head = "| category | " + " | ".join(r["model"] for r in results) + " |"
    lines = [head, "|---|" + "---:|" * len(results)]
    for c in cats:
        cells = [f"{100 * r['categories'][c]['accuracy']:.1f}" if c in r["categories"] else ""
                 for r in results]  # fmt: skip
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    for a in ("attribute_binding", "spatial_relationship", "non_spatial_relationship"):
        cells = [f"{100 * r['aspects'][a]:.1f}" if a in r["aspects"] else "" for r in results]
        lines.append(f"| *{a}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gallery_spread(results: Sequence[dict]) -> dict:
    """How a gallery's models differ per aspect (IterComp wants models strong in different aspects).

    Returns ``{"aspects": {aspect: {"best", "worst", "span"}}, "best_in_all": [models]}``: per aspect
    the best and the worst model and the span between them (accuracy points), and the models that
    are best (ties included) in every aspect measured."""
    names = [r["model"] for r in results]
    aspects = [a for a in ASPECTS if all(a in r["aspects"] for r in results)]
    out, best_sets = {}, []
    for a in aspects:
        acc = {n: 100 * r["aspects"][a] for n, r in zip(names, results, strict=True)}
        top, low = max(acc.values()), min(acc.values())
        best_sets.append({n for n, v in acc.items() if v == top})
        out[a] = {
            "best": max(acc, key=acc.get),
            "worst": min(acc, key=acc.get),
            "span": round(top - low, 2),
        }
    best_in_all = [n for n in names if best_sets and all(n in b for b in best_sets)]
    return {"aspects": out, "best_in_all": best_in_all}


def format_spread(spread: dict) -> str:
    """`gallery_spread` as lines: per aspect the span and its two ends, then who is best in all."""
    lines = [
        f"{a}: span {v['span']:.1f} points (best {v['best']}, worst {v['worst']})"
        for a, v in spread["aspects"].items()
    ]
    best = spread["best_in_all"]
    lines.append(f"best in every aspect: {', '.join(best) if best else 'no model'}")
    return "\n".join(lines)

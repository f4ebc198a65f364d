"""Probe: pair accuracy of ensembles of composition reward models (sum of standardised scores).

Every subset of the given models is scored on evaluator-decided pairs of a selection file and a test
file (pairs whose exact-evaluator verdicts, (passed, clause score), differ; re-judged here). The
subset with the best selection accuracy is reported on the test pairs.

    python scripts/probe_reward_ensemble.py --aspect non_spatial_relationship \
        --model ship=itercomp-nonspatial --model r2=runs/r2/final --model z=world-clip \
        SELECTION.jsonl TEST.jsonl
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from PIL import Image

from compalign.rewards.composition.data import PairSet, read_pairs
from compalign.rewards.composition.model import CompositionRewardModel
from compalign.rewards.composition.train import score_items
from compalign.world.evaluator import evaluate


def decided(path: str, aspect: str, models: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Scores of every image of the pairs file per model, and the (better, worse) item indices of
    its evaluator-decided pairs."""
    first = next(iter(models.values()))
    ps = PairSet(read_pairs(path, aspect=aspect, split=None), first.image_size)
    items = ps.items()
    pos = {it: i for i, it in enumerate(items)}
    scores = {n: score_items(m, ps.images, items, 128, normalized=True) for n, m in models.items()}
    verdict = {}
    for i, p in items:
        with Image.open(ps.paths[i]) as im:
            v = evaluate(np.asarray(im.convert("RGB")), p)
        verdict[(i, p)] = (v.passed, v.score)
    hi, lo = [], []
    for b, w, p in zip(ps.better.tolist(), ps.worse.tolist(), ps.prompts, strict=True):
        vb, vw = verdict[(b, p)], verdict[(w, p)]
        if vb != vw:
            a, c = (b, w) if vb > vw else (w, b)
            hi.append(pos[(a, p)])
            lo.append(pos[(c, p)])
    return scores, np.array(hi), np.array(lo)


def accuracy(scores: dict, hi: np.ndarray, lo: np.ndarray, combo: tuple[str, ...]) -> float:
    x = sum((scores[n] / scores[n].std()).numpy() for n in combo)
    d = x[hi] - x[lo]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("selection")
    ap.add_argument("test")
    ap.add_argument("--aspect", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=SOURCE (world-clip: zero-shot)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for spec in args.model:
        name, src = spec.split("=", 1)
        if src == "world-clip":
            models[name] = CompositionRewardModel("world-clip", aspect=args.aspect, frozen=True)
        else:
            models[name] = CompositionRewardModel(src)
    sel, test = decided(args.selection, args.aspect, models), decided(args.test, args.aspect, models)
    combos = [c for k in range(1, len(models) + 1) for c in itertools.combinations(list(models), k)]
    for c in combos:
        print(
            f"{'+'.join(c):28s} selection {100 * accuracy(*sel, c):.1f} ({len(sel[1])})"
            f"  test {100 * accuracy(*test, c):.1f} ({len(test[1])})",
            flush=True,
        )
    best = max(combos, key=lambda c: accuracy(*sel, c))
    print(f"chosen on selection: {'+'.join(best)} -> test {100 * accuracy(*test, best):.1f}")


if __name__ == "__main__":
    main()

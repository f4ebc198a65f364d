"""CPU time of the exact evaluator per image, on world renders and perturbed renders.

    python benchmarks/bench_evaluator_speed.py --res 32 64 --per-category 10 --seed 0

For each resolution, renders the first `--per-category` held-out prompts of every category (clean
and perturbed: 2 images per prompt) and prints the evaluator's CPU milliseconds per image
(`time.process_time`, one thread), so the figure does not depend on other load on the machine.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from compalign.world.evaluator import evaluate
from compalign.world.grammar import parse_prompt
from compalign.world.layout import sample_layout
from compalign.world.perturb import perturb
from compalign.world.render import render
from compalign.world.suites import CATEGORIES, load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--per-category", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for res in args.res:
        rng = np.random.default_rng([args.seed, res])
        images = []
        for category in CATEGORIES:
            for prompt in load_suite(category, "heldout")[: args.per_category]:
                image = render(sample_layout(parse_prompt(prompt), rng), res)
                images += [(image, prompt), (perturb(image, rng), prompt)]
        t0 = time.process_time()
        for image, prompt in images:
            evaluate(image, prompt)
        ms = (time.process_time() - t0) / len(images) * 1000
        print(f"{res} px: {ms:.1f} ms CPU per image ({len(images)} images)")


if __name__ == "__main__":
    main()

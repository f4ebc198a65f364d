"""Held-out split by meaning: leaked held-out prompts of suite v1, and held-out fractions per category.

    python scripts/heldout_leaks.py --seed 1 --draws 3000

Prints a markdown table per category: held-out prompts, how many of them a model trained with suite
v1's per-wording split may have seen in another wording (`suites.leaked_under_v1`), train prompts
of v1 and v2, and the fraction of the category sampler's draws held out under v1 and v2.
"""

from __future__ import annotations

import argparse

import numpy as np

from compalign.world import suites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1, help="seed of the sampler draws")
    ap.add_argument("--draws", type=int, default=3000, help="sampler draws per category for the fractions")
    args = ap.parse_args()
    if args.draws < 1:
        ap.exit(2, f"--draws must be at least 1, got {args.draws}\n")
    print(
        "| category | held-out | leaked under v1 | leak-free | train v1 | train v2 "
        "| held out v1 | held out v2 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    total = [0, 0]
    for c in suites.CATEGORIES:
        held = suites.load_suite(c, "heldout")
        leaked = sum(suites.leaked_under_v1(p) for p in held)
        total[0] += len(held)
        total[1] += leaked
        rng = np.random.default_rng([args.seed, suites.CATEGORIES.index(c)])
        scenes = [suites.SAMPLERS[c](rng) for _ in range(args.draws)]
        f1 = np.mean([suites.is_heldout_v1(s) for s in scenes])
        f2 = np.mean([suites.is_heldout(s) for s in scenes])
        n1, n2 = len(suites._shipped("v1")["suites"][c]["train"]), len(suites.load_suite(c, "train"))
        print(f"| {c} | {len(held)} | {leaked} | {len(held) - leaked} | {n1} | {n2} | {f1:.1%} | {f2:.1%} |")
    print(f"| all | {total[0]} | {total[1]} | {total[0] - total[1]} | | | | |")


if __name__ == "__main__":
    main()

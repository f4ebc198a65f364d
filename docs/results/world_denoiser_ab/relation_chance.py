"""The chance level of a relation given its objects: how often a relation prompt passes when both
objects are drawn right but placed without regard to the relation.

For the first held-out prompts of each relation category, the prompt's relation clauses are removed
(caption preset ``no-relations``: "A and B"), the world's layout sampler places the objects of
that relation-free scene, the renderer draws them, and the exact evaluator judges the image against
the *original* prompt. Among the images whose objects pass (all of them: exact renders), the share
whose relations pass too is what a model that draws the objects but ignores the relation words would
score: the baseline of the A/B's "relation given objects" figure.

    python docs/results/world_denoiser_ab/relation_chance.py --per-category 25 -n 20 \
        --out docs/results/world_denoiser_ab/relation_chance.json
"""

from __future__ import annotations

import argparse

import numpy as np

from compalign.io import atomic_write_json
from compalign.world import parse_prompt, render, sample_layout, to_uint8
from compalign.world.captions import create_caption_rates, web_caption
from compalign.world.quality import judge_clauses
from compalign.world.suites import load_suite

CATEGORIES = ["spatial", "position", "non_spatial"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-category", type=int, default=25, help="Held-out prompts per category (the first).")
    ap.add_argument("-n", type=int, default=20, help="Layouts per prompt (seeds 0..n-1).")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rates = create_caption_rates("no-relations")
    out = {"per_category": args.per_category, "layouts_per_prompt": args.n, "categories": {}}
    for cat in CATEGORIES:
        images, prompts = [], []
        rng = np.random.default_rng(0)
        for p in load_suite(cat, "heldout")[: args.per_category]:
            free = web_caption(parse_prompt(p), rng, rates, avoid_heldout=False)  # "A and B"
            for s in range(args.n):
                images.append(
                    to_uint8(render(sample_layout(parse_prompt(free), np.random.default_rng(s)), 32))
                )
                prompts.append(p)
        verdicts = judge_clauses(np.stack(images), prompts)
        passed = np.array([v[0] for v in verdicts])
        objects = np.array([v[2] for v in verdicts])
        out["categories"][cat] = {
            "images": len(prompts),
            "objects": float(objects.mean()),
            "relation_given_objects": float(passed[objects].mean()),
        }
        given = 100 * passed[objects].mean()
        print(f"{cat}: objects {100 * objects.mean():.1f}%, relation given objects {given:.1f}%")
    if args.out:
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()

"""Why two-object prompts fail: how many failures are attribute-binding swaps.

For held-out prompts of two coloured objects (categories color, color_attr, spatial, non_spatial),
a checkpoint's images (DDIM 10 steps, guidance 3, seeds 0..n-1) are judged against the prompt and
against the prompt with the two objects' colours swapped. A failing image that passes the swapped
prompt drew both objects, with each colour on the other object: a binding swap.

    python docs/results/world_denoiser_ab/binding_swaps.py runs/ab2/coordt5/checkpoints/step_0014062 \
        runs/ab2/unet/checkpoints/step_0014062 --out docs/results/world_denoiser_ab/binding_swaps.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from compalign.generators.world.generator import WorldGenerator
from compalign.generators.world.train import checkpoint_pipeline
from compalign.io import atomic_write_json
from compalign.world.grammar import Scene, parse_prompt, to_prompt
from compalign.world.quality import judge_images
from compalign.world.suites import load_suite

CATEGORIES = ["color", "color_attr", "spatial", "non_spatial"]


def swapped(prompt: str) -> str | None:
    """The prompt with its two objects' colours swapped (None unless two objects of two colours)."""
    s = parse_prompt(prompt)
    if len(s.entities) != 2 or None in (s.entities[0].color, s.entities[1].color):
        return None
    a, b = s.entities
    if a.color == b.color:
        return None
    return to_prompt(Scene((a.with_(color=b.color), b.with_(color=a.color)), s.relations))


def measure(ckpt: str, per_category: int, seeds: int) -> dict:
    pipe, step = checkpoint_pipeline(ckpt)
    gen = WorldGenerator(pipe, name=str(step), device="cpu")
    out = {"checkpoint": ckpt, "step": step, "categories": {}}
    for c in CATEGORIES:
        items = [
            (p, q, s)
            for p in load_suite(c, "heldout")[:per_category]
            if (q := swapped(p))
            for s in range(seeds)
        ]
        with torch.no_grad():
            x = gen.generate([p for p, _, _ in items], seeds=[s for _, _, s in items], num_inference_steps=10)
        ok = [a for a, _ in judge_images(x, [p for p, _, _ in items])]
        ok_swapped = [a for a, _ in judge_images(x, [q for _, q, _ in items])]
        fails = [i for i, a in enumerate(ok) if not a]
        swaps = sum(ok_swapped[i] for i in fails)
        out["categories"][c] = {
            "images": len(items),
            "passed": sum(ok),
            "failed": len(fails),
            "binding_swaps": swaps,
            "swap_share_of_failures": swaps / len(fails) if fails else None,
        }
        print(ckpt, c, out["categories"][c], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--per-category", type=int, default=25)
    p.add_argument("-n", type=int, default=2, help="Seeds per prompt.")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    atomic_write_json(args.out, [measure(c, args.per_category, args.n) for c in args.checkpoints])


if __name__ == "__main__":
    main()

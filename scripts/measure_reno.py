"""Measure what ReNO buys on the world: exact-evaluator accuracy on held-out suites of the one-step
generator alone, with ReNO on learned world rewards, and with best-of-N at the same number of
generator evaluations (4 seeds per prompt unless told otherwise).

    python scripts/measure_reno.py --model world-onestep --reward world-clip=1 \\
        --categories single_object two_object color color_attr spatial non_spatial \\
        --per-category 25 --iterations 50 --json runs/reno_quality.json

The exact evaluator is only the judge here: it is never an optimised reward.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from compalign.generators import create_generator
from compalign.noise_optimization.cli import build_rewards
from compalign.noise_optimization.reno import ReNOConfig, optimize_noise
from compalign.world.quality import evaluate_generator, format_table

TARGET = ["two_object", "color", "color_attr", "spatial", "non_spatial"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world-onestep")
    ap.add_argument("--reward", action="append", default=None, help="NAME=WEIGHT (default world-clip=1)")
    ap.add_argument("--categories", nargs="*", default=["single_object", *TARGET])
    ap.add_argument("--per-category", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seed-offset", type=int, default=0, help="Seeds are OFFSET .. OFFSET + seeds - 1.")
    ap.add_argument("--split", default="heldout", help="heldout (report) or train (tune settings).")
    ap.add_argument("--prompt-offset", type=int, default=0, help="Skip the first prompts of each suite.")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--lr", type=float, default=5.0)
    ap.add_argument("--grad-clip", type=float, default=0.1)
    ap.add_argument("--reg-weight", type=float, default=0.01)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--searches", nargs="*", default=["none", "reno", "best-of-n"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workers", type=int, default=0, help="Evaluator processes.")
    ap.add_argument("--device", default="cpu", help="Where the generator and rewards run (cpu, cuda).")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = create_generator(args.model, device=args.device)
    rewards = build_rewards(args.reward or ["world-clip=1"], [], gen.device)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    results = []
    for search in args.searches:
        cfg = ReNOConfig(
            iterations=args.iterations, lr=args.lr, grad_clip=args.grad_clip or None,
            reg_weight=args.reg_weight, optimizer=args.optimizer, search=search, progress=False,
        )  # fmt: skip

        def run(prompts, sds, cfg=cfg):
            return optimize_noise(gen, prompts, rewards, sds, cfg).best_images

        t0 = time.perf_counter()
        r = evaluate_generator(
            gen, args.categories, args.per_category, seeds, split=args.split,
            batch_size=args.batch_size, workers=args.workers, progress=True, generate=run,
            offset=args.prompt_offset,
        )  # fmt: skip
        r["model"] = f"{args.model} ({search})"
        r["seconds"] = round(time.perf_counter() - t0, 1)
        r.pop("records")
        results.append(r)
        target = [r["categories"][c]["accuracy"] for c in TARGET if c in r["categories"]]
        r["target_mean"] = sum(target) / max(1, len(target))
        print(f"{search}: target mean {100 * r['target_mean']:.1f}% ({r['seconds']}s)", flush=True)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

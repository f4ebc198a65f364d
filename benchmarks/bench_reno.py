"""ReNO speed on this machine: 50 iterations on one prompt (world one-step generator + world CLIP),
and the throughput of a batch of 16 prompts against the same 16 optimised one at a time.

Shipped weights are used when present, else random weights of the same architectures (the same
compute). Prints a table; ``--json PATH`` also writes the figures.

    python benchmarks/bench_reno.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from compalign.generators import shipped_models
from compalign.generators.world.generator import WorldGenerator
from compalign.generators.world.train import preset_pipeline
from compalign.noise_optimization.reno import ReNOConfig, WeightedReward, optimize_noise
from compalign.rewards.world_clip.model import WorldCLIPModel
from compalign.rewards.world_clip.reward import WorldCLIPReward

PROMPTS = [
    "a red circle on the left of a blue square",
    "a green triangle above a yellow cross",
    "a small cyan circle inside a large magenta square",
    "two white crosses",
]


def load(device: str):
    if "world-onestep" in shipped_models():
        from compalign.generators import create_generator

        gen, trained = create_generator("world-onestep", device=device), True
    else:
        gen, trained = WorldGenerator(preset_pipeline("world-onestep"), "world-onestep", device=device), False
    try:
        reward = WorldCLIPReward("world-clip", device=device)
    except LookupError:
        reward = WorldCLIPReward(WorldCLIPModel.from_arch(seed=0), device=device)
        trained = False
    return gen, reward, trained


def run(gen, reward, prompts, seeds, iterations):
    cfg = ReNOConfig(iterations=iterations, progress=False)
    t0 = time.perf_counter()
    optimize_noise(gen, prompts, [WeightedReward("world-clip", reward, 1.0)], seeds, cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen, reward, trained = load(args.device)
    run(gen, reward, PROMPTS[:1], [0], 2)  # warm-up
    one = run(gen, reward, PROMPTS[:1], [0], args.iterations)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    seeds = list(range(args.batch))
    batched = run(gen, reward, prompts, seeds, args.iterations)
    single = sum(run(gen, reward, [p], [s], args.iterations) for p, s in zip(prompts, seeds, strict=True))
    res = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "trained_weights": trained,
        "iterations": args.iterations,
        "one_prompt_s": round(one, 3),
        "batch": args.batch,
        "batch_s": round(batched, 3),
        "one_at_a_time_s": round(single, 3),
        "throughput_gain": round(single / batched, 2),
    }
    print(f"{args.iterations} iterations, one prompt: {one:.2f} s")
    print(f"{args.batch} prompts: batched {batched:.2f} s, one at a time {single:.2f} s "
          f"-> {single / batched:.1f}x throughput")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()

"""Per-sample norm of ReNO's noise gradient (reward losses + noise regulariser), before clipping,
at a few iterations, for each reward spec: shows which rewards ReNO's clip (default 0.1) binds.

    python scripts/reno_grad_norms.py world-clip=1 composition:itercomp-spatial=1 \\
        composition:itercomp-spatial=0.1 --category non_spatial --n 32
"""

from __future__ import annotations

import argparse

import torch

from compalign.generators import create_generator
from compalign.noise_optimization.cli import build_rewards
from compalign.noise_optimization.reno import ReNOConfig, optimize_noise
from compalign.world.suites import load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", help="NAME=WEIGHT reward specs (one ReNO run each)")
    ap.add_argument("--model", default="world-onestep")
    ap.add_argument("--category", default="non_spatial")
    ap.add_argument("--n", type=int, default=32, help="held-out prompts (one seed each)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = create_generator(args.model)
    prompts = load_suite(args.category, "heldout")[: args.n]
    cfg = ReNOConfig(iterations=args.iterations, progress=False)
    for spec in args.specs:
        rewards = build_rewards([spec], [], gen.device)
        res = optimize_noise(gen, prompts, rewards, list(range(len(prompts))), cfg)
        norms = [h["grad_norm"] for h in res.history if "grad_norm" in h]  # [steps][B], before clipping
        n = torch.tensor(norms)  # [steps, B]
        clipped = (n > cfg.grad_clip).float().mean(dim=1)
        print(
            f"{spec:50s} median grad norm: step 0 {n[0].median():.4f}, "
            f"step {len(n) - 1} {n[-1].median():.4f}; "
            f"clipped (> {cfg.grad_clip}): {100 * clipped[0]:.0f}% -> {100 * clipped[-1]:.0f}%"
        )


if __name__ == "__main__":
    main()

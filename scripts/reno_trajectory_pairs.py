"""On-policy preference pairs from ReNO trajectories (a probe of reward training data).

ReNO (world-onestep + a reward, default the world CLIP) runs on train prompts of one aspect; images
along each trajectory (a few iterations + the best) are judged by the exact world evaluator, and
every two images of the same prompt whose verdicts (passed, clause fraction) differ make a pair
(at most `--per-prompt`, drawn at random). Same generator, same prompt: the pair differs in what
the noise optimisation changed, not in which model drew it, so a reward trained on them learns what
the reward being optimised gets wrong.

    python scripts/reno_trajectory_pairs.py OUT --aspect non_spatial_relationship --n 300 --seeds 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compalign.generators import create_generator
from compalign.io import atomic_write_text
from compalign.noise_optimization.cli import build_rewards
from compalign.noise_optimization.reno import ReNOConfig, optimize_noise
from compalign.world.quality import judge_images
from compalign.world.suites import list_categories, load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--aspect", required=True)
    ap.add_argument(
        "--n", type=int, default=300, help="prompts per category (the first N after --prompt-offset)"
    )
    ap.add_argument(
        "--split", default="train", choices=["train", "heldout"], help="suite split of the prompts"
    )
    ap.add_argument("--prompt-offset", type=int, default=0, help="skip the first prompts of each suite")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-offset", type=int, default=1000)
    ap.add_argument("--model", default="world-onestep")
    ap.add_argument("--reward", action="append", default=None, help="NAME=WEIGHT (default world-clip=1)")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--keep", default="0,4,9,15,25,35,49", help="iterations whose images are kept")
    ap.add_argument("--per-prompt", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    keep = sorted({int(k) for k in args.keep.split(",")} & set(range(args.iterations)))
    o = args.prompt_offset
    prompts = [p for c in list_categories(args.aspect) for p in load_suite(c, args.split)[o : o + args.n]]
    jobs = [(p, args.seed_offset + s) for p in prompts for s in range(args.seeds)]
    gen = create_generator(args.model)
    rewards = build_rewards(args.reward or ["world-clip=1"], [], gen.device)
    cfg = ReNOConfig(iterations=args.iterations, progress=False)

    done_file = out / "images.jsonl"
    done = {}
    if done_file.exists():
        for ln in done_file.read_text().splitlines():
            try:
                r = json.loads(ln)
            except json.JSONDecodeError:  # a line cut by an interruption: its batch runs again
                continue
            done[(r["job"], r["tag"])] = r
    t0 = time.perf_counter()
    for b0 in range(0, len(jobs), args.batch_size):
        batch = list(range(b0, min(len(jobs), b0 + args.batch_size)))
        if all((j, "best") in done for j in batch):
            continue
        kept: dict[str, torch.Tensor] = {}

        def grab(it, images, record, kept=kept):
            if it in keep:
                kept[f"it{it:02d}"] = images.clone()

        prompts_b, seeds_b = [jobs[j][0] for j in batch], [jobs[j][1] for j in batch]
        res = optimize_noise(gen, prompts_b, rewards, seeds_b, cfg, grab)
        kept["best"] = res.best_images.cpu()
        lines = []
        for tag, imgs in kept.items():
            verdicts = judge_images(imgs, prompts_b, args.workers)
            for k, j in enumerate(batch):
                name = f"images/{j:05d}_{tag}.png"
                arr = (imgs[k].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(arr).save(out / name)
                ok, score = verdicts[k]
                lines.append({"job": j, "tag": tag, "prompt": jobs[j][0], "seed": jobs[j][1], "path": name,
                              "passed": bool(ok), "score": float(score)})  # fmt: skip
        with done_file.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in lines))
        for r in lines:
            done[(r["job"], r["tag"])] = r
        n_best = [done[(j, "best")]["passed"] for j in batch]
        print(f"[{time.perf_counter() - t0:6.0f}s] {b0 + len(batch)}/{len(jobs)} best passed "
              f"{100 * np.mean(n_best):.1f}%", flush=True)  # fmt: skip

    # pairs: per prompt, images whose verdicts differ (identical images skipped)
    rng = np.random.default_rng(args.seed)
    by_prompt: dict[str, list[dict]] = {}
    for r in done.values():
        by_prompt.setdefault(r["prompt"], []).append(r)
    pairs = []
    for prompt, rows in by_prompt.items():
        cands = []
        for a, b in itertools.combinations(rows, 2):
            ka, kb = (a["passed"], a["score"]), (b["passed"], b["score"])
            if ka != kb:
                cands.append((a, b) if ka > kb else (b, a))
        rng.shuffle(cands)
        for better, worse in cands[: args.per_prompt]:
            pairs.append({"aspect": args.aspect, "index": better["job"], "prompt": prompt,
                          "better": str(out / better["path"]), "worse": str(out / worse["path"]),
                          "better_model": f"reno-{better['tag']}", "worse_model": f"reno-{worse['tag']}",
                          "split": args.split, "decided_by": "evaluator"})  # fmt: skip
    atomic_write_text(out / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    passed = np.mean([r["passed"] for r in done.values() if r["tag"] == "best"])
    print(f"{len(pairs)} pairs from {len(by_prompt)} prompts; best images passed {100 * passed:.1f}%")


if __name__ == "__main__":
    main()

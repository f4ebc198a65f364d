"""Probe: fine-tune a world model on its own best-of-N samples (reward-ranked fine-tuning).

1. sample N seeds for P train prompts per category from the base, judge each image with the
   exact evaluator and (optionally) score it with reward models; cache everything in OUT/samples.npz
2. select per prompt: ``oracle`` (every image the evaluator passes) or ``reward`` (the top-k by
   the aspect reward of the prompt's category)
3. fine-tune the base with the denoising loss on the selected images (mixed with the scene pool)
4. held-out exact-evaluator accuracy (25 prompts x 4 seeds per category)

    python scripts/probe_self_distill.py OUT --select oracle --steps 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from compalign.generators import create_generator
from compalign.generators.world.rejection_sampling import (
    DEFAULT_CATEGORIES,
    RejectionSamplingConfig,
    finetune_on_samples,
    sample_and_judge,
)
from compalign.world.quality import evaluate_generator
from compalign.world.suites import CATEGORY_ASPECT

CATS = DEFAULT_CATEGORIES


def score_rewards(d: dict, rewards: dict, path: Path) -> np.ndarray:
    if path.exists():
        return np.load(path)
    r = np.zeros(len(d["prompts"]))
    for i in range(0, len(r), 256):
        x = torch.from_numpy(d["images"][i : i + 256]).permute(0, 3, 1, 2).float() / 255
        pp, cc = d["prompts"][i : i + 256].tolist(), d["cats"][i : i + 256].tolist()
        with torch.no_grad():
            for a, rew in rewards.items():
                m = [j for j, c in enumerate(cc) if CATEGORY_ASPECT[c] == a]
                if m:
                    r[i + np.array(m)] = rew(x[m], [pp[j] for j in m]).float().numpy()
    np.save(path, r)
    return r


def select(d: dict, how: str, k: int) -> np.ndarray:
    if how == "oracle":
        return np.flatnonzero(d["passed"])
    keep = []
    for p in np.unique(d["prompts"]):
        idx = np.flatnonzero(d["prompts"] == p)
        keep += idx[np.argsort(-d["reward"][idx])[:k]].tolist()
    return np.array(sorted(keep))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--base", default="world-base")
    ap.add_argument("--per-cat", type=int, default=100)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--select", default="oracle", choices=["oracle", "reward"])
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--reward", action="append", default=[], help="ASPECT=SPEC")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--pool-frac", type=float, default=0.0)
    ap.add_argument("--tag", default="ft")
    ap.add_argument("--balanced", action="store_true", help="draw a category uniformly, then an image")
    ap.add_argument("--train-te", action="store_true", help="train the text encoder too")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    gen = create_generator(args.base)
    rewards = {}
    if args.reward:
        from compalign.rewards import create_reward

        for spec in args.reward:
            a, s = spec.split("=", 1)
            rewards[a] = create_reward(s).eval()
    rs = RejectionSamplingConfig(
        categories=CATS,
        prompts_per_category=args.per_cat,
        samples_per_prompt=args.n,
        steps=args.steps,
        batch_size=args.batch - int(round(args.batch * args.pool_frac)),
        learning_rate=args.lr,
        balanced=args.balanced,
        train_text_encoder=args.train_te,
    )
    d = sample_and_judge(gen, rs, cache=out / "samples.npz")
    if rewards:
        d["reward"] = score_rewards(d, rewards, out / f"reward_{args.tag}.npy")
    keep = select(d, args.select, args.top_k)
    sel_pass = d["passed"][keep].mean()
    n_all, p_all = len(d["prompts"]), d["passed"].mean()
    print(f"selected {len(keep)} of {n_all} (pass rate {sel_pass:.3f} vs {p_all:.3f})")
    for c in CATS:
        m = d["cats"] == c
        mk = d["cats"][keep] == c
        p_sel = d["passed"][keep][mk].mean()
        print(f"  {c}: all {d['passed'][m].mean():.3f} selected {p_sel:.3f} n={mk.sum()}")

    # fine-tune (with exact renders of a scene pool mixed in, --pool-frac of each batch)
    extra = None
    nb_pool = int(round(args.batch * args.pool_frac))
    if nb_pool:
        from compalign.generators.world.data import ScenePool

        pool = ScenePool("runs/_scene_pool", CATS, 1024, 256, 0)
        pool.build(workers=1)

        def extra(step: int) -> dict:
            return pool.batch(0, step, nb_pool)

    finetune_on_samples(
        gen.pipe, d["images"][keep], d["prompts"][keep].tolist(), rs, categories=d["cats"][keep], extra=extra
    )
    res = evaluate_generator(gen, [*CATS, "single_object"], 25, (0, 1, 2, 3), progress=False)
    res.pop("records")
    mean = float(np.mean(list(res["aspects"].values())))
    res["aspect_mean"] = mean
    res["probe"] = vars(args) | {"selected": int(len(keep)), "selected_pass": float(sel_pass)}
    print(json.dumps({c: round(v["accuracy"] * 100, 1) for c, v in res["categories"].items()}))
    print("aspects", {a: round(v * 100, 1) for a, v in res["aspects"].items()}, "mean", round(mean * 100, 1))
    (out / f"q_{args.tag}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

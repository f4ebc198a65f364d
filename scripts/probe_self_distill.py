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
import time
from pathlib import Path

import numpy as np
import torch

from compalign.generators import create_generator
from compalign.generators.generate import to_uint8
from compalign.generators.world.models import build_training_scheduler
from compalign.generators.world.train import diffusion_loss
from compalign.world.quality import evaluate_generator, judge_images
from compalign.world.suites import CATEGORY_ASPECT, load_suite

CATS = ["color", "shape", "texture", "colors", "color_attr", "spatial", "position", "non_spatial"]


def sample(gen, out: Path, per_cat: int, n: int) -> dict:
    path = out / "samples.npz"
    if path.exists():
        z = np.load(path, allow_pickle=True)
        return {k: z[k] for k in z.files}
    imgs, prompts, cats, passed, score = [], [], [], [], []
    t0 = time.time()
    for c in CATS:
        ps = load_suite(c, "train")[:per_cat]
        items = [(p, s) for p in ps for s in range(1000, 1000 + n)]
        for i in range(0, len(items), 128):
            chunk = items[i : i + 128]
            pp = [p for p, _ in chunk]
            with torch.no_grad():
                x = gen.generate(pp, seeds=[s for _, s in chunk], batch_size=128)
            j = judge_images(x, pp)
            imgs.append(to_uint8(x))
            prompts += pp
            cats += [c] * len(pp)
            passed += [a for a, _ in j]
            score += [b for _, b in j]
        print(f"{c}: pass {np.mean(passed[-len(items) :]):.3f} ({time.time() - t0:.0f}s)", flush=True)
    d = {
        "images": np.concatenate(imgs),
        "prompts": np.array(prompts),
        "cats": np.array(cats),
        "passed": np.array(passed),
        "score": np.array(score),
    }
    np.savez(path, **d)
    return d


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
    d = sample(gen, out, args.per_cat, args.n)
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

    # fine-tune
    pipe = gen.pipe
    unet, te = pipe.unet, pipe.text_encoder
    model = torch.nn.ModuleDict({"unet": unet, "text_encoder": te})
    trained = model if args.train_te else unet
    trained.requires_grad_(True)
    trained.train()
    opt = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=0.0)
    sched = build_training_scheduler(pipe.scheduler.config)
    images = torch.from_numpy(d["images"][keep]).permute(0, 3, 1, 2).float() / 127.5 - 1
    prompts = d["prompts"][keep].tolist()
    by_cat = [torch.from_numpy(np.flatnonzero(d["cats"][keep] == c)) for c in CATS]
    pool = None
    if args.pool_frac > 0:
        from compalign.generators.world.data import ScenePool

        pool = ScenePool("runs/_scene_pool", CATS, 1024, 256, 0)
        pool.build(workers=1)
    cfg = argparse.Namespace(seed=0, cond_dropout=0.1, snr_gamma=None)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    nb_pool = int(round(args.batch * args.pool_frac))
    for step in range(args.steps):
        if args.balanced:
            cs = torch.randint(len(CATS), (args.batch - nb_pool,), generator=g).tolist()
            idx = torch.stack([by_cat[c][torch.randint(len(by_cat[c]), (1,), generator=g)][0] for c in cs])
        else:
            idx = torch.randint(len(prompts), (args.batch - nb_pool,), generator=g)
        batch = {"images": images[idx], "prompts": [prompts[i] for i in idx.tolist()]}
        if pool is not None and nb_pool:
            pb = pool.batch(0, step, nb_pool)
            batch = {
                "images": torch.cat([batch["images"], pb["images"]]),
                "prompts": batch["prompts"] + pb["prompts"],
            }
        loss = diffusion_loss(cfg, model, pipe, sched, batch, step, "cpu")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    trained.eval()
    trained.requires_grad_(False)
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

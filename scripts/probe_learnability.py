"""Learnability check: can a world model win back, from its own samples, relations it was made to lose?

The property IterComp's loop needs (feedback on a model's own outputs must be able to teach it
relations). Three stages, each cached under OUT so that an interrupted check resumes:

1. base: held-out accuracy of MODEL (relation categories, plus single_object and color_attr to
   watch what else moves)
2. forget: a copy of MODEL fine-tuned on captions with every relation clause removed (caption
   preset ``no-relations``: "A and B"), a checkpoint every --check-every steps, each evaluated,
   until the relation accuracy (mean of spatial, position, non_spatial) has fallen by --fall points
   or --forget-max-steps is reached
   (or, with --forgotten, a copy trained from scratch on those captions, e.g. with the model's
   preset and ``--set captions=no-relations``: the fine-tune forgets slowly, since the removed
   words no longer reach the loss and their tokens keep what they learnt)
3. recover: the oracle probe on the forgotten copy (`compalign.generators.world.rejection_sampling`):
   its own evaluator-passing samples of train prompts, true captions, --recover-steps (<= 1000) steps

The check passes when the fall is at least --fall points and the recovery wins back at least half
of it. OUT/learnability.json holds every figure; OUT/learnability.md a table.

    python scripts/probe_learnability.py runs/learnability --model runs/world-base-v2
    python scripts/probe_learnability.py runs/learnability --model runs/world-base-v2 \
        --forgotten runs/world-base-v2-norel
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from compalign.generators import create_generator
from compalign.generators.registry import pipeline_dir
from compalign.generators.world.config import WorldTrainConfig
from compalign.generators.world.generator import RECORD_FILE, WorldGenerator
from compalign.generators.world.pipeline import WorldPipeline
from compalign.generators.world.rejection_sampling import (
    RejectionSamplingConfig,
    finetune_on_samples,
    passing,
    sample_and_judge,
)
from compalign.generators.world.train import checkpoint_pipeline, train_world_model
from compalign.io import atomic_write_json, atomic_write_text
from compalign.world.quality import evaluate_generator

RELATIONS = ["spatial", "position", "non_spatial"]
EVAL_CATEGORIES = [*RELATIONS, "single_object", "color_attr"]


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def relation_accuracy(res: dict) -> float:
    """Mean accuracy (%) of the relation categories."""
    return 100 * float(np.mean([res["categories"][c]["accuracy"] for c in RELATIONS]))


def evaluate(gen, path: Path, args: argparse.Namespace) -> dict:
    """Held-out accuracy of `gen` (cached at `path`)."""
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    settings = {"num_inference_steps": args.sample_steps} if args.sample_steps else {}
    seeds = list(range(args.seed, args.seed + args.eval_seeds))
    res = evaluate_generator(gen, EVAL_CATEGORIES, args.per_category, seeds, progress=False, **settings)
    res.pop("records", None)
    res["relation_accuracy"] = relation_accuracy(res)
    res["eval_s"] = time.perf_counter() - t0
    atomic_write_json(path, res)
    cats = ", ".join(f"{c} {100 * v['accuracy']:.0f}" for c, v in res["categories"].items())
    print(f"{path.stem}: relations {res['relation_accuracy']:.1f} ({cats})", flush=True)
    return res


def forget_config(args: argparse.Namespace, out: Path) -> WorldTrainConfig:
    """MODEL's own training config, continued from MODEL on captions without relations."""
    record = pipeline_dir(Path(args.model)) / RECORD_FILE
    if not record.is_file():
        fail(f"--model {args.model}: no training record {RECORD_FILE} (a trained world model's folder)")
    d = json.loads(record.read_text())["config"]
    d.update(
        name="learnability-forget",
        output_dir=str(out / "forget"),
        init_from=str(args.model),
        captions="no-relations",
        learning_rate=args.forget_lr,
        lr_schedule="constant",
        warmup_steps=0,
        max_steps=args.forget_max_steps,
        checkpoint_every=args.check_every,
        keep_checkpoints=args.forget_max_steps // args.check_every + 1,
        ema_decay=None,  # a short fine-tune: the raw weights are evaluated
        seed=args.seed,
        num_threads=args.threads,
        progress=False,
        time_limit_s=None,
        device="cpu",
    )
    if args.pool_dir:
        d["pool_dir"] = args.pool_dir
    return WorldTrainConfig.from_dict(d)


def forget(args: argparse.Namespace, out: Path, base_rel: float) -> tuple[Path, list[dict]]:
    """Fine-tune on relation-free captions until the relation accuracy falls by `args.fall`."""
    config = forget_config(args, out)
    curve = []
    for step in range(args.check_every, args.forget_max_steps + 1, args.check_every):
        ckpt = config.run_dir / "checkpoints" / f"step_{step:07d}"
        if not ckpt.is_dir():
            train_world_model(config, stop_at_step=step)
        pipe, _ = checkpoint_pipeline(ckpt, ema=False)
        res = evaluate(
            WorldGenerator(pipe, name=f"forget@{step}", device="cpu"),
            out / "eval" / f"forget_{step}.json",
            args,
        )
        curve.append({"step": step, "relation_accuracy": res["relation_accuracy"], "result": res})
        if base_rel - res["relation_accuracy"] >= args.fall:
            break
    return ckpt, curve


def forgotten_copy(args: argparse.Namespace, out: Path) -> tuple[WorldPipeline, list[dict]]:
    """--forgotten: the copy trained apart, evaluated once (its training steps as the curve's)."""
    gen = create_generator(args.forgotten, device="cpu")
    res = evaluate(gen, out / "eval" / "forgotten.json", args)
    steps = (gen.record or {}).get("steps")
    return gen.pipe, [{"step": steps, "relation_accuracy": res["relation_accuracy"], "result": res}]


def recover(args: argparse.Namespace, out: Path, pipe: WorldPipeline) -> tuple[dict, dict]:
    """The oracle probe on the forgotten copy `pipe` (fine-tuned in place)."""
    path = out / "eval" / "recovered.json"
    cfg = RejectionSamplingConfig(
        prompts_per_category=args.prompts_per_category,
        samples_per_prompt=args.samples_per_prompt,
        steps=args.recover_steps,
        batch_size=args.recover_batch,
        learning_rate=args.recover_lr,
        seed=args.seed,
    )
    gen = WorldGenerator(pipe, name="forgotten", device="cpu")
    samples = sample_and_judge(gen, cfg, cache=out / "samples.npz")
    keep = passing(samples)
    info = {
        "samples": int(len(samples["passed"])),
        "passing": int(len(keep)),
        "passing_per_category": {
            c: int(np.sum(samples["passed"][samples["cats"] == c]))
            for c in np.unique(samples["cats"]).tolist()
        },
        "config": vars(cfg),
    }
    if path.is_file():
        return json.loads(path.read_text()), info
    if len(keep):  # nothing passes: nothing to learn from, the copy stays as it is
        finetune_on_samples(pipe, samples["images"][keep], samples["prompts"][keep].tolist(), cfg)
    return evaluate(WorldGenerator(pipe, name="recovered", device="cpu"), path, args), info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="Folder of the check (resumable).")
    p.add_argument(
        "--model", required=True, help="A trained world model's folder (with its training record)."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the fine-tunes; first held-out noise seed.")
    p.add_argument("--fall", type=float, default=20.0, help="Points of relation accuracy to lose.")
    p.add_argument(
        "--forgotten",
        default=None,
        help="A copy trained apart on captions without relations (stage 2 evaluates it, trains nothing).",
    )
    p.add_argument("--forget-lr", type=float, default=3e-4)
    p.add_argument("--forget-max-steps", type=int, default=4000)
    p.add_argument("--check-every", type=int, default=500)
    p.add_argument("--recover-steps", type=int, default=1000)
    p.add_argument("--recover-lr", type=float, default=5e-5)
    p.add_argument("--recover-batch", type=int, default=32)
    p.add_argument("--prompts-per-category", type=int, default=100)
    p.add_argument("--samples-per-prompt", type=int, default=8)
    p.add_argument("--per-category", type=int, default=25, help="Held-out prompts per category.")
    p.add_argument("--eval-seeds", type=int, default=2, help="Noise seeds per held-out prompt.")
    p.add_argument("--sample-steps", type=int, default=None, help="Sampling steps (default: the model's).")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool-dir", default=None, help="Scene pool folder (default: the per-user cache).")
    args = p.parse_args(argv)
    if args.check_every < 1 or args.forget_max_steps < args.check_every:
        fail("--check-every must be at least 1 and at most --forget-max-steps")
    if not 1 <= args.recover_steps <= 1000:
        fail(f"--recover-steps must be in 1..1000 (the check's budget), got {args.recover_steps}")
    if not Path(args.model).exists():
        fail(f"--model {args.model}: no such folder")
    if args.forgotten and pipeline_dir(Path(args.forgotten)) is None:
        fail(f"--forgotten {args.forgotten}: not a trained world model's folder")
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. the model as it is
    base = evaluate(create_generator(args.model, device="cpu"), out / "eval" / "base.json", args)
    # 2. lose the relations, 3. win them back from its own samples
    if args.forgotten:
        pipe, curve = forgotten_copy(args, out)
    else:
        ckpt, curve = forget(args, out, base["relation_accuracy"])
        pipe = checkpoint_pipeline(ckpt, ema=False)[0]
    recovered, info = recover(args, out, pipe)

    b, f, r = base["relation_accuracy"], curve[-1]["relation_accuracy"], recovered["relation_accuracy"]
    fall, won = b - f, r - f
    report = {
        "model": str(args.model),
        "relation_accuracy": {"base": b, "forgotten": f, "recovered": r},
        "fall": fall,
        "won_back": won,
        "won_back_share": won / fall if fall > 0 else None,
        "fall_reached": fall >= args.fall,
        "passed": fall >= args.fall and won >= fall / 2,
        "forgotten_by": f"trained apart: {args.forgotten}" if args.forgotten else "fine-tune",
        "forget_steps": curve[-1]["step"],
        "forget_curve": [{"step": c["step"], "relation_accuracy": c["relation_accuracy"]} for c in curve],
        "categories": {
            name: {c: 100 * v["accuracy"] for c, v in res["categories"].items()}
            for name, res in (("base", base), ("forgotten", curve[-1]["result"]), ("recovered", recovered))
        },
        "recovery_samples": info,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    atomic_write_json(out / "learnability.json", report)
    cats = list(report["categories"]["base"])
    lines = [
        "| model | " + " | ".join(cats) + " | relations (mean of " + ", ".join(RELATIONS) + ") |",
        "|---|" + "---:|" * (len(cats) + 1),
    ]
    for name in ("base", "forgotten", "recovered"):
        row = report["categories"][name]
        rel = report["relation_accuracy"][name]
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.0f}" for c in cats) + f" | {rel:.1f} |")
    share = f"{100 * report['won_back_share']:.0f}%" if report["won_back_share"] is not None else "-"
    lines += [
        "",
        f"Fall {fall:.1f} points after {report['forget_steps']} steps"
        f"{' of the copy trained apart' if args.forgotten else ''} (needed {args.fall:.0f}); "
        f"won back {won:.1f} ({share}; needed half) from {info['passing']} passing samples of "
        f"{info['samples']}: **{'passed' if report['passed'] else 'not passed'}**.",
    ]
    atomic_write_text(out / "learnability.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()

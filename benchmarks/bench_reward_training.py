"""Composition reward-model training speed: pairs per second with the world-clip backbone, on the
CPU (and the GPU when there is one), for IterComp's frozen fraction 0.7 and for the head alone;
``--contrastive`` adds runs with the contrastive term (``contrastive_weight`` 1, 64 clean renders of
a 256-scene pool of one category per step, built in the temporary folder first).

A synthetic world pairs file is rendered into a temporary folder (`make_world_pairs`), and the
real trainer (`train_reward_model`) runs a few epochs; the figure is the median of the per-step
throughputs after the first step (the trainer logs every step), evaluation excluded. The shipped
world CLIP is used when present, else a random one of the same architecture (the same compute).

    python benchmarks/bench_reward_training.py --threads 1
    python benchmarks/bench_reward_training.py --device cuda --batch 256 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from compalign.rewards.composition.synthetic import make_world_pairs
from compalign.rewards.composition.train import RewardTrainConfig, train_reward_model
from compalign.rewards.world_clip.model import WorldCLIPModel


def backbone():
    from compalign.rewards.world_clip.reward import resolve_model_dir

    try:
        return WorldCLIPModel.from_pretrained(resolve_model_dir("world-clip")), True
    except LookupError:
        return WorldCLIPModel.from_arch(seed=0), False


def measure(
    pairs: Path,
    out: Path,
    device: str,
    freeze: float,
    batch: int,
    epochs: int,
    mp: str,
    threads,
    contrastive=0.0,
):
    model, trained = backbone()
    cfg = RewardTrainConfig(
        contrastive_weight=contrastive,
        contrastive_categories=["color"],
        contrastive_pool_per_category=256,
        pool_dir=str(out.parent / "pool"),
        pairs=str(pairs),
        aspect="attribute_binding",
        output_dir=str(out),
        freeze_ratio=freeze,
        epochs=epochs,
        batch_size=batch,
        learning_rate=1e-5,
        log_every=1,
        checkpoint_every=10_000,
        mixed_precision=mp,
        device="cpu" if device == "cpu" else None,
        num_threads=threads,
        progress=False,
    )
    final = train_reward_model(cfg, model, resume=False)
    rec = json.loads((final / "training.json").read_text())
    lines = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    per_step = [r["pairs_per_s"] for r in lines if r["event"] == "train" and r["step"] > 1]
    return {
        "device": rec["hardware"]["device"],
        "gpu": rec["hardware"].get("gpu"),
        "cpu": rec["hardware"]["cpu"],
        "threads": rec["hardware"]["torch_threads"],
        "trained_weights": trained,
        "freeze_ratio": freeze,
        "contrastive_weight": contrastive,
        "trainable_parameters": rec["freeze"]["trainable_parameters"] + rec["freeze"]["head_parameters"],
        "batch": batch,
        "steps": rec["steps"],
        "mixed_precision": mp,
        "pairs_per_s": round(statistics.median(per_step), 1) if per_step else rec["pairs_per_s"],
        "pairs_per_s_with_first_step": rec["pairs_per_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256, help="training pairs (64 prompts x variants)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", action="append", default=None, help="cpu / cuda (default: both if any)")
    ap.add_argument("--mixed-precision", default="no", help="no / bf16 / fp16 (GPU runs only)")
    ap.add_argument("--contrastive", action="store_true", help="also measure with the contrastive term")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    variants = 4
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_world_pairs(
            tmp / "pairs",
            "attribute_binding",
            n_train=max(1, args.pairs // variants),
            n_heldout=8,
            variants=variants,
        )
        if args.contrastive:  # the renders' pool is built before any timing starts
            from compalign.generators.world.data import ScenePool

            ScenePool(tmp / "pool", ["color"], per_category=256).build(progress=False)
        for device in devices:
            for freeze, contrastive in [
                (f, c) for c in ((0.0, 1.0) if args.contrastive else (0.0,)) for f in (0.7, 1.0)
            ]:
                mp = args.mixed_precision if device != "cpu" else "no"
                out = tmp / f"run-{device}-{freeze}-{contrastive}"
                r = measure(
                    pairs, out, device, freeze, args.batch, args.epochs, mp, args.threads, contrastive
                )
                results.append(r)
                where = r["gpu"] or f"{r['cpu']} ({r['threads']} threads)"
                print(
                    f"{r['device']:>6}  freeze {freeze:.1f}  contrastive {contrastive:.0f}  "
                    f"batch {r['batch']:>4}  "
                    f"{r['pairs_per_s']:>9.1f} pairs/s  ({r['trainable_parameters']:,} trainable parameters; "
                    f"{where})"
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Feedback-training (ReFL) throughput on this machine: optimizer steps/second of a world-base-sized
model (random weights of the ``world-base`` preset: same compute as the trained model) against
the world-clip reward, with 1 and with 2 processes under ``accelerate launch``.

Every run goes through ``accelerate launch`` (so all figures pay the same launcher); the training
itself is forced onto the CPU (``device="cpu"``), or with ``--device cuda`` runs on the GPU(s), one
process per GPU. Several processes are started with
``accelerate launch --multi_gpu --num_processes N``: in accelerate 1.15 ``--cpu --num_processes N``
starts one process only (its CPU multi-process launch needs mpirun), while ``--multi_gpu`` starts
N processes with torchrun, which then train on the CPU with gloo (accelerate's MULTI_CPU). Runs are
given as PROCESSESxTHREADS (torch threads per process). One step =
`batch` ReFL samples per process: the 25-step DDIM schedule sampled without gradient up to a stop
index in [19, 24] (guidance 3, two UNet rows per sample), one UNet call with gradient, the world
CLIP on the 32 px images, the regulariser (default: the denoising loss on `batch` pool scenes),
backward, AdamW. The first step (warm-up) is left out of the timing. The scene pool (64 scenes
per category) is built before the runs and not timed.

    python benchmarks/bench_feedback.py                     # 1x1, 1x2 and 2x1, 6 steps each
    python benchmarks/bench_feedback.py --runs 1x4 2x2 4x1 --steps 12 --reg distance --json out.json
    python benchmarks/bench_feedback.py --device cuda --runs 1x1 --batch-size 64   # one process per GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    """One training run (under accelerate launch); the main process writes the figures."""
    from compalign.feedback.config import FeedbackConfig
    from compalign.feedback.train import read_log, train_feedback

    config = FeedbackConfig(
        name="bench-feedback",
        base=args.base,
        output_dir=args.run_dir,
        rewards={"world-clip": 1.0},
        reg_type=args.reg,
        pool_dir=args.pool_dir,
        pool_per_category=64,
        pool_shard_size=64,
        max_steps=args.steps,
        batch_size=args.batch_size,
        checkpoint_every=10_000,
        num_threads=args.threads,
        device=args.device,
        progress=False,
    )
    final = train_feedback(config, resume=False)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = read_log(Path(args.run_dir) / "log.jsonl")
        timed = rows[-1]["wall_time_s"] - rows[0]["wall_time_s"]
        record = json.loads((final / "training.json").read_text())
        out = {
            "processes": record["processes"],
            "threads_per_process": args.threads,
            "samples_per_step": record["samples_per_step"],
            "timed_steps": len(rows) - 1,
            "steps_per_s": (len(rows) - 1) / timed,
            "samples_per_s": (len(rows) - 1) * record["samples_per_step"] / timed,
            "reg": record["settings"]["reg_type"],
            "stop_indices": record["settings"]["stop_indices"],
        }
        Path(args.result).write_text(json.dumps(out))


def launch(run: str, args, base: Path, pool: Path, work: Path) -> dict:
    nproc, threads = (int(x) for x in run.lower().split("x"))
    result = work / f"result_{run}.json"
    accelerate = Path(sys.executable).with_name("accelerate")
    multi = ["--multi_gpu", "--main_process_port", str(29500 + nproc)] if nproc > 1 else []
    if args.device == "cpu" and nproc == 1:
        multi = ["--cpu"]
    cmd = [
        str(accelerate), "launch", "--num_processes", str(nproc), "--num_machines", "1", *multi,
        "--num_cpu_threads_per_process", str(threads), "--mixed_precision", "no", "--dynamo_backend", "no",
        __file__, "--worker", "--base", str(base), "--run-dir", str(work / f"run_{run}"),
        "--pool-dir", str(pool), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--threads", str(threads), "--reg", args.reg, "--result", str(result), "--device", args.device,
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    out = json.loads(result.read_text())
    out["launch_wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--batch-size", type=int, default=4, help="ReFL samples per process per step")
    ap.add_argument("--reg", default="denoising", choices=["denoising", "distance", "none"])
    ap.add_argument("--runs", nargs="+", default=["1x1", "1x2", "2x1"], help="PROCESSESxTHREADS per run")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one process per GPU")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--base", "--run-dir", "--pool-dir", "--result"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    if args.device == "cuda":
        gpus = torch.cuda.device_count()
        too_many = [r for r in args.runs if int(r.lower().split("x")[0]) > gpus]
        if too_many:
            raise SystemExit(f"--device cuda: runs {too_many} need more processes than the {gpus} GPU(s)")

    from compalign.feedback.config import FeedbackConfig
    from compalign.generators.world.data import ScenePool
    from compalign.generators.world.models import count_parameters
    from compalign.generators.world.train import preset_pipeline

    with tempfile.TemporaryDirectory(prefix="bench_feedback_") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        pipe = preset_pipeline("world-base")
        pipe.save_pretrained(work / "world-base-random")
        n_unet = count_parameters(pipe.unet)
        pool = work / "pool"
        cats = FeedbackConfig(base="x").world_categories()
        t0 = time.perf_counter()
        ScenePool(pool, cats, per_category=64, shard_size=64).build(
            workers=os.cpu_count() or 1, progress=False
        )
        print(
            f"scene pool: {len(cats)} categories x 64 scenes in {time.perf_counter() - t0:.1f} s (not timed)"
        )
        results = [launch(r, args, work / "world-base-random", pool, work) for r in args.runs]

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        "?",
    )
    stops = results[0]["stop_indices"]
    print(f"\nfeedback training, world-base-sized random weights (UNet {n_unet / 1e6:.2f} M), world-clip")
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{cpu}, {os.cpu_count()} cores"
    print(f"reward, regulariser {args.reg}, stop indices {stops} of 25; {where}")
    print(f"{'processes':>9} {'threads/proc':>12} {'samples/step':>12} {'steps/s':>8} {'samples/s':>9}")
    for r in results:
        print(
            f"{r['processes']:>9} {r['threads_per_process']:>12} {r['samples_per_step']:>12} "
            f"{r['steps_per_s']:>8.3f} {r['samples_per_s']:>9.2f}"
        )
    if args.json:
        record = {"cpu": cpu, "cores": os.cpu_count(), "device": where, "runs": results}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

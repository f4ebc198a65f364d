"""Train the whole world-model gallery on one machine within a fixed time budget, then ship it.

Stage 1 trains every diffusion preset at once (one process each; the models are small, so one GPU
serves them all), each stopped by a time limit (presets use a constant learning rate after
warm-up, so a run stopped at step N is exactly the preset with ``max_steps=N``). Stage 2 distils
the one-step (and two-step) generators from the fresh ``world-base``. Stage 3 exports all of them
as fp16 into a weights folder and packs them, one tar per model, to copy off the machine.

    python scripts/train_world_gallery.py --runs runs --pool-dir runs/_scene_pool \\
        --diffusion-time 280 --distill-time 150 --out $OUT

Extra processes (e.g. the world CLIP trainer) can run alongside stage 1 with ``--also 'CMD'``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

DIFFUSION = ["world-base", "world-small", "world-t5", "world-attr", "world-short"]
DISTILL = ["world-onestep", "world-twostep"]


def launch(preset: str, args, time_limit: float, log_dir: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "compalign.cli", "world", "train", "--preset", preset,
        "--output-dir", str(Path(args.runs) / preset), "--no-progress",
        "--set", f"time_limit_s={time_limit}", "--set", f"pool_dir={args.pool_dir}",
    ]  # fmt: skip
    for kv in args.set:
        cmd += ["--set", kv]
    log = open(log_dir / f"{preset}.log", "w")  # noqa: SIM115 (closed with the process)
    print(f"[{time.strftime('%X')}] start {preset}", flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: dict[str, subprocess.Popen]) -> dict[str, int]:
    codes = {}
    for name, p in procs.items():
        codes[name] = p.wait()
        print(f"[{time.strftime('%X')}] {name} exited {codes[name]}", flush=True)
    return codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--pool-dir", default="runs/_scene_pool")
    ap.add_argument("--diffusion-time", type=float, default=280.0)
    ap.add_argument("--distill-time", type=float, default=150.0)
    ap.add_argument("--diffusion", nargs="*", default=DIFFUSION)
    ap.add_argument("--distill", nargs="*", default=DISTILL)
    ap.add_argument("--also", action="append", default=[], help="Extra command to run during stage 1.")
    ap.add_argument("--deadline", type=float, default=None, help="Seconds for everything (shrinks stages).")
    ap.add_argument("--reserve", type=float, default=90.0, help="Seconds kept for startup/pairs/export.")
    ap.add_argument("--pool-workers", type=int, default=0, help="Build the pool first with N processes.")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (tests).")
    ap.add_argument("--pack", action="append", default=[], help="Extra folder to send back.")
    ap.add_argument("--weights", default="exported", help="Folder the fp16 models are exported to.")
    ap.add_argument("--out", default=None, help="Folder for one tar per model plus logs.")
    args = ap.parse_args()
    log_dir = Path(args.runs) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 0. finish the shared scene pool with many processes (shards already there are kept)
    if args.pool_workers:
        from compalign.generators.world.data import ScenePool

        spent = ScenePool(args.pool_dir).build(workers=args.pool_workers, progress=False)
        print(f"[{time.strftime('%X')}] scene pool ready ({spent:.0f}s)", flush=True)

    # 1. diffusion presets in parallel (plus any extra job); a --deadline shrinks the stages
    diffusion_time = args.diffusion_time
    if args.deadline:
        left = args.deadline - (time.time() - t0) - args.reserve
        diffusion_time = min(diffusion_time, 0.62 * left)
        print(f"[{time.strftime('%X')}] diffusion stage: {diffusion_time:.0f}s", flush=True)
    procs = {p: launch(p, args, diffusion_time, log_dir) for p in args.diffusion}
    extra = [
        subprocess.Popen(shlex.split(c), stdout=open(log_dir / f"also{i}.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        for i, c in enumerate(args.also)
    ]
    codes = wait_all(procs)
    print(f"[{time.strftime('%X')}] stage 1 done in {time.time() - t0:.0f}s", flush=True)

    # 2. distillation from the fresh world-base
    if codes.get("world-base", 0) == 0 and args.distill:
        distill_time = args.distill_time
        if args.deadline:
            distill_time = max(20.0, min(distill_time, args.deadline - (time.time() - t0) - args.reserve))
            print(f"[{time.strftime('%X')}] distill stage: {distill_time:.0f}s", flush=True)
        procs = {p: launch(p, args, distill_time, log_dir) for p in args.distill}
        codes.update(wait_all(procs))
    for p in extra:
        print(f"[{time.strftime('%X')}] extra job exited {p.wait()}", flush=True)
    print(f"[{time.strftime('%X')}] training done in {time.time() - t0:.0f}s", flush=True)

    # 3. export (fp16), then pack into a few tars under 15 MiB each (logs in their own)
    weights = Path(args.weights)
    items = []
    for name in [*args.diffusion, *args.distill]:
        if not (Path(args.runs) / name / "final").is_dir():
            print(f"{name}: no final pipeline, not exported", flush=True)
            continue
        cmd = [sys.executable, "-m", "compalign.cli", "world", "export", str(Path(args.runs) / name),
               "--name", name, "--dest", str(weights)]  # fmt: skip
        if subprocess.run(cmd, check=False).returncode == 0:
            items.append((weights / name, name))
    for spec in args.pack:  # PATH or PATH=NAME_IN_TAR
        path, _, arc = spec.partition("=")
        if Path(path).exists():
            items.append((Path(path), arc or Path(path).name))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        pack(items, Path(args.out), log_dir, Path(args.runs))
    print(f"[{time.strftime('%X')}] all done in {time.time() - t0:.0f}s", flush=True)


def size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pack(items: list[tuple[Path, str]], out: Path, log_dir: Path, runs: Path) -> None:
    groups: list[list[tuple[Path, str]]] = []
    for item in sorted(items, key=lambda it: -size(it[0])):
        for g in groups:
            if sum(size(p) for p, _ in g) + size(item[0]) < 15 * 2**20:
                g.append(item)
                break
        else:
            groups.append([item])
    for i, g in enumerate(groups):
        with tarfile.open(out / f"models_{i}.tar", "w") as tar:
            for path, arc in g:
                tar.add(path, arcname=arc)
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(log_dir, arcname="logs")
        for f in runs.glob("*/log.jsonl"):
            tar.add(f, arcname=f"runs/{f.parent.name}/log.jsonl")
        for f in runs.glob("*/final/*.json"):
            tar.add(f, arcname=f"runs/{f.parent.parent.name}/final/{f.name}")


if __name__ == "__main__":
    main()

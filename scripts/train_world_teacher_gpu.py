"""A world-base teacher, then its one-step and two-step students, within a fixed time budget.

Made for a fixed time budget on one GPU (e.g. one command of at most 10 minutes). Every stage is
`compalign world train` on a preset; the script only decides how many steps fit:

    0. probe: a few seconds of the teacher preset measure its steps/s on this device
    1. teacher: the teacher preset with `max_steps` fitted to its share of the deadline (the
       cosine schedule then ends where the run ends), packed into --out at once
    2. students: the distillation presets in parallel (their pairs' prompts come from the scene
       pool, so the GPU does not wait on the layout sampler), steps fitted the same way
    3. extras (only while time is left): GPU benchmarks, each a shell command
    4. pack: one tar per run (final weights, training.json, log.jsonl) plus the logs

    python scripts/train_world_teacher_gpu.py --deadline 540 --pool-dir runs/_scene_pool --out OUT

On a CPU it runs the same stages (use --set to shrink them for a dry run).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def train_cmd(preset: str, out: Path, args, *sets: str, max_steps: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "compalign.cli", "world", "train", "-p", preset, "-o", str(out)]
    cmd += ["--no-progress", "--fresh", "--set", f"pool_dir={args.pool_dir}"]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    for kv in [*args.set, *sets]:
        cmd += ["--set", kv]
    return cmd


def tail(log: Path, lines: int = 25) -> str:
    return "".join(log.read_text().splitlines(True)[-lines:])


def run(cmd: list[str], log: Path, wait: bool = True) -> subprocess.Popen:
    say("$ " + shlex.join(cmd[1:]))
    p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    if wait and p.wait() != 0:
        say(f"FAILED ({p.returncode}); the end of {log}:\n{tail(log)}")
        raise SystemExit(1)
    return p


def rate(run_dir: Path) -> float:
    """Median steps/s over the run's log lines (the first, with the warm-up, left out)."""
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in rows[1:]] or [r["steps_per_s"] for r in rows]
    return statistics.median(rates)


def pack(run_dir: Path, out: Path, name: str) -> None:
    with tarfile.open(out / f"{name}.tar", "w") as tar:
        tar.add(run_dir / "final", arcname=f"{name}/final")
        tar.add(run_dir / "log.jsonl", arcname=f"{name}/log.jsonl")
    say(f"packed {name} ({(out / f'{name}.tar').stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deadline", type=float, default=540.0, help="Seconds for everything.")
    ap.add_argument("--teacher", default="world-base")
    ap.add_argument("--teacher-run", default="world-base-phase5", help="Run folder name of the teacher.")
    ap.add_argument("--students", nargs="*", default=["world-onestep-phase5", "world-twostep"])
    ap.add_argument("--student-time", type=float, default=170.0, help="Seconds kept for the students.")
    ap.add_argument("--extra-time", type=float, default=0.0, help="Seconds kept for the extras.")
    ap.add_argument("--probe-time", type=float, default=20.0)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--pool-dir", default="runs/_scene_pool")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (dry runs).")
    ap.add_argument("--extra", action="append", default=[], help="Shell command for stage 3.")
    ap.add_argument("--out", default="runs/teacher_out")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = runs / "train_logs"
    logs.mkdir(parents=True, exist_ok=True)
    import torch

    from compalign.generators.world.config import create_preset

    say(f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")

    # 0. probe the teacher's speed (a time-limited run of the same preset)
    probe = runs / "probe"
    run(train_cmd(args.teacher, probe, args, f"time_limit_s={args.probe_time}", "checkpoint_every=1000000",
                  "log_every=10", max_steps=10**6), logs / "probe.log")  # fmt: skip
    r = rate(probe)
    say(f"teacher: {r:.2f} steps/s")

    # 1. the teacher, its steps fitted to what is left after the students (6% slack)
    left = args.deadline - (time.time() - T0) - args.student_time - args.extra_time - 25
    steps = max(10, int(r * left * 0.94))
    teacher_dir = runs / args.teacher_run
    run(train_cmd(args.teacher, teacher_dir, args, f"time_limit_s={left + 15:.0f}", max_steps=steps),
        logs / "teacher.log")  # fmt: skip
    pack(teacher_dir, out, args.teacher_run)

    # 2. students in parallel, each fitted to its share (a two-step student costs two UNet passes)
    left = args.deadline - (time.time() - T0) - args.extra_time - 20
    # UNet passes/s of each process, assuming the GPU is time-sliced between them (conservative: on
    # one H100 two students ran at full speed side by side)
    share = r / max(1, len(args.students))
    train_s = max(5.0, left - 35)  # pairs + start-up
    procs = {}
    for s in args.students:
        passes = create_preset(s).student_steps
        n = max(5, int(share / passes * train_s * 0.9))
        sets = (f"teacher={json.dumps(str(teacher_dir))}", f"time_limit_s={train_s:.0f}")
        procs[s] = run(train_cmd(s, runs / s, args, *sets, max_steps=n), logs / f"{s}.log", wait=False)
    for s, p in procs.items():
        if p.wait() == 0:
            say(f"{s}: done ({rate(runs / s):.2f} steps/s)")
            pack(runs / s, out, s)
        else:
            say(f"{s}: FAILED ({p.returncode})\n{tail(logs / f'{s}.log')}")

    # 3. extras while time is left
    for cmd in args.extra:
        if args.deadline - (time.time() - T0) < 30:
            say(f"no time left for: {cmd}")
            continue
        say(f"$ {cmd}")
        try:
            subprocess.run(cmd, shell=True, timeout=max(10, args.deadline - (time.time() - T0) - 15))
        except subprocess.TimeoutExpired:
            say("timed out")

    # 4. logs
    with tarfile.open(out / "logs.tar", "w") as tar:
        tar.add(logs, arcname="train_logs")
    say("done")


if __name__ == "__main__":
    main()

"""Generator throughput on this machine: images/second per model at batch 1 and batch 16 (default
sampler settings: steps, guidance), and the one-step generator's forward+backward time for one
image (what one ReNO iteration costs before the rewards).

Shipped models are loaded by name; presets without shipped weights are benchmarked with random
weights of the same architecture and settings (same compute), marked ``untrained``.

    python benchmarks/bench_generators.py                  # every preset / shipped model
    python benchmarks/bench_generators.py --models world-base world-onestep --threads 1
    python benchmarks/bench_generators.py --json bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from compalign.generators import create_generator, list_generators, shipped_models
from compalign.generators.world.config import list_presets
from compalign.generators.world.generator import WorldGenerator
from compalign.generators.world.models import count_parameters
from compalign.generators.world.train import preset_pipeline

PROMPTS = [
    "a red circle",
    "a large striped blue square on the left of a green triangle",
    "two yellow crosses",
    "a small cyan circle inside a large magenta square",
]


def load(name: str, device: str | None) -> tuple[WorldGenerator, bool]:
    """(generator, trained?) for a shipped model, else random weights from its preset."""
    if name in shipped_models() or name not in list_presets():
        return create_generator(name, device=device), True
    pipe = preset_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    return WorldGenerator(pipe, name=name, device=device), False


def timed(fn, repeats: int, min_seconds: float) -> float:
    """Median seconds of `fn()` over at least `repeats` calls and `min_seconds` (after a warm-up)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench(name: str, args) -> dict:
    gen, trained = load(name, args.device)
    s = gen.settings()
    params = count_parameters(gen.pipe.unet) + count_parameters(gen.pipe.text_encoder)
    row = {"model": name, "trained": trained, "params": params, **s, "device": str(gen.device)}
    for b in args.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        sec = timed(lambda p=prompts: gen.generate(p, seeds=0), args.repeats, args.min_seconds)
        row[f"images_per_s_batch{b}"] = b / sec
    if gen.differentiable:

        def fwd_bwd():
            z = gen.sample_noise(1, seed=0).requires_grad_(True)
            gen.generate_from_noise(z, PROMPTS[1:2]).mean().backward()

        row["forward_backward_s"] = timed(fwd_bwd, args.repeats, args.min_seconds)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="default: every world preset/model")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or [n for n in list_generators() if not n.endswith(":")]
    results = []
    header = f"{'model':16} {'trained':>7} {'params':>8} {'steps':>5} {'cfg':>4}"
    header += "".join(f" {'img/s@' + str(b):>10}" for b in args.batches) + f" {'fwd+bwd 1 img':>14}"
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    print(header)
    for name in names:
        row = bench(name, args)
        results.append(row)
        line = f"{name:16} {'yes' if row['trained'] else 'no':>7} {row['params'] / 1e6:7.2f}M"
        line += f" {row['num_inference_steps']:5d} {row['guidance_scale']:4.1f}"
        line += "".join(f" {row[f'images_per_s_batch{b}']:10.1f}" for b in args.batches)
        fb = row.get("forward_backward_s")
        line += f" {fb * 1000:12.1f}ms" if fb is not None else f" {'-':>14}"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

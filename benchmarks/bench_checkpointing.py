"""Gradient checkpointing in ReNO: seconds and peak memory per iteration with checkpointing off,
``auto`` and on, at batch 1 and 4, for two generators:

- ``world-onestep`` (the shipped one-step world model, its UNet checkpointable) with the world CLIP;
- ``sd-turbo-layout``: SD-Turbo's architecture family at small width (UNet, VAE, CLIP text encoder,
  random weights) rendering 256 px through the real `SDTurboGenerator` (UNet and VAE decoder
  checkpointable), with a cheap fixed random-projection reward (the generator is what is measured).

Each (model, mode, batch) runs in its own process: the peak is that process's resident-memory high
water mark over the iterations (Linux ``clear_refs``), above its memory before the first iteration.
The first iteration is left out of the time, and ``auto``'s probe (one batch-1 forward, its decision
cached) runs before the measured iterations (its time is ``probe_s``). Time is reported as CPU
seconds of the process per iteration (robust on a shared machine with one torch thread) and as wall
seconds. ``auto`` reads the free memory of this machine; the ``checkpointed`` column is its choice.

    nice -n 10 python benchmarks/bench_checkpointing.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

PROMPTS = [
    "a red circle on the left of a blue square",
    "a green triangle above a yellow cross",
    "a small cyan circle inside a large magenta square",
    "two white crosses",
]
MODELS = ("world-onestep", "sd-turbo-layout")
MODES = ("off", "auto", "on")
ITERATIONS = {"world-onestep": 30, "sd-turbo-layout": 4}
"""Iterations per run by default (the first one is not timed): enough for a stable mean."""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class ProjectionReward(torch.nn.Module):
    """A fixed random projection of the 64 px image: differentiable, nearly free."""

    loss_offset = 0.0

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3 * 64 * 64, generator=torch.Generator().manual_seed(0)))
        self.requires_grad_(False)

    def forward(self, images, prompts):
        x = torch.nn.functional.interpolate(images.float(), size=(64, 64), mode="bilinear", antialias=True)
        return (x.flatten(1) @ self.w) / self.w.numel()


def sd_turbo_layout(size: int = 256):
    """SD-Turbo's pipeline family at small width, random weights (seed 0)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from compalign.generators.diffusers import SDTurboGenerator

    torch.manual_seed(0)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=16,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=8, sample_size=size,
    )  # fmt: skip
    sched = EulerDiscreteScheduler(timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    return SDTurboGenerator(pipe, name="sd-turbo-layout", device="cpu", height=size, width=size)


def load(model: str):
    from compalign.noise_optimization.reno import WeightedReward

    if model == "sd-turbo-layout":
        return sd_turbo_layout(), [WeightedReward("projection", ProjectionReward(), 1.0)]
    from compalign.generators import create_generator
    from compalign.rewards.registry import create_reward

    gen = create_generator("world-onestep", device="cpu")
    return gen, [WeightedReward("world-clip", create_reward("world-clip", device="cpu"), 1.0)]


def one(model: str, mode: str, batch: int, iterations: int) -> dict:
    """One configuration in this process."""
    from compalign.generators.base import noise_for_seeds
    from compalign.noise_optimization.memory import free_memory, resolve_auto, saved_bytes
    from compalign.noise_optimization.reno import ReNOConfig, optimize_noise

    gen, rewards = load(model)
    gen.set_gradient_checkpointing(mode)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    seeds = list(range(batch))
    per_image = saved_bytes(gen, rewards, prompts[:1], gen.sample_noise(1, seed=0).float())
    probe_s = 0.0
    if mode == "auto":  # the decision (one batch-1 probe, cached) is made before the measured run
        t = time.perf_counter()
        noise = noise_for_seeds(seeds, gen.noise_shape(1)[1:])
        resolve_auto(gen, [r for r in rewards if r.optimize], prompts, noise)
        probe_s = time.perf_counter() - t
    stamps: list[tuple[float, float]] = []

    def stamp(*_) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    cfg = ReNOConfig(iterations=iterations, progress=False)
    base = rss()
    measured = reset_peak()
    t0 = (time.perf_counter(), time.process_time())
    res = optimize_noise(gen, prompts, rewards, seeds, cfg, callback=stamp)
    pairs = list(zip([t0, *stamps[:-1]], stamps, strict=True))[1:]  # the first iteration left out
    wall = [b[0] - a[0] for a, b in pairs]
    cpu = [b[1] - a[1] for a, b in pairs]
    return {
        "model": model,
        "mode": mode,
        "batch": batch,
        "s_per_iteration": sum(wall) / len(wall),
        "cpu_s_per_iteration": sum(cpu) / len(cpu),
        "probe_s": probe_s,
        "peak_mb": (peak() - base) / 2**20 if measured else None,
        "chose": res.checkpointed,
        "saved_mb_per_image": {k: v / 2**20 for k, v in per_image.items()},
        "free_gb": (free_memory("cpu") or 0) / 2**30,
        "final_loss": float(sum(res.history[-1]["loss"]) / batch),
        "iterations": iterations,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="Iterations per run, the first not timed (default: per model).",
    )
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="Also write every figure here.")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        model, mode, batch = args.one
        print(json.dumps(one(model, mode, int(batch), args.iterations or ITERATIONS[model])))
        return
    rows = []
    for model in args.models:
        for batch in args.batches:
            for mode in MODES:
                cmd = [sys.executable, __file__, "--one", model, mode, str(batch)]
                cmd += [
                    "--iterations",
                    str(args.iterations or ITERATIONS[model]),
                    "--threads",
                    str(args.threads),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{model:<16} batch {batch}  {mode:<4}  {r['cpu_s_per_iteration']:.3f} CPU s/it  "
                    f"peak +{r['peak_mb']:.0f} MB  chose {r['chose'] or '-'}",
                    flush=True,
                )
    print()
    head = f"{'model':<16} {'batch':>5} {'mode':<5} {'CPU s/it':>9} {'vs off':>7} {'wall s/it':>10}"
    print(f"{head} {'peak MB':>8}  checkpointed")
    for r in rows:
        off = next(x for x in rows if (x["model"], x["batch"], x["mode"]) == (r["model"], r["batch"], "off"))
        print(
            f"{r['model']:<16} {r['batch']:>5} {r['mode']:<5} {r['cpu_s_per_iteration']:>9.3f} "
            f"{r['cpu_s_per_iteration'] / off['cpu_s_per_iteration']:>6.2f}x {r['s_per_iteration']:>10.3f} "
            f"{r['peak_mb']:>8.0f}  {', '.join(r['chose']) or '-'}"
        )
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    print(f"\n{machine}; free memory {rows[0]['free_gb']:.1f} GB")
    if args.json:
        from compalign.io import atomic_write_json

        atomic_write_json(args.json, {"machine": machine, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()

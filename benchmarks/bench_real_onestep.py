"""Cost of one ReNO iteration on the real one-step models: seconds and peak GPU memory of
``generate_from_noise`` + backward to the noise, for SD-Turbo (512 px) and SDXL-Turbo (1024 px) at
full size, in fp16 and bf16, with gradient checkpointing on, off and ``auto`` (checkpoint only what the
free GPU memory requires; the ``ckpt`` column says what it chose).

The models are built from their public configurations (written below: ``stabilityai/sd-turbo`` and
``stabilityai/sdxl-turbo`` unet / vae / text encoder ``config.json``) with random weights, so no
download is needed; compute and memory are those of the real models (the values of the images are
not meaningful, and random fp16 weights may overflow: the ``finite`` column says). The tokenizer
is a small character-level CLIP tokenizer written in code (prompt encoding is cached and not timed).

    python benchmarks/bench_real_onestep.py                          # both models, fp16 + bf16
    python benchmarks/bench_real_onestep.py --models sd-turbo --dtypes bf16 --repeats 5
    python benchmarks/bench_real_onestep.py --offload model sequential   # also time the offloads
    python benchmarks/bench_real_onestep.py --with-rewards --rewards hpsv2 imagereward

``--with-rewards`` adds reward backbones from `compalign.rewards.registry` to the graph (scores
summed into the loss): each spec (``NAME`` or ``NAME:SOURCE``) is built with
``create_random_reward`` when the registry offers one (full-size, random weights), else with
``create_reward`` (which needs the weights locally or from the hub); a reward that cannot be built
is reported and left out.

Needs CUDA; on a machine without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

PROMPT = "a photo of a red apple on the left of a blue cup"

# --------------------------------------------------------------------------- public configs
# stabilityai/sd-turbo (the SD 2.1 base architecture)
SD_TURBO_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}
SD_TURBO_TEXT = {  # OpenCLIP ViT-H/14 text tower, penultimate-layer cut (23 layers)
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
}
SD_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}
# stabilityai/sdxl-turbo (the SDXL base architecture)
SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 64,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}
SDXL_TEXT = {  # CLIP ViT-L/14 text tower
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
SDXL_TEXT_2 = {  # OpenCLIP ViT-bigG/14 text tower with projection
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "max_position_embeddings": 77,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "vocab_size": 49408,
}
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
EULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}
MODELS = {"sd-turbo": 512, "sdxl-turbo": 1024}


def char_tokenizer():
    from transformers import CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_text(cfg: dict, tok, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        **cfg, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_pipeline(model: str, device: str, dtype: torch.dtype):
    """The full-size pipeline with random weights, created directly on `device` in `dtype`."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    tok = char_tokenizer()
    scheduler = EulerDiscreteScheduler(**EULER)  # on the CPU, as diffusers keeps it
    with torch.device(device):
        if model == "sd-turbo":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**SD_VAE),
                text_encoder=clip_text(SD_TURBO_TEXT, tok),
                tokenizer=tok,
                unet=UNet2DConditionModel(**SD_TURBO_UNET),
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**SDXL_VAE),
                text_encoder=clip_text(SDXL_TEXT, tok),
                text_encoder_2=clip_text(SDXL_TEXT_2, tok, projection=True),
                tokenizer=tok,
                tokenizer_2=tok,
                unet=UNet2DConditionModel(**SDXL_UNET),
                scheduler=scheduler,
                force_zeros_for_empty_prompt=True,
                add_watermarker=False,
            )
    return pipe.to(dtype=dtype)


def wrap(model: str, pipe, device: str, dtype: torch.dtype, checkpointing: str, offload: str | None):
    from compalign.generators.diffusers import SDTurboGenerator, SDXLTurboGenerator

    cls = SDTurboGenerator if model == "sd-turbo" else SDXLTurboGenerator
    side = MODELS[model]
    return cls(
        pipe,
        name=f"{model} (random weights)",
        device=device,
        dtype=dtype,
        height=side,
        width=side,
        gradient_checkpointing=checkpointing,
        offload=offload,
    )


def build_rewards(specs: list[str], device: str, dtype: torch.dtype) -> list:
    """Rewards from `compalign.rewards.registry` (guarded: absent or failing ones are reported)."""
    try:
        from compalign.rewards import registry
    except ImportError as e:
        print(f"--with-rewards: compalign.rewards.registry not importable ({e}); timing without rewards")
        return []
    make = getattr(registry, "create_random_reward", None) or registry.create_reward
    out = []
    for spec in specs:
        try:
            reward = make(spec, device=device, dtype=dtype)
        except Exception as e:  # missing weights offline, missing dependency, unknown name
            print(f"--with-rewards: {spec} left out ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        reward.eval().requires_grad_(False)
        out.append((spec, reward))
    return out


def iteration(gen, noise: torch.Tensor, prompts: list[str], rewards: list) -> bool:
    """One ReNO iteration's compute: images from the noise, score, backward to the noise."""
    noise.grad = None
    images = gen.generate_from_noise(noise.to(gen.dtype), prompts)
    loss = -images.mean()
    for _, reward in rewards:
        loss = loss - reward(images, prompts).float().sum()
    loss.backward()
    return bool(torch.isfinite(images).all()) and bool(torch.isfinite(noise.grad).all())


def measure(gen, batch: int, repeats: int, rewards: list) -> dict:
    prompts = [PROMPT] * batch
    gen.encode_prompts(prompts)  # cached: prompt encoding is not part of an iteration
    noise = gen.sample_noise(batch, seed=0).float().requires_grad_(True)
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()
    if gen.checkpoint_mode == "auto":  # what ReNO's optimize_noise does before its first iteration
        from compalign.noise_optimization.memory import resolve_auto

        resolve_auto(gen, [r for _, r in rewards], prompts, noise.detach())
        torch.cuda.reset_peak_memory_stats()
    finite = iteration(gen, noise, prompts, rewards)  # warm-up
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        finite &= iteration(gen, noise, prompts, rewards)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "seconds": sorted(times)[len(times) // 2],
        "seconds_min": min(times),
        "resident_gib": resident / 2**30,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "finite": finite,
        "checkpointed": list(gen.checkpointed),
    }


def run_config(model, pipe, dtype_name, checkpointing, offload, args, rewards) -> dict:
    from compalign.generators.diffusers import parse_dtype

    dtype = parse_dtype(dtype_name)
    row = {
        "model": model,
        "resolution": MODELS[model],
        "batch": args.batch,
        "dtype": dtype_name,
        "gradient_checkpointing": checkpointing,
        "offload": offload or "none",
        "rewards": [s for s, _ in rewards],
    }
    try:
        gen = wrap(model, pipe, args.device, dtype, checkpointing, offload)
        row["vae_dtype"] = str(gen.vae_dtype).removeprefix("torch.")
        row.update(measure(gen, args.batch, args.repeats, rewards))
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as e:  # keep the other rows
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    print(format_row(row), flush=True)
    return row


HEADER = (
    f"{'model':<11}{'px':>5} {'dtype':<5} {'ckpt':<5} {'offload':<10} {'vae':<8} {'s/iter':>8} "
    f"{'peak GiB':>9} {'resident':>9}  finite  checkpointed"
)


def format_row(r: dict) -> str:
    head = (
        f"{r['model']:<11}{r['resolution']:>5} {r['dtype']:<5} {str(r['gradient_checkpointing']):<5} "
        f"{r['offload']:<10} "
    )
    if "error" in r:
        return head + f"ERROR {r['error']}"
    return head + (
        f"{r['vae_dtype']:<8} {r['seconds']:>8.3f} {r['peak_gib']:>9.2f} {r['resident_gib']:>9.2f}  "
        f"{str(r['finite']):<6}  {', '.join(r['checkpointed']) or '-'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--dtypes", nargs="*", default=["fp16", "bf16"], choices=["fp16", "bf16", "fp32"])
    ap.add_argument(
        "--checkpointing", nargs="*", default=["on", "off", "auto"], choices=["on", "off", "auto"]
    )
    ap.add_argument(
        "--offload",
        nargs="*",
        default=[],
        choices=["model", "sequential"],
        help="also time these offload modes (first dtype, checkpointing on)",
    )
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--with-rewards", action="store_true", help="add reward backbones to the graph")
    ap.add_argument("--rewards", nargs="*", default=["hpsv2", "imagereward", "pickscore", "clip"])
    ap.add_argument("--json", type=Path, default=Path("runs/bench_real_onestep.json"))
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print(
            "bench_real_onestep needs a CUDA GPU (full-size SD-Turbo / SDXL-Turbo); none here, nothing done."
        )
        return 0
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()

    rows: list[dict] = []
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(HEADER)
    for model in args.models:
        for i, dtype_name in enumerate(args.dtypes):
            from compalign.generators.diffusers import parse_dtype

            dtype = parse_dtype(dtype_name)
            rewards = build_rewards(args.rewards, args.device, dtype) if args.with_rewards else []
            pipe = build_pipeline(model, args.device, dtype)
            for ck in args.checkpointing:
                rows.append(run_config(model, pipe, dtype_name, ck, None, args, rewards))
            if i == 0:
                for mode in args.offload:
                    rows.append(run_config(model, pipe, dtype_name, "on", mode, args, rewards))
            del pipe, rewards
            gc.collect()
            torch.cuda.empty_cache()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "prompt": PROMPT,
        "rows": rows,
    }
    args.json.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

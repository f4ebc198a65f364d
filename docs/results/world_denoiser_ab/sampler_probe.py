"""Does sampling limit a checkpoint? Held-out accuracy (25 prompts x 2 seeds) at several DDIM step counts
and guidance scales.

    python docs/results/world_denoiser_ab/sampler_probe.py runs/ab2/coordt5/checkpoints/step_0008436 out.json
"""

import json
import sys
import time

import torch

from compalign.generators.world.generator import WorldGenerator
from compalign.generators.world.train import checkpoint_pipeline
from compalign.world.quality import evaluate_generator

torch.set_num_threads(1)
ckpt = sys.argv[1]
pipe, step = checkpoint_pipeline(ckpt)
gen = WorldGenerator(pipe, name=f"ckpt{step}", device="cpu")
cats = ["spatial", "position", "non_spatial", "single_object", "color_attr", "two_object"]
out = {}
for steps, cfg in [(10, 3.0), (25, 3.0), (25, 5.0), (25, 7.5), (50, 5.0)]:
    t0 = time.time()
    r = evaluate_generator(
        gen, cats, 25, [0, 1], progress=False, num_inference_steps=steps, guidance_scale=cfg
    )
    acc = {c: round(100 * v["accuracy"]) for c, v in r["categories"].items()}
    out[f"{steps}/{cfg}"] = acc
    print(steps, cfg, acc, f"{time.time() - t0:.0f}s", flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)

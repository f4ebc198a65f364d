"""A synthetic world pairs file (for tests, benchmarks and smoke runs without a ranked gallery).

For prompts of an aspect's world suites (train prompts -> ``split: train``, held-out prompts ->
``split: heldout``), each pair is a correct render of the prompt ("better", model ``world-true``)
against a render of a corrupted scene that truly contradicts it ("worse", model ``world-wrong``,
`compalign.world.perturb.wrong_layout`): colours / shapes swapped for attribute binding, the
relation reversed for the relation aspects. Optionally both images are degraded like a small
generator's output (`perturb`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from compalign.world.grammar import parse_prompt
from compalign.world.layout import LayoutError, sample_layout
from compalign.world.perturb import perturb, wrong_layout
from compalign.world.render import render, to_uint8
from compalign.world.suites import list_categories, load_suite

CORRUPTIONS = {
    "attribute_binding": ("swap_colors", "swap_shapes"),
    "spatial_relationship": ("reverse_relation",),
    "non_spatial_relationship": ("reverse_relation",),
}


def make_world_pairs(
    folder: str | Path,
    aspect: str = "spatial_relationship",
    n_train: int = 32,
    n_heldout: int = 12,
    seed: int = 0,
    variants: int = 1,
    degrade: bool = False,
    res: int = 32,
) -> Path:
    """Write ``folder/pairs.jsonl`` and ``folder/images/*.png``: `variants` pairs (new layouts) for
    each of `n_train` train and `n_heldout` held-out prompts of `aspect`; returns the pairs file."""

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = CORRUPTIONS[aspect]
    lines = []
    for split, wanted in (("train", n_train), ("heldout", n_heldout)):
        prompts = [p for c in list_categories(aspect) for p in load_suite(c, split)]
        order = rng.permutation(len(prompts))
        done = 0
        for k in order.tolist():
            if done >= wanted:
                break
            prompt = prompts[k]
            scene = parse_prompt(prompt)
            made = []
            for _ in range(variants):
                try:
                    good = sample_layout(scene, rng)
                except LayoutError:
                    break
                bad = None
                for kind in rng.permutation(kinds).tolist():
                    bad = wrong_layout(scene, kind, rng)
                    if bad is not None:
                        break
                if bad is None:
                    break
                made.append((render(good, res), render(bad, res)))
            if len(made) < variants:
                continue
            for v, (g, b) in enumerate(made):
                if degrade:
                    g, b = perturb(g, rng, noise=0.03, blur=0.5), perturb(b, rng, noise=0.03, blur=0.5)
                names = []
                for model, img in (("world-true", g), ("world-wrong", b)):
                    name = f"images/{split}_{done:04d}_{v}_{model}.png"
                    Image.fromarray(to_uint8(img)).save(folder / name)
                    names.append(name)
                lines.append(
                    {
                        "aspect": aspect,
                        "index": done if split == "train" else 10_000 + done,
                        "prompt": prompt,
                        "better": names[0],
                        "worse": names[1],
                        "better_model": "world-true",
                        "worse_model": "world-wrong",
                        "split": split,
                    }
                )
            done += 1
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path

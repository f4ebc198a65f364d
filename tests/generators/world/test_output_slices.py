"""Output-slice regression test of the shipped world pipeline: a corner of each image, compared
with stored numbers (to 1e-4). A change of the sampler, the scheduler or the weights shows up here.

The numbers were computed on a 2-core x86 CPU, torch 2.13, float32.
"""

from __future__ import annotations

import torch

from compalign.generators import create_generator


def test_world_base_few_steps_fixed_seeds():
    gen = create_generator("world-base", device="cpu")
    prompts = ["a red circle to the left of a blue square", "a green triangle above a yellow cross"]
    images = gen.generate(prompts, seeds=[0, 1], num_inference_steps=4)
    assert images.shape == (2, 3, 32, 32)
    expected = torch.tensor(
        [
            [0.097085, 0.090629, 0.082544, 0.0989, 0.047996, 0.092071, 0.078619, 0.052402, 0.122542],
            [0.070095, 0.064465, 0.076051, 0.080315, 0.06054, 0.123271, 0.082643, 0.055443, 0.078933],
        ]
    )
    got = images[:, -1, -3:, -3:].flatten(1)
    assert torch.allclose(got, expected, atol=1e-4), got.tolist()

"""Output-slice regression tests of ReNO: a corner of the best image and the reward trajectory,
compared with stored numbers (to 1e-4), on a tiny random diffusers pipeline and on the shipped
world models. A change of the optimiser, its defaults or the generators shows up here first.

The numbers were computed on a 2-core x86 CPU, torch 2.13, float32.
"""

from __future__ import annotations

import torch

from compalign.generators import create_generator
from compalign.noise_optimization.reno import ReNOConfig, WeightedReward, optimize_noise
from compalign.rewards.registry import create_reward
from tests.factories import Redness, build_sd

ATOL = 1e-4


def corner(images: torch.Tensor, b: int = 0) -> torch.Tensor:
    """The bottom-right 3 x 3 pixels of image `b`'s last channel."""
    return images[b, -1, -3:, -3:].flatten()


def test_reno_on_a_tiny_diffusers_pipeline(tmp_path):
    torch.manual_seed(0)
    build_sd().save_pretrained(tmp_path / "sd")
    gen = create_generator(f"sd-turbo:{tmp_path / 'sd'}", device="cpu")
    # the random pipeline's reward gradient is small: weight 100 makes each step clip-limited
    reward = WeightedReward("redness", Redness(), 100.0)
    res = optimize_noise(
        gen, ["a red circle"], [reward], [0], ReNOConfig(iterations=4, lr=5.0, progress=False)
    )
    trajectory = torch.tensor([h["rewards"]["redness"][0] for h in res.history])
    expected_trajectory = torch.tensor([-0.006579, -0.002424, 0.003473, 0.010793])
    expected_slice = torch.tensor(
        [0.332425, 0.463164, 0.521466, 0.381356, 0.529462, 0.621791, 0.500541, 0.484422, 0.528177]
    )
    assert res.best_iteration == [3]
    assert torch.allclose(trajectory, expected_trajectory, atol=ATOL), trajectory.tolist()
    assert torch.allclose(corner(res.best_images), expected_slice, atol=ATOL), corner(
        res.best_images
    ).tolist()


def test_reno_on_world_onestep_with_world_clip():
    gen = create_generator("world-onestep", device="cpu")
    reward = WeightedReward("world-clip", create_reward("world-clip", device="cpu"))
    prompts = ["a red circle to the left of a blue square", "a green triangle above a yellow cross"]
    res = optimize_noise(gen, prompts, [reward], [0, 1], ReNOConfig(iterations=4, lr=5.0, progress=False))
    trajectory = torch.tensor([h["rewards"]["world-clip"] for h in res.history])
    expected_trajectory = torch.tensor(
        [[0.747878, 0.559525], [0.734268, 0.69887], [0.720526, 0.74257], [0.755888, 0.761626]]
    )
    expected_slices = torch.tensor(
        [
            [0.0918, 0.076641, 0.091171, 0.060927, 0.111209, 0.083573, 0.068128, 0.058354, 0.081963],
            [0.095393, 0.049232, 0.100738, 0.058102, 0.099229, 0.108458, 0.068539, 0.105273, 0.100829],
        ]
    )
    assert res.best_iteration == [3, 3]
    assert torch.allclose(trajectory, expected_trajectory, atol=ATOL), trajectory.tolist()
    for b in range(2):
        assert torch.allclose(corner(res.best_images, b), expected_slices[b], atol=ATOL), (
            b,
            corner(res.best_images, b).tolist(),
        )

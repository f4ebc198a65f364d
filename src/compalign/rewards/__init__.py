"""Rewards: differentiable image-text scores for noise optimisation (ReNO) and feedback learning.

- `Reward`, `check_inputs`: the contract (``forward(images [B, 3, H, W] in [0, 1], prompts) -> [B]``,
  higher is better).
- `WorldCLIPReward` (``compalign.rewards.world_clip``): a small contrastive image-text model
  trained on world renders with grammar-edited hard negatives.
- `create_reward`, `list_rewards`, `register_reward` (``registry.py``): rewards by name.

The exact world evaluator is the judge of every figure and is never used as a reward.
`WorldCLIPReward` is imported on first use: its module loads diffusers and transformers.
"""

from __future__ import annotations

from .base import Reward, check_inputs
from .registry import create_reward, list_rewards, register_reward

__all__ = ["Reward", "WorldCLIPReward", "check_inputs", "create_reward", "list_rewards", "register_reward"]


def __getattr__(name: str):
    if name == "WorldCLIPReward":
        from .world_clip.reward import WorldCLIPReward  # lazy: loads diffusers and transformers

        return WorldCLIPReward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

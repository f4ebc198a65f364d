"""Rewards: differentiable image-text scores for noise optimisation (ReNO) and feedback learning.

- `Reward`, `check_inputs`: the contract (``forward(images [B, 3, H, W] in [0, 1], prompts) -> [B]``,
  higher is better).
- `WorldCLIPReward` (``compalign.rewards.world_clip``): a small contrastive image-text model
  trained on world renders with grammar-edited hard negatives.
- `create_reward`, `list_rewards`, `register_reward` (``registry.py``): rewards by name.

The exact world evaluator is the judge of every figure and is never used as a reward.
Attributes are imported on first use: the training configs (``rewards.*.config``) load without
torch, and `WorldCLIPReward`'s module loads diffusers and transformers.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

__all__ = ["Reward", "WorldCLIPReward", "check_inputs", "create_reward", "list_rewards", "register_reward"]


# lazy: `import compalign.rewards.<x>.config` runs this package's __init__, and must not load torch
__getattr__ = lazy_getattr(
    __name__,
    {
        "Reward": "base",
        "check_inputs": "base",
        "WorldCLIPReward": "world_clip.reward",
        "create_reward": "registry",
        "list_rewards": "registry",
        "register_reward": "registry",
    },
)

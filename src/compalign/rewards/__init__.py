"""Rewards: differentiable image-text scores for noise optimisation (ReNO) and feedback learning.

- `Reward`, `check_inputs`: the contract (``forward(images [B, 3, H, W] in [0, 1], prompts) -> [B]``,
  higher is better).
- `WorldCLIPReward` (``compalign.rewards.world_clip``): a small contrastive image-text model
  trained on world renders with grammar-edited hard negatives.
- `create_reward`, `list_rewards`, `register_reward` (``registry.py``): rewards by name.

The exact world evaluator is the judge of every figure and is never used as a reward.
Attributes are imported lazily so that the command line starts without loading torch.
"""

from __future__ import annotations

__all__ = ["Reward", "WorldCLIPReward", "check_inputs", "create_reward", "list_rewards", "register_reward"]


def __getattr__(name: str):
    if name in ("Reward", "check_inputs"):
        from . import base

        return getattr(base, name)
    if name == "WorldCLIPReward":
        from .world_clip import reward

        return reward.WorldCLIPReward
    if name in ("create_reward", "list_rewards", "register_reward"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""World CLIP: a small contrastive image-text model of the embedded world, used as a reward.

- `WorldCLIPModel`, `WorldCLIPArch` (``model.py``): a tiny transformers `CLIPModel` on 32 px
  images and the world word-level tokenizer;
- `WorldCLIPReward` (``reward.py``): the `Reward` contract around it (``world-clip``);
- `WorldCLIPTrainConfig`, `train_world_clip`, `export_world_clip` (``train.py``): training on the
  shared scene pool with InfoNCE plus grammar-edited hard negatives;
- `evaluate_world_clip` (``evaluate.py``): held-out pairwise / top-1 accuracy against hard negatives;
- `hard_negative_candidates`, `sample_hard_negatives` (``negatives.py``).
"""

from .evaluate import evaluate_world_clip, format_eval_table
from .model import WorldCLIPArch, WorldCLIPModel
from .negatives import hard_negative_candidates, sample_hard_negatives
from .reward import RewardNotTrainedError, WorldCLIPReward
from .train import WorldCLIPTrainConfig, export_world_clip, train_world_clip

__all__ = [
    "RewardNotTrainedError",
    "WorldCLIPArch",
    "WorldCLIPModel",
    "WorldCLIPReward",
    "WorldCLIPTrainConfig",
    "evaluate_world_clip",
    "export_world_clip",
    "format_eval_table",
    "hard_negative_candidates",
    "sample_hard_negatives",
    "train_world_clip",
]

"""World CLIP: a small contrastive image-text model of the embedded world, used as a reward.

- `WorldCLIPModel` (``model.py``): a tiny transformers `CLIPModel` on 32 px images and the world
  word-level tokenizer;
- `WorldCLIPReward` (``reward.py``): the `Reward` contract around it (``world-clip``);
- `WorldCLIPArch`, `WorldCLIPTrainConfig` (``config.py``): its architecture and a training run;
- `train_world_clip`, `export_world_clip` (``train.py``): training on the shared scene pool with
  InfoNCE plus grammar-edited hard negatives;
- `evaluate_world_clip` (``evaluate.py``): held-out pairwise / top-1 accuracy against hard negatives;
- `hard_negative_candidates`, `sample_hard_negatives` (``negatives.py``).

Attributes are imported lazily (the configs load without torch).
"""

from __future__ import annotations

from ..._lazy import lazy_getattr

_EXPORTS = {
    "evaluate_world_clip": "evaluate",
    "format_eval_table": "evaluate",
    "WorldCLIPArch": "config",
    "WorldCLIPTrainConfig": "config",
    "WorldCLIPModel": "model",
    "hard_negative_candidates": "negatives",
    "sample_hard_negatives": "negatives",
    "RewardNotTrainedError": "reward",
    "WorldCLIPReward": "reward",
    "export_world_clip": "train",
    "train_world_clip": "train",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

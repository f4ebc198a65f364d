"""Composition-aware reward models, one per aspect (IterComp): attribute binding, spatial and
non-spatial relationships.

- `CompositionRewardModel` (``model.py``): backbone + scalar head, standardised on its own training
  images; a `Reward` (``create_reward("composition:itercomp-spatial")``);
- `create_backbone`, `apply_freeze_ratio` (``backbones.py``): ``world-clip``, ``clip:PATH``,
  ``blip:PATH`` (ImageReward's BLIP) with IterComp's frozen-layer ratio;
- `RewardTrainConfig` (``config.py``): a training run's configuration;
- `train_reward_model`, `export_reward_model` (``train.py``): pairwise Bradley-Terry training with
  held-out model selection, accelerate (mixed precision, DDP), resume;
- `read_pairs`, `PairSet`, `PairsFileError` (``data.py``): the pairs file;
- `make_world_pairs` (``synthetic.py``): a synthetic world pairs file.

Attributes are imported lazily (the command line starts without torch).
"""

from __future__ import annotations

from ..._lazy import lazy_getattr

_EXPORTS = {
    "CompositionRewardModel": "model",
    "SHIPPED": "model",
    "Backbone": "backbones",
    "FusionHead": "backbones",
    "apply_freeze_ratio": "backbones",
    "create_backbone": "backbones",
    "register_backbone": "backbones",
    "RewardTrainConfig": "config",
    "train_reward_model": "train",
    "export_reward_model": "train",
    "evaluate_pair_set": "train",
    "Pair": "data",
    "PairSet": "data",
    "PairsFileError": "data",
    "read_pairs": "data",
    "make_world_pairs": "synthetic",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

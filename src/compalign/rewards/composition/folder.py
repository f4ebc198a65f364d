"""The saved composition reward model folder: file names, format version, shipped names, weights.

A model folder holds::

    composition_reward.json   format version, aspect, backbone kind / source / config, head config,
                              freeze ratio, training image size, score mean / std (+ how measured)
    model.safetensors         every weight (backbone and head)
    backbone/tokenizer/       the backbone's tokenizer files
    training.json             the training record (written by the trainer)
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

CONFIG_FILE = "composition_reward.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_DIR = "backbone"
RECORD_FILE = "training.json"
FORMAT_VERSION = 1

# shipped models: package folder name -> aspect
SHIPPED = {
    "itercomp-attribute": "attribute_binding",
    "itercomp-spatial": "spatial_relationship",
    "itercomp-nonspatial": "non_spatial_relationship",
}


def weights_root() -> Path:
    """Folder of the shipped composition reward models inside the package."""
    return Path(__file__).resolve().parent / "weights"


def saved_model_dir(name_or_path: str | Path) -> Path | None:
    """The model folder of a model folder, a run folder (its ``final/``) or a shipped name with
    weights; None for anything else."""
    path = Path(name_or_path)
    for cand in (path, path / "final", weights_root() / str(name_or_path)):
        if (cand / CONFIG_FILE).is_file():
            return cand
    return None


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """Load a ``model.safetensors`` into `model`; a one-line error when the keys do not fit."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: weights file not found")
    state = load_file(str(file))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    # safetensors' save_model drops tensors that share memory with a kept one (tied weights)
    missing = [k for k in missing if not _is_shared(own, k, state)]
    if missing or unexpected:
        raise ValueError(
            f"{file}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, strict=False)


def _is_shared(own: dict, key: str, saved: dict) -> bool:
    t = own[key]
    return any(k in saved and own[k].data_ptr() == t.data_ptr() for k in own if k != key)

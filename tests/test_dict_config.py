"""The shared `DictConfig` mixin: JSON-ready `to_dict`, `from_dict` refusing unknown keys."""

import json
from dataclasses import dataclass, field

import pytest

from compalign._config import DictConfig
from compalign.feedback.config import FeedbackConfig
from compalign.generators.world.config import WorldTrainConfig
from compalign.generators.world.models import WorldArch
from compalign.iterate.config import IterateConfig
from compalign.rewards.composition.train import RewardTrainConfig
from compalign.rewards.world_clip.train import WorldCLIPTrainConfig


@dataclass
class _Inner(DictConfig):
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class _Outer(DictConfig):
    inner: _Inner = field(default_factory=_Inner)
    betas: tuple[float, float] = (0.9, 0.99)
    table: dict = field(default_factory=lambda: {"a": (1, 2)})


def test_to_dict_is_json_ready_and_nested():
    d = _Outer().to_dict()
    assert d == {"inner": {"sizes": [1, 2]}, "betas": [0.9, 0.99], "table": {"a": [1, 2]}}
    assert json.loads(json.dumps(d)) == d


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown config fields: \['bogus'\]"):
        _Outer.from_dict({"betas": [0.1, 0.2], "bogus": 1})
    with pytest.raises(ValueError, match=r"unknown architecture fields: \['x'\]"):
        WorldArch.from_dict({"x": 1})


@pytest.mark.parametrize(
    "cls", [WorldTrainConfig, WorldCLIPTrainConfig, IterateConfig, RewardTrainConfig, FeedbackConfig]
)
def test_every_trainer_config_round_trips_through_json(cls, tmp_path):
    kwargs = {"pairs": str(tmp_path / "p.jsonl"), "aspect": "spatial_relationship"}
    c = cls(**kwargs) if cls is RewardTrainConfig else cls()
    d = json.loads(json.dumps(c.to_dict()))
    assert cls.from_dict(d).to_dict() == c.to_dict()

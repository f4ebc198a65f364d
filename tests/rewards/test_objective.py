"""The reward objective shared by ReNO and feedback training: terms, parser, defaults, loading."""

from __future__ import annotations

import pytest
import torch

from compalign.rewards import registry
from compalign.rewards.base import Reward
from compalign.rewards.objective import (
    RewardTerm,
    WeightedReward,
    default_rewards,
    load_rewards,
    parse_objective,
    parse_reward_spec,
    parse_weights,
)


class Brightness(Reward):
    name = "test-brightness"
    loss_offset = 1.0
    default_weight = 3.0

    def __init__(self, device=None):
        super().__init__()

    def forward(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


@pytest.fixture(autouse=True)
def _brightness():
    registry.register_reward("test-brightness", Brightness, overwrite=True)
    yield
    registry._REGISTRY.pop("test-brightness", None)


def test_specs_weights_and_defaults():
    assert parse_reward_spec("world-clip=2") == ("world-clip", 2.0)
    assert parse_reward_spec("test-brightness") == ("test-brightness", 3.0)  # the reward's default weight
    assert parse_reward_spec("composition:itercomp-spatial=0.5") == ("composition:itercomp-spatial", 0.5)
    assert parse_reward_spec("test-brightness:a,b=c") == ("test-brightness:a,b=c", 3.0)  # a source option
    with pytest.raises(ValueError, match="weight 'x' is not a number"):
        parse_reward_spec("a=x")
    assert parse_weights(["a=1", "b=2"]) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match="reward cap 'a': expected NAME=VALUE"):
        parse_weights(["a"], "reward cap", need_value=True)
    assert default_rewards(world=True) == ["world-clip=1"]
    assert default_rewards(world=False) == ["hpsv2=5", "imagereward=1", "pickscore=0.05"]


def test_objective_terms():
    terms = parse_objective(["a=2", "b=0"], benchmark=["c=5"], caps=["a=0.5"])
    assert terms == [
        RewardTerm("a", 2.0, cap=0.5),
        RewardTerm("b", 0.0),
        RewardTerm("c", 0.0, optimize=False),
    ]
    assert [t.active for t in terms] == [True, False, False]
    with pytest.raises(ValueError, match="reward 'a' given twice"):
        parse_objective(["a=1"], benchmark=["a"])
    with pytest.raises(ValueError, match="reward_caps for rewards not in rewards"):
        parse_objective(["a=1"], caps=["b=1"])
    with pytest.raises(ValueError, match="not finite"):
        parse_objective(["a=nan"])


def test_loaded_terms_and_their_offsets():
    rewards = load_rewards(parse_objective(["test-brightness=2", "world-clip=0"], caps=[]), "cpu")
    assert len(rewards) == 1  # weight 0: not loaded
    r = rewards[0]
    assert (r.name, r.weight, r.optimize, r.offset) == ("test-brightness", 2.0, True, 1.0)
    capped = WeightedReward("b", Brightness(), 1.0, cap=0.25)
    assert capped.offset == 0.25
    assert float(capped.reward(torch.ones(1, 3, 4, 4), ["x"])) == 1.0


def test_feedback_config_objective():
    from compalign.feedback.config import FeedbackConfig

    c = FeedbackConfig(rewards={"test-brightness": 2, "world-clip": 0}, reward_caps={"test-brightness": 0.5})
    assert c.objective() == [RewardTerm("test-brightness", 2.0, 0.5), RewardTerm("world-clip", 0.0)]
    with pytest.raises(ValueError, match="nothing to train for"):
        FeedbackConfig(rewards={"world-clip": 0})
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        FeedbackConfig(rewards={"nope": 1})

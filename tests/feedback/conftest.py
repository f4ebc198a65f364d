from __future__ import annotations

import pytest
import torch

from compalign.rewards import registry
from tests.factories import Redness, build_sd, tiny_pipeline


@pytest.fixture(scope="session", autouse=True)
def _redness_reward():
    registry.register_reward("test-redness", Redness, overwrite=True)
    yield
    registry._REGISTRY.pop("test-redness", None)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A saved (untrained) tiny world pipeline: 3 default steps, guidance 2."""
    path = tmp_path_factory.mktemp("feedback_base") / "tiny-base"
    tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory):
    """One tiny scene pool shared by the tests (built on first use)."""
    return tmp_path_factory.mktemp("feedback_pool")


@pytest.fixture(scope="session")
def sd_base(tmp_path_factory):
    """A saved tiny random StableDiffusionPipeline."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("feedback_sd") / "tiny-sd"
    build_sd().save_pretrained(path)
    return path

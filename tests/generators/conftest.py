from __future__ import annotations

import pytest
import torch

from compalign.generators.world.config import WorldTrainConfig
from compalign.generators.world.models import WorldArch, build_components
from compalign.generators.world.pipeline import WorldPipeline

TINY_ARCH = dict(
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    text_hidden_size=32,
    text_layers=1,
    text_heads=2,
    sample_steps=3,
    guidance_scale=2.0,
)


def tiny_arch(**kw) -> WorldArch:
    return WorldArch(**{**TINY_ARCH, **kw})


_POOL_DIR: list = []


def tiny_config(tmp_path, **kw) -> WorldTrainConfig:
    base = dict(
        name="tiny",
        output_dir=str(tmp_path / "run"),
        data_source="pool",
        categories=["colors", "spatial"],
        pool_per_category=8,
        pool_shard_size=4,
        pool_dir=str(_POOL_DIR[0]) if _POOL_DIR else str(tmp_path / "pool"),
        arch=tiny_arch(),
        max_steps=4,
        batch_size=4,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        num_workers=0,
        num_threads=1,
        device="cpu",
        progress=False,
    )
    base.update(kw)
    return WorldTrainConfig(**base)


def tiny_pipeline(seed: int = 0, steps: int | None = None, **arch_kw) -> WorldPipeline:
    torch.manual_seed(seed)
    arch = tiny_arch(**arch_kw)
    pipe = WorldPipeline(
        **build_components(arch),
        patch_size=arch.patch_size,
        default_steps=steps or arch.sample_steps,
        default_guidance_scale=arch.guidance_scale,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_saved(tmp_path_factory):
    """A saved (untrained) tiny multi-step pipeline folder."""
    path = tmp_path_factory.mktemp("tiny_pipe") / "tiny-pipe"
    tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def make_pipeline():
    return tiny_pipeline


@pytest.fixture(scope="session")
def make_config():
    return tiny_config


@pytest.fixture(scope="session", autouse=True)
def _shared_pool(tmp_path_factory):
    """One tiny scene pool for every test of the session (built on first use)."""
    _POOL_DIR.append(tmp_path_factory.mktemp("scene_pool"))
    yield
    _POOL_DIR.clear()

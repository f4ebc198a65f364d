from __future__ import annotations

import pytest

from tests.factories import tiny_config as _tiny_config
from tests.factories import tiny_pipeline

_POOL_DIR: list = []


def tiny_config(tmp_path, **kw):
    """`tests.factories.tiny_config` on the session's shared scene pool."""
    if _POOL_DIR:
        kw.setdefault("pool_dir", _POOL_DIR[0])
    return _tiny_config(tmp_path, **kw)


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

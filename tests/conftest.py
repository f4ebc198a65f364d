from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compalign.cli import app
from tests.factories import build_gallery, tiny_pipeline


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never write into the user's cache (scene pools): one cache folder for the whole test run."""
    old = os.environ.get("COMPALIGN_CACHE")
    os.environ["COMPALIGN_CACHE"] = str(tmp_path_factory.mktemp("compalign-cache"))
    yield
    if old is None:
        os.environ.pop("COMPALIGN_CACHE", None)
    else:
        os.environ["COMPALIGN_CACHE"] = old


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Cli:
    """Runs `compalign ...` in process; result has .exit_code, .stdout, .stderr."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str):
        return self.runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def rendered(tmp_path_factory, cli) -> Path:
    """A small clean render: 2 categories x 3 held-out prompts at 32 px (read-only; copy to modify)."""
    out = tmp_path_factory.mktemp("rendered") / "set"
    r = cli("world", "render", "--category", "color", "--category", "spatial", "--limit", "3", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def image_dir(rendered, tmp_path) -> Path:
    """A private copy of the small render, to break in a test."""
    dst = tmp_path / "set"
    shutil.copytree(rendered, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny untrained world pipelines (seeds 1 and 2) saved once per session (real generators)."""
    root = tmp_path_factory.mktemp("tiny_models")
    paths = []
    for seed in (1, 2):
        p = root / f"tiny{seed}"
        tiny_pipeline(seed=seed).save_pretrained(p)
        paths.append(p)
    return paths[0], paths[1]


@pytest.fixture(scope="session")
def _gallery_template(tmp_path_factory) -> Path:
    return build_gallery(tmp_path_factory.mktemp("gallery_template") / "g").root


@pytest.fixture
def gallery_dir(_gallery_template, tmp_path) -> Path:
    """A private copy of the hand-made gallery (4 spatial prompts, the last held out; 3 models)."""
    dst = tmp_path / "g"
    shutil.copytree(_gallery_template, dst)
    return dst

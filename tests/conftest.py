from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compalign.cli import app


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

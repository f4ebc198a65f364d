"""Fixtures of the gallery / ranking / pairs tests.

- `tiny_models`: two tiny untrained world pipelines saved once per session (real generators).
- `make_gallery`: a hand-made gallery of world prompts whose images are known to the evaluator:
  ``good`` is an exact render of the prompt (passes), ``bad`` and ``bad2`` are the same black
  image (no object: score 0, and exactly equal, so a tie whatever the tie-break).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compalign.gallery.format import Gallery, Record, image_path, new_meta
from compalign.io import atomic_save_image
from compalign.world.suites import load_suite


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    from tests.generators.conftest import tiny_pipeline

    root = tmp_path_factory.mktemp("tiny_models")
    paths = []
    for seed in (1, 2):
        p = root / f"tiny{seed}"
        tiny_pipeline(seed=seed).save_pretrained(p)
        paths.append(p)
    return paths[0], paths[1]


def exact_render(prompt: str, seed: int, res: int = 32) -> np.ndarray:
    from compalign.world import parse_prompt, render, sample_layout, to_uint8

    return to_uint8(render(sample_layout(parse_prompt(prompt), np.random.default_rng(seed)), res))


def world_prompts(n_train: int = 3, n_heldout: int = 1) -> list[str]:
    return load_suite("spatial", "train")[:n_train] + load_suite("spatial", "heldout")[:n_heldout]


MODELS = ("bad", "good", "bad2")


def build_gallery(
    root: Path, prompts: list[str] | None = None, aspect: str = "spatial_relationship"
) -> Gallery:
    prompts = prompts or world_prompts()
    root.mkdir(parents=True, exist_ok=True)
    black = np.zeros((32, 32, 3), np.uint8)
    records = []
    for i, p in enumerate(prompts):
        images = {}
        for m in MODELS:
            atomic_save_image(root / image_path(m, i), exact_render(p, i) if m == "good" else black)
            images[m] = image_path(m, i)
        records.append(Record(i, p, images))
    meta = new_meta(
        aspect,
        [{"name": m, "spec": None} for m in MODELS],
        seed=0,
        seeds={str(i): i for i in range(len(prompts))},
        settings={"resolution": None, "steps": None, "guidance": None},
        complete=True,
    )
    g = Gallery(root, records, meta, {"version": 1, "records": {}})
    g.save()
    return g


@pytest.fixture(scope="session")
def _gallery_template(tmp_path_factory) -> Path:
    return build_gallery(tmp_path_factory.mktemp("gallery_template") / "g").root


@pytest.fixture
def gallery_dir(_gallery_template, tmp_path) -> Path:
    """A private copy of the hand-made gallery (4 spatial prompts, the last held out; 3 models)."""
    import shutil

    dst = tmp_path / "g"
    shutil.copytree(_gallery_template, dst)
    return dst


def read(path: Path):
    return json.loads(Path(path).read_text())


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (to check that nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

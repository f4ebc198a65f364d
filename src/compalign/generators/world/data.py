"""On-the-fly training data: training scene -> prompt -> layout -> render, in batches.

Batch `k` of a stream is a pure function of `(seed, k)`, so a run resumed at step `k` sees exactly
the batches an uninterrupted run would, with no data-loader state to save. Rendering is numpy on
the CPU (~5 ms an image); `batches(..., num_workers=1)` renders in a worker process while the
model trains.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from compalign.world.grammar import to_prompt
from compalign.world.layout import LayoutError, sample_layout
from compalign.world.render import render
from compalign.world.suites import sample_train_scene

RESOLUTION = 32


def sample_example(
    rng: np.random.Generator, categories: list[str] | None = None, with_image: bool = True
) -> tuple[str, str, np.ndarray | None]:
    """`(category, prompt, image [32, 32, 3] float32 in [0, 1] or None)` of one training scene."""
    while True:
        category, scene = sample_train_scene(rng, categories)
        try:
            objects = sample_layout(scene, rng)
        except LayoutError:
            continue  # a scene with no room for its objects: draw another one
        return category, to_prompt(scene), (render(objects, RESOLUTION) if with_image else None)


def make_batch(
    seed: int, step: int, batch_size: int, categories: list[str] | None = None, with_images: bool = True
) -> dict:
    """Batch `step` of the stream `seed`: images `[B, 3, 32, 32]` in `[-1, 1]`, prompts, categories."""
    rng = np.random.default_rng([int(seed), int(step), 0x57A7])
    cats, prompts, images = [], [], []
    for _ in range(batch_size):
        c, p, im = sample_example(rng, categories, with_images)
        cats.append(c)
        prompts.append(p)
        images.append(im)
    batch = {"step": step, "prompts": prompts, "categories": cats}
    if with_images:
        arr = np.stack(images).transpose(0, 3, 1, 2)
        batch["images"] = torch.from_numpy(np.ascontiguousarray(arr)) * 2 - 1
    return batch


class SceneBatches(IterableDataset):
    """Infinite stream of batches `start_step, start_step + 1, ...` (sharded over workers)."""

    def __init__(
        self,
        seed: int,
        batch_size: int,
        categories: list[str] | None = None,
        start_step: int = 0,
        with_images: bool = True,
    ):
        self.seed, self.batch_size, self.categories = seed, batch_size, categories
        self.start_step, self.with_images = start_step, with_images

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + wid
        while True:
            yield make_batch(self.seed, step, self.batch_size, self.categories, self.with_images)
            step += n


def batches(
    seed: int,
    batch_size: int,
    categories: list[str] | None = None,
    start_step: int = 0,
    num_workers: int = 0,
    with_images: bool = True,
) -> Iterator[dict]:
    """Iterator over the batches of a stream from `start_step` on, in order."""
    ds = SceneBatches(seed, batch_size, categories, start_step, with_images)
    if num_workers <= 0:
        return iter(ds)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, prefetch_factor=2)
    return iter(loader)

"""Training data: training scene -> prompt -> layout -> render, in batches.

Two sources, both deterministic (batch `k` is a pure function of `(seed, k)`, so a run resumed at
step `k` sees exactly the batches an uninterrupted run would, with no loader state to save):

- **stream**: every batch freshly sampled and rendered (`batches`, optionally in worker
  processes). Unlimited variety, but the layout sampler costs ~25 ms a scene on average (up to
  ~170 ms for ``complex`` scenes), more than a training step of a small model on a CPU.
- **pool** (`ScenePool`): a fixed set of rendered training scenes per category, built once (in
  parallel, resumable, shared by every run using the same folder) and sampled from. Its folder is
  keyed by a fingerprint of the world's source code and the suite version, so a changed grammar /
  layout / renderer / train-held-out split (suite v2 splits by meaning) builds a new pool instead
  of reusing stale images or scenes held out under the current split.

Captions: both sources produce a scene's exact prompt; with ``captions`` set to another preset of
`compalign.world.captions` (``web``, ``exact-attribute``, ...) each prompt of a batch is replaced
by a web-like caption of its scene, drawn with an rng of `(seed, step)` (`caption_prompts`), so a
run stays deterministic and resumable; images, categories and the pool's files are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from compalign.cache import scene_pool_dir
from compalign.world.captions import WebCaptionRates, create_caption_rates, web_caption
from compalign.world.grammar import parse_prompt, to_prompt
from compalign.world.layout import LayoutError, sample_layout
from compalign.world.render import render
from compalign.world.suites import CATEGORIES, SUITE_VERSION, sample_train_scene

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


def caption_prompts(prompts: list[str], captions: str | WebCaptionRates, seed: int, step: int) -> list[str]:
    """The training captions of batch `step`'s exact prompts under the caption preset (or rates).

    ``exact``: the prompts themselves (no random draw). Otherwise one web-like caption per prompt
    (`compalign.world.captions.web_caption`, never a held-out scene), in order, from one rng
    seeded with `(seed, step)`: the same batch always gets the same captions.
    """
    rates = create_caption_rates(captions) if isinstance(captions, str) else captions
    if rates.is_exact():
        return list(prompts)
    rng = np.random.default_rng([int(seed), int(step), 0xCA97])
    return [web_caption(parse_prompt(p), rng, rates) for p in prompts]


def make_batch(
    seed: int,
    step: int,
    batch_size: int,
    categories: list[str] | None = None,
    with_images: bool = True,
    captions: str | WebCaptionRates = "exact",
) -> dict:
    """Batch `step` of the stream `seed`: images `[B, 3, 32, 32]` in `[-1, 1]`, prompts (captioned
    by the preset `captions`), categories."""
    rng = np.random.default_rng([int(seed), int(step), 0x57A7])
    cats, prompts, images = [], [], []
    for _ in range(batch_size):
        c, p, im = sample_example(rng, categories, with_images)
        cats.append(c)
        prompts.append(p)
        images.append(im)
    batch = {"step": step, "prompts": caption_prompts(prompts, captions, seed, step), "categories": cats}
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
        captions: str | WebCaptionRates = "exact",
    ):
        self.seed, self.batch_size, self.categories = seed, batch_size, categories
        self.start_step, self.with_images, self.captions = start_step, with_images, captions

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + wid
        while True:
            yield make_batch(
                self.seed, step, self.batch_size, self.categories, self.with_images, self.captions
            )
            step += n


def batches(
    seed: int,
    batch_size: int,
    categories: list[str] | None = None,
    start_step: int = 0,
    num_workers: int = 0,
    with_images: bool = True,
    captions: str | WebCaptionRates = "exact",
) -> Iterator[dict]:
    """Iterator over the batches of a stream from `start_step` on, in order."""
    ds = SceneBatches(seed, batch_size, categories, start_step, with_images, captions)
    if num_workers <= 0:
        return iter(ds)
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, prefetch_factor=2)
    return iter(loader)


# ------------------------------------------------------------------------------------- pool
WORLD_SOURCES = ("grammar.py", "layout.py", "render.py", "suites.py")


def world_fingerprint() -> str:
    """Short hash of the world code (and suite version) that decides which training scenes are drawn
    and what their images look like."""
    h = hashlib.sha256(SUITE_VERSION.encode())
    root = resources.files("compalign.world")
    for name in WORLD_SOURCES:
        h.update((root / name).read_bytes())
    return h.hexdigest()[:12]


def _category_key(category: str) -> int:
    return int.from_bytes(hashlib.sha256(category.encode()).digest()[:4], "big")


def _build_shard(path: str, category: str, shard: int, size: int, data_seed: int) -> str:
    rng = np.random.default_rng([int(data_seed), _category_key(category), int(shard)])
    prompts, images = [], []
    for _ in range(size):
        _, p, im = sample_example(rng, [category])
        prompts.append(p)
        images.append(np.clip(im * 255 + 0.5, 0, 255).astype(np.uint8))
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(tmp, images=np.stack(images), prompts=np.array(prompts))
    os.replace(tmp, path)
    return path


def _try_build(path: str, category: str, shard: int, size: int, data_seed: int, stale_lock_s: float) -> bool:
    """Build one shard unless it exists or another live process holds its lock."""
    p = Path(path)
    if p.exists():
        return False
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = p.with_suffix(".lock")
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime < stale_lock_s:
                return False
        except FileNotFoundError:
            return False  # just finished by its builder
        lock.touch()  # its builder died: take it over
    try:
        if not p.exists():
            _build_shard(path, category, shard, size, data_seed)
    finally:
        lock.unlink(missing_ok=True)
    return True


class ScenePool:
    """`per_category` rendered training scenes for each category, in shards of `shard_size`.

    Layout: ``<root>/<world fingerprint>/seed<data_seed>/<category>/shard_0000.npz`` (uint8
    images ``[S, 32, 32, 3]`` and their prompts). Several runs may build the same pool at once:
    a shard being built by another process is marked by a ``.lock`` file and waited for. `root`
    defaults to the per-user cache (`compalign.cache.scene_pool_dir`), so a pool is built once per
    machine whatever folder a command runs in.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        categories: list[str] | None = None,
        per_category: int = 4096,
        shard_size: int = 256,
        data_seed: int = 0,
    ):
        self.categories = list(categories or CATEGORIES)
        self.per_category, self.shard_size, self.data_seed = per_category, shard_size, data_seed
        if root is None:
            root = scene_pool_dir()
        self.dir = Path(root) / world_fingerprint() / f"seed{data_seed}"
        self._data: dict[str, tuple[np.ndarray, list[str]]] | None = None

    def shards(self) -> list[tuple[str, int, int, Path]]:
        """(category, shard index, size, path) of every shard of the pool."""
        out = []
        for c in self.categories:
            for k in range(-(-self.per_category // self.shard_size)):
                size = min(self.shard_size, self.per_category - k * self.shard_size)
                out.append((c, k, size, self.dir / c / f"shard_{k:04d}_{size}.npz"))
        return out

    def missing(self) -> list[tuple[str, int, int, Path]]:
        return [s for s in self.shards() if not s[3].exists()]

    def build(self, workers: int = 1, progress: bool = True, stale_lock_s: float = 900.0) -> float:
        """Render the missing shards (in `workers` processes); returns the seconds spent.

        Shards are locked one at a time, so runs building the same pool at once share the work;
        shards locked by another process are waited for (a lock older than `stale_lock_s` is
        taken over: its builder died).
        """

        missing = self.missing()
        if not missing:
            return 0.0
        t0 = time.perf_counter()
        total = sum(n for _, _, n, _ in self.shards())
        todo_scenes = sum(n for _, _, n, _ in missing)
        print(
            f"scene pool: rendering {todo_scenes} training scenes into {self.dir} "
            "(once per machine; every run using this folder shares them)",
            file=sys.stderr,
        )
        bar = tqdm(
            total=total,
            initial=total - todo_scenes,
            desc="scene pool",
            unit="scene",
            disable=not progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

        def sync() -> None:  # scenes on disk, whoever rendered them; moves as every shard lands
            bar.update(total - sum(n for _, _, n, _ in self.missing()) - bar.n)

        while todo := self.missing():
            jobs = [(str(p), c, k, n, self.data_seed, stale_lock_s) for c, k, n, p in todo]
            built = []
            if workers <= 1:
                for j in jobs:
                    built.append(_try_build(*j))
                    sync()
            else:
                with ProcessPoolExecutor(workers) as ex:
                    for ok in ex.map(_try_build, *zip(*jobs, strict=True)):
                        built.append(ok)
                        sync()
            if not any(built):  # everything left is being built by other runs
                time.sleep(2.0)
                sync()
        bar.close()
        return time.perf_counter() - t0

    def load(self) -> dict[str, tuple[np.ndarray, list[str]]]:
        if self._data is None:
            if self.missing():
                raise FileNotFoundError(f"scene pool {self.dir} is incomplete; build() it first")
            data = {}
            for c in self.categories:
                parts = [np.load(p) for cc, _, _, p in self.shards() if cc == c]
                data[c] = (
                    np.concatenate([z["images"] for z in parts]),
                    [str(x) for z in parts for x in z["prompts"]],
                )
            self._data = data
        return self._data

    def batch(
        self,
        seed: int,
        step: int,
        batch_size: int,
        with_images: bool = True,
        captions: str | WebCaptionRates = "exact",
    ) -> dict:
        """Batch `step`: a uniformly drawn category, then a uniformly drawn scene of it, its prompt
        captioned by the preset `captions` (`caption_prompts`)."""
        data = self.load()
        rng = np.random.default_rng([int(seed), int(step), 0x9001])
        cats = [self.categories[i] for i in rng.integers(len(self.categories), size=batch_size)]
        idx = [int(rng.integers(len(data[c][1]))) for c in cats]
        prompts = [data[c][1][i] for c, i in zip(cats, idx, strict=True)]
        batch = {"step": step, "prompts": caption_prompts(prompts, captions, seed, step), "categories": cats}
        if with_images:
            arr = np.stack([data[c][0][i] for c, i in zip(cats, idx, strict=True)])
            batch["images"] = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
        return batch

    def batches(
        self, seed: int, batch_size: int, start_step: int = 0, captions: str | WebCaptionRates = "exact"
    ) -> Iterator[dict]:
        step = start_step
        while True:
            yield self.batch(seed, step, batch_size, captions=captions)
            step += 1

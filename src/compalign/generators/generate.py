"""Generate images for prompts x seeds with any generator and write them to a folder.

Layout of `out_dir`: one PNG per (prompt, seed) at the model's resolution
(``p000_s0.png``: prompt 0, seed 0), ``manifest.json`` (the image-set manifest that
``compalign world eval`` reads, plus the model and its settings) and, when there is more than one
image, ``grid.png``: a row per prompt and a column per seed (up to 16 x 8), each image labelled with
its prompt and seed, in a green / red frame where the exact evaluator judged it (`judge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_save_image, atomic_write_json
from ..plots import Cell, image_grid, wrap
from ..world.io import MANIFEST_VERSION
from .base import Generator
from .registry import create_generator


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file: one a line; blank lines and lines starting with # skipped."""
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`[B, 3, H, W]` in `[0, 1]` -> `[B, H, W, 3]` uint8."""
    arr = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (arr * 255 + 0.5).astype(np.uint8)


def make_grid(images: np.ndarray, rows: int, cols: int, scale: int = 4, pad: int = 2) -> np.ndarray:
    """`[rows*cols, H, W, 3]` uint8 (row-major) -> one grid image with `pad` px gaps."""
    n, h, w, _ = images.shape
    if n != rows * cols:
        raise ValueError(f"{n} images for a {rows}x{cols} grid")
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    grid = np.full((rows * hs + (rows + 1) * pad, cols * ws + (cols + 1) * pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (hs + pad), pad + c * (ws + pad)
        grid[y : y + hs, x : x + ws] = big[i]
    return grid


GRID_ROWS, GRID_COLS = 16, 8


def generate_images(
    prompts: Sequence[str],
    model: str | Generator = "world-base",
    seeds: Sequence[int] = (0,),
    out_dir: str | Path = "out",
    device: str | None = None,
    grid: bool = True,
    grid_scale: int = 4,
    batch_size: int = 64,
    judge=None,
    **settings,
) -> dict:
    """Generate every (prompt, seed) pair and write the images; returns the manifest.

    `settings` go to `Generator.generate` (``num_inference_steps``, ``guidance_scale``; None values
    mean the model's defaults). `judge(image, prompt) -> {"passed", "score"} | None` frames the
    grid's images (world prompts: `compalign.world.batch.verdict`).
    """

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if not prompts:
        raise ValueError("no prompts")
    if not seeds:
        raise ValueError("no seeds")
    gen = model if isinstance(model, Generator) else create_generator(model, device=device)
    settings = {k: v for k, v in settings.items() if v is not None}
    flat_prompts = [p for p in prompts for _ in seeds]
    flat_seeds = [s for _ in prompts for s in seeds]
    images = gen.generate(flat_prompts, seeds=flat_seeds, batch_size=batch_size, **settings)
    arr = to_uint8(images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (p, s) in enumerate(zip(flat_prompts, flat_seeds, strict=True)):
        name = f"p{k // len(seeds):03d}_s{s}.png"
        atomic_save_image(out / name, arr[k])
        entries.append({"file": name, "prompt": p, "category": None, "seed": s})
    manifest = {
        "version": MANIFEST_VERSION,
        "resolution": int(arr.shape[1]),
        "model": gen.name,
        "settings": {**gen.settings(), **settings},
        "images": entries,
        "grid": None,
    }
    if grid and len(entries) > 1:
        save_labelled_grid(arr, prompts, seeds, out / "grid.png", gen.name, judge, grid_scale)
        manifest["grid"] = "grid.png"
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def save_labelled_grid(
    arr: np.ndarray,
    prompts: Sequence[str],
    seeds: Sequence[int],
    path: Path,
    model: str,
    judge=None,
    scale: int = 4,
) -> Path:
    """`arr` `[len(prompts) * len(seeds), H, W, 3]` (prompt-major) as a grid: a row per prompt, a
    column per seed (the first 16 x 8), captioned, framed by `judge`'s verdicts; `scale` sets the
    size of a cell (4: 1.7 inches at 100 dpi)."""

    rows = []
    for i, p in enumerate(prompts[:GRID_ROWS]):
        row = []
        for j, s in enumerate(seeds[:GRID_COLS]):
            img = arr[i * len(seeds) + j]
            v = judge(img, p) if judge is not None else None
            title = wrap(p, 24, 3) if j == 0 else None
            caption = f"seed {s}" + (f"  {'pass' if v['passed'] else 'fail'} {v['score']:.2f}" if v else "")
            row.append(Cell(img, title, caption, v["passed"] if v else None))
        rows.append(row)
    n_p, n_s = min(len(prompts), GRID_ROWS), min(len(seeds), GRID_COLS)
    title = f"{model}: {n_p} of {len(prompts)} prompts x {n_s} of {len(seeds)} seeds"
    if judge is not None:
        title += "; green frame: passes the exact evaluator, red: fails"
    return image_grid(rows, path, title, cell_inches=0.425 * max(1, scale))

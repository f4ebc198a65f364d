"""Figures shared by the stages: matplotlib (Agg) set-up, atomic PNG writes, and labelled image grids.

`image_grid` draws the grids a person reads: each image with its caption (prompt, seed, reward)
and, where the exact evaluator judged it, a green (passes) or red (fails) frame.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_path

PASS_COLOR = "#2a2"
FAIL_COLOR = "#d22"


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed)."""
    import matplotlib  # lazy: only plotting needs it, and it is slow to import

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: loads matplotlib

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write `fig` as a PNG atomically (with the user's umask) and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def wrap(text: str, width: int = 22, max_lines: int | None = None) -> str:
    """`text` broken into lines of at most `width` characters (the last one ending in ... when cut)."""
    lines = textwrap.wrap(text, width) or [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, width - 3)] + "..."
    return "\n".join(lines)


def frame(ax, passed: bool | None, width: float = 3) -> None:
    """Colour the axes' border: green when `passed`, red when not, left plain when None."""
    for side in ax.spines.values():
        if passed is None:
            side.set_visible(False)
        else:
            side.set_edgecolor(PASS_COLOR if passed else FAIL_COLOR)
            side.set_linewidth(width)


@dataclass
class Cell:
    """One image of a grid: `image` `[H, W, 3]` (uint8, or float in [0, 1]); `title` above it,
    `caption` below it, `passed` its exact-evaluator verdict (None: not judged)."""

    image: np.ndarray
    title: str | None = None
    caption: str | None = None
    passed: bool | None = None


def image_grid(
    rows: Sequence[Sequence[Cell | None]],
    path: str | Path,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
    cell_inches: float = 1.7,
    font_size: float = 6,
) -> Path:
    """A labelled grid of images (None cells stay blank), written to `path` as a PNG."""
    plt = pyplot()
    nrow = len(rows)
    ncol = max((len(r) for r in rows), default=0)
    if nrow == 0 or ncol == 0:
        raise ValueError("an image grid needs at least one image")
    title_lines = max((c.title.count("\n") + 1 for r in rows for c in r if c and c.title), default=0)
    cap_lines = max((c.caption.count("\n") + 1 for r in rows for c in r if c and c.caption), default=0)
    text_in = (title_lines + cap_lines) * font_size * 1.35 / 72
    width_in = cell_inches * ncol + (0.5 if row_labels else 0)
    if title:
        title = "\n".join(
            wrap(line, max(30, int(width_in * 100 / (font_size + 2)))) for line in title.split("\n")
        )
    head_in = ((title.count("\n") + 1) * (font_size + 2) * 1.5 / 72 + 0.1) if title else 0.0
    fig_h = (cell_inches + text_in) * nrow + head_in
    fig, axes = plt.subplots(nrow, ncol, figsize=(width_in, fig_h), squeeze=False, layout="constrained")
    for i in range(nrow):
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            cell = rows[i][j] if j < len(rows[i]) else None
            if cell is None:
                ax.axis("off")
                continue
            img = np.asarray(cell.image)
            if img.dtype != np.uint8:
                img = np.clip(img.astype(np.float32), 0, 1)
            ax.imshow(img, interpolation="nearest")
            frame(ax, cell.passed)
            if cell.title:
                ax.set_title(cell.title, fontsize=font_size)
            if cell.caption:
                ax.set_xlabel(cell.caption, fontsize=font_size)
            if row_labels and j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=font_size + 1)
    if title:
        fig.suptitle(title, fontsize=font_size + 2)
    return save_figure(fig, path)

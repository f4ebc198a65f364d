"""Training curves: a run's ``log.jsonl`` read back and drawn as panels of lines (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compalign.io import atomic_path


def read_log(path: str | Path) -> list[dict]:
    """The lines of a ``log.jsonl`` ([] when there is none)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


@dataclass
class Curve:
    """One line: `y` over `x`, with matplotlib `plot` keywords (``fmt`` is its format string)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: dict = field(default_factory=dict)


@dataclass
class Panel:
    """One plot: its curves and axes settings (`ax.set` keywords; `yscale` keywords apart)."""

    curves: list[Curve]
    axes: dict = field(default_factory=dict)
    yscale: dict | None = None


def plot_panels(panels: list[Panel], out: str | Path, figsize=(10, 3.6), dpi: int = 100) -> Path:
    """Draw `panels` side by side into the PNG `out` (written atomically)."""
    import matplotlib  # lazy: loads matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: loads matplotlib

    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for c in panel.curves:
            style = dict(c.style)
            fmt = style.pop("fmt", None)
            ax.plot(c.x, c.y, *([fmt] if fmt else []), label=c.label, **style)
        ax.set(**{"xlabel": "step", **panel.axes})
        if panel.yscale:
            ax.set_yscale(**panel.yscale)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return out

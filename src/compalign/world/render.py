"""Anti-aliased renderer: placed objects -> image `[H, W, 3]` float32 in [0, 1].

Geometry lives in unit coordinates (the image is [0, 1] x [0, 1], y pointing down), so one layout
renders at any resolution. Anti-aliasing is exact box-filter supersampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import COLORS

BACKGROUND = (0.08, 0.08, 0.08)
STRIPE_PERIOD = 6 / 32  # vertical stripes: 6 px at 32 px, 12 px at 64 px
STRIPE_DARK = 0.45  # brightness of the dark stripes relative to the object color
CROSS_ARM = 0.36  # arm width of a cross relative to its extent
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Placed:
    """One object on the canvas: `extent` is the bounding-box width in unit coordinates."""

    shape: str
    color: str
    extent: float
    cx: float
    cy: float
    texture: str = "solid"

    @property
    def width(self) -> float:
        return self.extent

    @property
    def height(self) -> float:
        return self.extent / 2 if self.shape == "rectangle" else self.extent

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in unit coordinates."""
        w, h = self.width / 2, self.height / 2
        return (self.cx - w, self.cy - h, self.cx + w, self.cy + h)

    def moved(self, cx: float, cy: float) -> Placed:
        return Placed(self.shape, self.color, self.extent, cx, cy, self.texture)


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, e: float) -> np.ndarray:
    """Boolean inside-test of a shape of extent `e` centred at (cx, cy) for coordinates x, y."""
    dx, dy, r = x - cx, y - cy, e / 2
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "rectangle":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r / 2)
    if shape == "triangle":  # apex up, base = height = e
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        a = CROSS_ARM * r
        return ((np.abs(dx) <= a) & (np.abs(dy) <= r)) | ((np.abs(dy) <= a) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def stripe_dark(x: np.ndarray, cx: float, phase: float = 0.0) -> np.ndarray:
    """Vertical stripes, symmetric about the object's centre (a bright stripe in the middle)."""
    u = (x - cx) / STRIPE_PERIOD + 0.25 + phase
    return np.floor(u * 2) % 2 == 1


def grid(res: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (unit square) of a res*supersample grid: x, y of shape [N, N]."""
    n = res * supersample
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(c, c)  # x varies along columns, y along rows


def object_mask(obj: Placed, res: int, supersample: int = 1) -> np.ndarray:
    x, y = grid(res, supersample)
    return shape_mask(obj.shape, x, y, obj.cx, obj.cy, obj.extent)


def render(objects: list[Placed], res: int = 32) -> np.ndarray:
    """Draw objects in order (later ones on top); returns `[res, res, 3]` float32 in [0, 1]."""
    if res < 16:
        raise ValueError(f"resolution must be at least 16 px, got {res}")
    x, y = grid(res, SUPERSAMPLE)
    canvas = np.empty(x.shape + (3,), dtype=np.float32)
    canvas[:] = BACKGROUND
    for obj in objects:
        m = shape_mask(obj.shape, x, y, obj.cx, obj.cy, obj.extent)
        color = np.asarray(COLORS[obj.color], dtype=np.float32)
        if obj.texture == "striped":
            dark = stripe_dark(x, obj.cx)[..., None]
            canvas[m] = np.where(dark, color * STRIPE_DARK, color)[m]
        else:
            canvas[m] = color
    # exact box-filter anti-aliasing: [res*S, res*S, 3] -> [res, res, 3]
    s = SUPERSAMPLE
    return canvas.reshape(res, s, res, s, 3).mean(axis=(1, 3))


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)

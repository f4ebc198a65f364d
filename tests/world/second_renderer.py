"""A second, independently written renderer of the world grammar, with the meanings it encodes.

It shares no drawing or layout code with `compalign.world.render` / `layout`: shapes are polygons
(ellipses as 96-gons) filled with PIL's `ImageDraw` either at 8x and downscaled with Lanczos
("aa") or point-sampled at pixel centres with no anti-aliasing ("point"), the style chosen per
image. Its own rejection-sampling layout places a parsed `Scene` by the meanings below, and every
layout is checked on its exact polygons: true scenes obey the strict ranges, wrong scenes must
contradict the prompt under the lenient meaning (`holds`). Everything is deterministic given an
`np.random.Generator`.

Meanings (distances in pixels of a 32-px image, `PX` = 1/32 of the side, scaled with resolution):

- Size: extent = width of the shape / image side, before its small rotation (a rectangle is 2:1
  wide, so its width is its extent; a tilted square keeps its side as its size). Nominal small
  0.25, medium 0.35, large 0.48; true scenes draw nominal x U(0.95, 1.05).
  Near-threshold wrong sizes sit at the nearest end of the neighbouring class: small asked ->
  medium at 0.35 x 0.95; medium asked -> small at 0.25 x 1.05 or large at 0.48 x 0.95; large
  asked -> medium at 0.35 x 1.05. The lenient reading splits classes at the midpoints of the
  drawn ranges (0.2975, 0.41175). Objects with no size word may be any class.
- touching: the outlines are at most 1 px apart and neither shape is inside the other. True
  scenes: gap 0-0.5 px; near-threshold wrong: gap 2-4 px.
- on top of: touching, the subject's centre above the object's centre and at most a quarter of
  the object's width off its vertical axis (lenient: half). Near-threshold wrong: 2-4 px above.
- next to: bounding-box gap (the larger of the horizontal and vertical gaps between the boxes)
  from 3 px to 0.17 of the side in true scenes; an evaluator may accept up to 0.21; near-threshold
  wrong: 0.26-0.32.
- inside: the subject entirely inside the container (a circle or square), at least 2 px from its
  outline. Near-threshold wrong: the subject touching the container from outside (0-0.5 px).
- left of / right of / above / below: the subject's centre (bounding-box centre) within a 1:1.3
  cone of the direction from the object's centre (lenient: 1:1), at least 0.1 of the side along
  it, bounding-box gap >= 3 px.
- Unrelated objects: bounding-box gap >= 2 px. Count wrong near-threshold: the count off by one
  with two of the counted objects 2-3 px apart.
- Colours: each grammar colour's hue shifted by up to 8 degrees, saturation and value each
  scaled by U(0.85, 1.0) (value kept >= 0.75). Background: grey 0.03-0.15 plus +-0.02 per channel.
  Stripes ("striped", medium and large objects only): vertical, period 6 px, dark stripes at
  0.35-0.55 of the object colour, random phase.
- Shapes: circle (an ellipse of aspect 0.93-1.07), square (aspect 0.93-1.07), rectangle (width :
  height 1.8-2.2), triangle (isosceles, apex up, base = height x U(0.93, 1.07)), cross (arm width
  0.30-0.42 of the extent); every shape but the cross rotated by up to 4 degrees.
- Placement: anywhere valid, the image border included (0 px margin). Layouts for the perturbed
  set keep a margin of the perturbation's shift (1 px), as the grammar's own layouts do, so that
  shifting the image never cuts an object.

The perturbed set may draw every object 1 image px larger (`grow=1`: a round dilation by 0.5 px,
so every bounding box grows by 1 px; its layout keeps the meaning's gaps for the grown outlines).
The adversarial set (`adversarial`): uniform canvases of the eight
grammar colours and black / grey / white, blurred colour noise (uniform random colours blurred
with a Gaussian of sigma 2-4 px, each channel stretched to [0, 1]), pixel noise, blurred blobs
(sigma 2-5 px), overlapping blobs, off-grammar shapes (5-point star, 2:1 ellipse, diamond,
hexagon, ring) and true scenes among 8-10 distractors (`distractor_layout`).
"""

from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
from matplotlib.path import Path
from PIL import Image, ImageDraw
from scipy import ndimage

from compalign.world.grammar import COLORS, SIZES, Entity, Scene

PX = 1 / 32

# sizes
SIZE_JITTER = (0.95, 1.05)
SIZE_EDGES = (
    (SIZES["small"] * SIZE_JITTER[1] + SIZES["medium"] * SIZE_JITTER[0]) / 2,  # 0.2975
    (SIZES["medium"] * SIZE_JITTER[1] + SIZES["large"] * SIZE_JITTER[0]) / 2,  # 0.41175
)
NEAR_SIZES: dict[str, tuple[tuple[str, float], ...]] = {
    "small": (("medium", SIZE_JITTER[0]),),
    "medium": (("small", SIZE_JITTER[1]), ("large", SIZE_JITTER[0])),
    "large": (("medium", SIZE_JITTER[1]),),
}
# relations
TOUCH_GAP = (0.0, 0.5 * PX)
TOUCH_MAX = 1 * PX
NEAR_TOUCH_GAP = (2 * PX, 4 * PX)
ON_TOP_OFFSET = 0.25  # x the object's width (true scenes); the lenient reading allows half the width
ON_TOP_OFFSET_LENIENT = 0.5
NEXT_GAP = (3 * PX, 0.17)
NEXT_MAX = 0.21
NEAR_NEXT_GAP = (0.26, 0.32)
FAR_MIN = 0.32  # "next to" reversed (classic)
INSIDE_MARGIN = 2 * PX
CONE = 1.3
MIN_ALONG = 0.1
DIRECTION_GAP = 3 * PX
SEPARATION = 2 * PX
CLOSE_GAP = (2 * PX, 3 * PX)
APART_MIN = 4 * PX  # "touching" / "inside" reversed (classic): outlines at least this far apart
# appearance
HUE_SHIFT = 8.0  # degrees
SHADE = (0.85, 1.0)
VALUE_MIN = 0.75
BACKGROUND_GREY = (0.03, 0.15)
BACKGROUND_TINT = 0.02
STRIPE_PERIOD = 6 * PX
STRIPE_DARK = (0.35, 0.55)
ROUND_ASPECT = (0.93, 1.07)
RECT_ASPECT = (1.8, 2.2)
TRIANGLE_BASE = (0.93, 1.07)
CROSS_ARM = (0.30, 0.42)
ROTATION = 4.0  # degrees
STYLES = ("aa", "point")
SUPERSAMPLE = {"aa": 8, "point": 9}  # point: the middle sub-sample of 9 is the pixel centre
N_ROUND = 96  # polygon vertices of an ellipse
NEAR_PROB = 0.25  # true scenes: a free object is placed 2-3 px from an earlier one this often
EDGE_PROB = 0.15  # a free object is pushed to the image border (per axis) this often
OFF_GRAMMAR = ("star", "ellipse", "diamond", "hexagon", "ring")
GRAMMAR_SHAPES = ("circle", "square", "triangle", "cross", "rectangle")
UNIFORM_COLORS = (*COLORS, "black", "grey", "white")
DISTRACTORS = (8, 10)
DISTRACTOR_EXTENT = (0.10, 0.16)
SPATIAL = ("left of", "right of", "above", "below")
CONTAINERS = ("circle", "square")
# relation kinds a plan may hold beyond the grammar's, to draw wrong scenes
CONTACT_KINDS = ("touching", "on top of", "inside", "under", "outside", "gap_touching", "gap_on_top")
WRONG_KINDS = (
    "swap_colors",
    "reverse_relation",
    "swap_shapes",
    "count_off_by_one",
    "near_touching",
    "near_next_to",
    "near_inside",
    "near_count",
    "near_size",
)
NEAR_KINDS = tuple(k for k in WRONG_KINDS if k.startswith("near_"))
ADVERSARIAL_KINDS = (
    "uniform",
    "colour_noise",
    "pixel_noise",
    "blob",
    "overlapping_blobs",
    "off_grammar",
    "many_distractors",
)


class LayoutFailed(RuntimeError):
    """No placement satisfying the plan was found."""


# --------------------------------------------------------------------------------------------
# polygons (unit coordinates: the image is [0, 1] x [0, 1], y down)


def _signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def offset_polygon(p: np.ndarray, d: float) -> np.ndarray:
    """Move every edge of a simple polygon outwards by `d` (inwards for d < 0), mitred corners."""
    if d == 0:
        return p
    e = np.roll(p, -1, axis=0) - p  # edge i: p[i] -> p[i+1]
    n = np.stack([e[:, 1], -e[:, 0]], 1) / np.linalg.norm(e, axis=1, keepdims=True)
    if _signed_area(p) < 0:
        n = -n
    n_prev = np.roll(n, 1, axis=0)  # vertex i joins edges i-1 and i
    return p + d * (n_prev + n) / (1.0 + (n_prev * n).sum(1, keepdims=True))


def _point_segment_distance(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """[len(pts)] distance of each point to the outline of `poly`."""
    a = poly[None, :, :]
    ab = np.roll(poly, -1, axis=0)[None] - a
    ap = pts[:, None, :] - a
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-18), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(1)


def _edges_cross(p: np.ndarray, q: np.ndarray) -> bool:
    a, b = p[:, None, :], np.roll(p, -1, axis=0)[:, None, :]
    c, d = q[None, :, :], np.roll(q, -1, axis=0)[None, :, :]

    def orient(u, v, w):
        return np.sign(
            (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1])
            - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0])
        )

    return bool(((orient(a, b, c) * orient(a, b, d) < 0) & (orient(c, d, a) * orient(c, d, b) < 0)).any())


def _inside(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    return Path(poly).contains_points(pts)


def _bbox_of(p: np.ndarray) -> tuple[float, float, float, float]:
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def _box_gap(a: tuple, b: tuple) -> float:
    return max(0.0, max(a[0], b[0]) - min(a[2], b[2]), max(a[1], b[1]) - min(a[3], b[3]))


# --------------------------------------------------------------------------------------------
# objects


@dataclass(eq=False)
class Obj:
    """One drawn object. `local` is its outline relative to its bounding-box centre (cx, cy)."""

    shape: str
    rgb: tuple[float, float, float]
    extent: float  # width of the shape before its rotation / side
    local: np.ndarray
    hole: np.ndarray | None = None  # a ring's inner outline, relative like `local`
    cx: float = 0.5
    cy: float = 0.5
    color: str | None = None  # grammar colour family
    size: str | None = None  # drawn size class
    striped: bool = False
    dark: float = 0.45
    phase: float = 0.0
    entity: int = -1  # index of the scene entity it was drawn for
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # bounding box of `local`

    def __post_init__(self) -> None:
        self.box = _bbox_of(self.local)

    def moved(self, cx: float, cy: float) -> Obj:
        return replace(self, cx=float(cx), cy=float(cy))

    @property
    def polygon(self) -> np.ndarray:
        return self.local + (self.cx, self.cy)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        return x0 + self.cx, y0 + self.cy, x1 + self.cx, y1 + self.cy

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def texture(self) -> str:
        return "striped" if self.striped else "solid"


def bbox_gap(a: Obj, b: Obj) -> float:
    """The larger of the horizontal and vertical gaps between the bounding boxes (0 if they meet)."""
    return _box_gap(a.bbox, b.bbox)


def overlap(a: Obj, b: Obj) -> bool:
    if bbox_gap(a, b) > 0:
        return False
    p, q = a.polygon, b.polygon
    return _edges_cross(p, q) or bool(_inside(p[:1], q)[0]) or bool(_inside(q[:1], p)[0])


def outline_distance(a: Obj, b: Obj) -> float:
    """Smallest distance between the two outlines (0 where the shapes overlap)."""
    if overlap(a, b):
        return 0.0
    p, q = a.polygon, b.polygon
    return float(min(_point_segment_distance(p, q).min(), _point_segment_distance(q, p).min()))


def contains(outer: Obj, inner: Obj) -> bool:
    """`inner` lies entirely inside `outer`."""
    p, q = inner.polygon, outer.polygon
    return bool(_inside(p, q).all()) and not _edges_cross(p, q)


def inner_margin(outer: Obj, inner: Obj) -> float:
    """Distance from `inner`'s outline to `outer`'s (for an `inner` inside `outer`)."""
    p, q = inner.polygon, outer.polygon
    return float(min(_point_segment_distance(p, q).min(), _point_segment_distance(q, p).min()))


def size_class(extent: float) -> str:
    """The lenient reading of a size: classes split at the midpoints of the drawn ranges."""
    return "small" if extent < SIZE_EDGES[0] else "medium" if extent < SIZE_EDGES[1] else "large"


def shade(color: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """A shade of a grammar colour: hue +-8 degrees, saturation and value x U(0.85, 1)."""
    h, s, v = colorsys.rgb_to_hsv(*COLORS[color])
    h = (h + rng.uniform(-HUE_SHIFT, HUE_SHIFT) / 360.0) % 1.0
    s = s * rng.uniform(*SHADE)
    v = max(v * rng.uniform(*SHADE), VALUE_MIN)
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def random_background(rng: np.random.Generator) -> tuple[float, float, float]:
    g = rng.uniform(*BACKGROUND_GREY)
    return tuple(float(np.clip(g + t, 0.0, 1.0)) for t in rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, 3))  # type: ignore[return-value]


def _ellipse(rx: float, ry: float, n: int = N_ROUND) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], 1)


def _outline(shape: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Outline of a shape of width ~1 around the origin (+ a hole), and whether it may rotate."""
    if shape == "circle":
        return _ellipse(0.5, 0.5 / rng.uniform(*ROUND_ASPECT)), None, True
    if shape in ("square", "rectangle"):
        h = 0.5 / rng.uniform(*(ROUND_ASPECT if shape == "square" else RECT_ASPECT))
        return np.array([[-0.5, -h], [0.5, -h], [0.5, h], [-0.5, h]]), None, True
    if shape == "triangle":
        h = 0.5 / rng.uniform(*TRIANGLE_BASE)
        return np.array([[0.0, -h], [0.5, h], [-0.5, h]]), None, True
    if shape == "cross":
        a = rng.uniform(*CROSS_ARM) / 2
        r = 0.5
        pts = [
            (-a, -r),
            (a, -r),
            (a, -a),
            (r, -a),
            (r, a),
            (a, a),
            (a, r),
            (-a, r),
            (-a, a),
            (-r, a),
            (-r, -a),
            (-a, -a),
        ]
        return np.array(pts), None, False
    if shape == "star":  # 5 points, apex up
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 0.5, 0.5 * 0.382)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1), None, True
    if shape == "ellipse":  # 2:1, wide
        return _ellipse(0.5, 0.25), None, True
    if shape == "diamond":  # a square turned by 45 degrees
        return np.array([[0.0, -0.5], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0]]), None, True
    if shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        return np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], 1), None, True
    if shape == "ring":
        return _ellipse(0.5, 0.5), _ellipse(0.5, 0.5)[::-1] * rng.uniform(0.5, 0.65), False
    raise ValueError(f"unknown shape {shape!r}")


def make_object(
    shape: str,
    extent: float,
    rng: np.random.Generator,
    color: str | None = None,
    rgb: tuple[float, float, float] | None = None,
    size: str | None = None,
    striped: bool = False,
    entity: int = -1,
) -> Obj:
    """An object of width `extent` at the image centre, then turned by its small rotation.

    The size is the shape's own width: a square turned by 4 degrees keeps its side, its bounding
    box grows (by up to 7%), as a person reads the size of a tilted shape."""
    outline, hole, rotates = _outline(shape, rng)
    k = extent / (outline[:, 0].max() - outline[:, 0].min())
    if rotates:
        t = math.radians(rng.uniform(-ROTATION, ROTATION))
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        outline = outline @ rot.T
        hole = None if hole is None else hole @ rot.T
    x0, y0, x1, y1 = _bbox_of(outline)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    local = (outline - centre) * k
    hole = None if hole is None else (hole - centre) * k
    if rgb is None:
        rgb = shade(color, rng) if color else (0.5, 0.5, 0.5)
    return Obj(
        shape=shape,
        rgb=rgb,
        extent=float(extent),
        local=local,
        hole=hole,
        color=color,
        size=size,
        striped=striped,
        dark=float(rng.uniform(*STRIPE_DARK)),
        phase=float(rng.uniform(0.0, 1.0)),
        entity=entity,
    )


# --------------------------------------------------------------------------------------------
# drawing


def _mask(o: Obj, n: int, grow: float) -> np.ndarray:
    """Coverage of `o` on an n x n grid of samples; `grow` (unit) widens the shape by that much.

    PIL fills every sample cell an edge passes through, so outlines move in by half a cell first.
    Growing is a round dilation by `grow / 2` (every point within that distance of the shape), as a
    wider pen or a coarser fill draws it: the bounding box grows by exactly `grow`, whatever the
    corner angles (moving the edges out instead would lengthen a triangle by 1.6 x `grow`).
    """
    im = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(im)
    half = 0.5 / n
    draw.polygon([tuple(p) for p in offset_polygon(o.polygon, -half) * n], fill=255)
    if o.hole is not None:
        inner = offset_polygon(o.hole + (o.cx, o.cy), -half) * n
        draw.polygon([tuple(p) for p in inner], fill=0)
    m = np.asarray(im) > 0
    if grow > 0 and m.any():  # sample centres within grow / 2 of a sample inside (+ half a cell)
        m = ndimage.distance_transform_edt(~m) <= grow / 2 * n + 1e-6
    return m


def draw(
    objects: list[Obj],
    res: int,
    style: str = "aa",
    background: tuple[float, float, float] = (0.08, 0.08, 0.08),
    grow: float = 0.0,
) -> np.ndarray:
    """Draw objects in order (later on top) -> `[res, res, 3]` float32 in [0, 1].

    "aa": filled at 8x and downscaled with Lanczos; "point": each pixel takes the colour at its
    centre. `grow` (image px) draws every object that much wider and taller (a round dilation by
    `grow / 2`, 0.5 px on each side for 1).
    """
    if res < 16:
        raise ValueError(f"resolution must be at least 16 px, got {res}")
    if style not in SUPERSAMPLE:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    s = SUPERSAMPLE[style]
    n = res * s
    canvas = np.empty((n, n, 3), np.float32)
    canvas[:] = background
    xs = (np.arange(n) + 0.5) / n
    for o in objects:
        m = _mask(o, n, grow / res)
        color = np.asarray(o.rgb, np.float32)
        if o.striped:
            dark = np.floor(((xs - o.cx) / STRIPE_PERIOD + o.phase) * 2) % 2 == 1
            by_column = np.where(dark[:, None], color * o.dark, color).astype(np.float32)  # [n, 3]
            canvas[m] = np.broadcast_to(by_column[None], (n, n, 3))[m]
        else:
            canvas[m] = color
    if style == "point":
        return np.ascontiguousarray(canvas[s // 2 :: s, s // 2 :: s])
    out = [
        np.asarray(Image.fromarray(canvas[..., c]).resize((res, res), Image.Resampling.LANCZOS))
        for c in range(3)
    ]
    return np.clip(np.stack(out, -1), 0.0, 1.0).astype(np.float32)


def render(objects: list[Obj], res: int, rng: np.random.Generator, grow: float = 0.0) -> np.ndarray:
    """Draw with a random style and background."""
    style = STYLES[int(rng.integers(len(STYLES)))]
    return draw(objects, res, style, random_background(rng), grow)


# --------------------------------------------------------------------------------------------
# meanings


def _centres(a: Obj, b: Obj) -> tuple[float, float]:
    """Vector from the subject's centre to the object's."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.bbox, b.bbox
    return (bx0 + bx1 - ax0 - ax1) / 2, (by0 + by1 - ay0 - ay1) / 2


def _direction(kind: str, a: Obj, b: Obj) -> tuple[float, float]:
    """(along, across): the subject-to-object vector in the relation's frame (along > 0: holds)."""
    dx, dy = _centres(a, b)
    return {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[kind]


def _touching(a: Obj, b: Obj, gap: tuple[float, float]) -> bool:
    if overlap(a, b):
        return False
    return gap[0] - 1e-9 <= outline_distance(a, b) <= gap[1] + 1e-4 * PX


def _on_top(a: Obj, b: Obj, down: bool = False, offset: float = ON_TOP_OFFSET) -> bool:
    dx, dy = _centres(a, b)
    return (dy < 0 if down else dy > 0) and abs(dx) <= offset * b.width


def relation_ok(kind: str, a: Obj, b: Obj, pad: float = 0.0) -> bool:
    """Strict check of a placed pair: the ranges true and wrong scenes are drawn from.

    `pad` (unit) is the extra room kept for outlines drawn wider by that much."""
    if kind in ("touching", "outside"):
        return _touching(a, b, TOUCH_GAP)
    if kind == "on top of":
        return _touching(a, b, TOUCH_GAP) and _on_top(a, b)
    if kind == "under":
        return _touching(a, b, TOUCH_GAP) and _on_top(a, b, down=True)
    if kind == "gap_touching":
        return _touching(a, b, NEAR_TOUCH_GAP)
    if kind == "gap_on_top":
        return _touching(a, b, NEAR_TOUCH_GAP) and _on_top(a, b)
    if kind == "next to":
        return NEXT_GAP[0] + pad <= bbox_gap(a, b) <= NEXT_GAP[1]
    if kind == "near_far":
        return NEAR_NEXT_GAP[0] <= bbox_gap(a, b) <= NEAR_NEXT_GAP[1]
    if kind == "far":
        return bbox_gap(a, b) >= FAR_MIN
    if kind in SPATIAL:
        along, across = _direction(kind, a, b)
        return along >= MIN_ALONG and along >= CONE * abs(across) and bbox_gap(a, b) >= DIRECTION_GAP + pad
    if kind == "inside":
        return contains(b, a) and inner_margin(b, a) >= INSIDE_MARGIN
    if kind == "apart":
        return outline_distance(a, b) >= APART_MIN
    raise KeyError(kind)


def relation_holds(kind: str, a: Obj, b: Obj) -> bool:
    """Lenient check of a grammar relation: what any reasonable reading of the words accepts."""
    if kind in SPATIAL:
        along, across = _direction(kind, a, b)
        return along > 0 and along >= abs(across)
    if kind == "next to":
        return bbox_gap(a, b) <= NEXT_MAX
    if kind == "inside":
        return contains(b, a)
    touching = outline_distance(a, b) <= TOUCH_MAX and not contains(a, b) and not contains(b, a)
    if kind == "touching":
        return touching
    if kind == "on top of":
        return touching and _on_top(a, b, offset=ON_TOP_OFFSET_LENIENT)
    raise KeyError(kind)


def _matches(e: Entity, o: Obj) -> bool:
    return (
        o.shape == e.shape
        and (e.color is None or o.color == e.color)
        and (e.size is None or size_class(o.extent) == e.size)
        and (e.texture is None or o.texture == e.texture)
    )


def holds(scene: Scene, objects: list[Obj]) -> bool:
    """Does any reading of the objects satisfy the scene (lenient meaning, exact geometry)?"""
    for e in scene.entities:
        if e.numbered and sum(_matches(e, o) for o in objects) != e.count:
            return False
    single = [i for i, e in enumerate(scene.entities) if not e.numbered]
    for perm in itertools.permutations(range(len(objects)), len(single)):
        assign = dict(zip(single, perm, strict=True))
        if not all(_matches(scene.entities[i], objects[j]) for i, j in assign.items()):
            continue
        if all(
            relation_holds(r.kind, objects[assign[r.subject]], objects[assign[r.object]])
            for r in scene.relations
            if r.subject in assign and r.object in assign
        ):
            return True
    return False


def check_true(scene: Scene, objects: list[Obj], pad: float = 0.0, margin: float = 0.0) -> list[str]:
    """Violations of the strict meaning by a true layout (objects carry their entity); [] if none.

    `margin` (unit) is the room kept between every object and the image border."""
    bad = []
    for i, e in enumerate(scene.entities):
        mine = [o for o in objects if o.entity == i]
        if len(mine) != e.count:
            bad.append(f"entity {i}: {len(mine)} objects for count {e.count}")
        for o in mine:
            lo, hi = (SIZES[o.size] * j for j in SIZE_JITTER) if o.size else (0.0, 0.0)
            if not (lo - 1e-9 <= o.extent <= hi + 1e-9) or (e.size and o.size != e.size):
                bad.append(f"entity {i}: extent {o.extent:.4f} drawn as {o.size} for size {e.size}")
            if o.shape != e.shape or (e.color and o.color != e.color):
                bad.append(f"entity {i}: drawn {o.color} {o.shape}")
            if (e.texture and o.texture != e.texture) or (o.striped and o.size == "small"):
                bad.append(f"entity {i}: texture {o.texture} at size {o.size}")
            x0, y0, x1, y1 = o.bbox
            m = pad / 2 + margin
            if min(x0, y0) < m - 1e-9 or max(x1, y1) > 1 - m + 1e-9:
                bad.append(f"entity {i}: outside the image {o.bbox}")
    linked = set()
    for r in scene.relations:
        a = next((o for o in objects if o.entity == r.subject), None)
        b = next((o for o in objects if o.entity == r.object), None)
        linked.add(frozenset((r.subject, r.object)))
        if a is None or b is None or not relation_ok(r.kind, a, b, pad):
            bad.append(f"relation {r.kind} {r.subject}->{r.object} not met")
    for a, b in itertools.combinations(objects, 2):
        if frozenset((a.entity, b.entity)) not in linked and bbox_gap(a, b) < SEPARATION + pad - 1e-9:
            bad.append(f"objects of entities {a.entity}, {b.entity} {bbox_gap(a, b) / PX:.2f} px apart")
    return bad


# --------------------------------------------------------------------------------------------
# layout


@dataclass
class Plan:
    """What to draw: entities, relations (grammar kinds and the wrong kinds), size overrides."""

    entities: tuple[Entity, ...]
    relations: tuple[tuple[str, int, int], ...] = ()
    extents: dict[int, float] = field(default_factory=dict)  # entity -> exact extent
    close: frozenset[int] = frozenset()  # entities with two objects 2-3 px apart

    @staticmethod
    def of(scene: Scene) -> Plan:
        return Plan(scene.entities, tuple((r.kind, r.subject, r.object) for r in scene.relations))


def _draw_objects(plan: Plan, rng: np.random.Generator) -> list[list[Obj]]:
    partner = {}
    for k, s, o in plan.relations:
        if k in CONTACT_KINDS:
            partner[s], partner[o] = o, s
    contents = {s for k, s, _ in plan.relations if k in ("inside", "outside")}
    containers = {o for k, _, o in plan.relations if k in ("inside", "outside")}
    chosen = {i: e.color for i, e in enumerate(plan.entities) if e.color}
    out = []
    for i, e in enumerate(plan.entities):
        objs = []
        for _ in range(e.count):
            color = e.color
            if color is None:
                if i in chosen and rng.random() < 0.5:
                    color = chosen[i]
                else:
                    avoid = {chosen.get(partner[i])} if i in partner else set()
                    color = str(rng.choice([c for c in COLORS if c not in avoid]))
                chosen.setdefault(i, color)
            size = e.size
            if size is None:
                if i in contents:
                    size = "medium" if e.texture == "striped" or rng.random() < 0.3 else "small"
                elif i in containers:
                    size = "large" if rng.random() < 0.7 else "medium"
                elif e.texture == "striped":
                    size = str(rng.choice(["medium", "large"]))
                else:
                    size = str(rng.choice(list(SIZES), p=[0.4, 0.4, 0.2]))
            if i in plan.extents:
                extent = plan.extents[i]
            else:
                extent = SIZES[size] * rng.uniform(*SIZE_JITTER)
            striped = e.texture == "striped" if e.texture else (size != "small" and rng.random() < 0.25)
            objs.append(make_object(e.shape, extent, rng, color=color, size=size, striped=striped, entity=i))
        out.append(objs)
    return out


def _free(o: Obj, rng: np.random.Generator, pad: float, margin: float = 0.0) -> Obj | None:
    """Anywhere in the image, now and then pushed against the border (`margin` from it)."""
    x0, y0, x1, y1 = o.box
    m = pad / 2 + margin
    lo_x, hi_x, lo_y, hi_y = m - x0, 1 - m - x1, m - y0, 1 - m - y1
    if lo_x > hi_x or lo_y > hi_y:
        return None
    cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    if rng.random() < EDGE_PROB:
        cx = lo_x if rng.random() < 0.5 else hi_x
    if rng.random() < EDGE_PROB:
        cy = lo_y if rng.random() < 0.5 else hi_y
    return o.moved(cx, cy)


def _ray(a: Obj, b: Obj, ux: float, uy: float, far_enough, ox: float = 0.0) -> Obj | None:
    """Move `a` from b's centre (+ ox) along (ux, uy) to where `far_enough` turns true."""
    lo, hi = 0.0, 1.5
    if not far_enough(a.moved(b.cx + ox + ux * hi, b.cy + uy * hi)):
        return None
    for _ in range(22):
        mid = (lo + hi) / 2
        if far_enough(a.moved(b.cx + ox + ux * mid, b.cy + uy * mid)):
            hi = mid
        else:
            lo = mid
    return a.moved(b.cx + ox + ux * hi, b.cy + uy * hi)


def _at_gap(a: Obj, b: Obj, gap: float, ux: float, uy: float, ox: float = 0.0) -> Obj | None:
    return _ray(a, b, ux, uy, lambda c: not overlap(c, b) and outline_distance(c, b) >= gap, ox)


def _at_box_gap(a: Obj, b: Obj, gap: float, rng: np.random.Generator) -> Obj | None:
    t = rng.uniform(0, 2 * math.pi)
    return _ray(a, b, math.cos(t), math.sin(t), lambda c: bbox_gap(c, b) >= gap)


def _place_pair(kind: str, a: Obj, b: Obj, rng: np.random.Generator, pad: float) -> Obj | None:
    """Position subject `a` relative to the placed object `b`."""
    t = rng.uniform(0, 2 * math.pi)
    if kind in ("touching", "outside", "gap_touching"):
        gap = rng.uniform(*(NEAR_TOUCH_GAP if kind == "gap_touching" else TOUCH_GAP))
        return _at_gap(a, b, gap, math.cos(t), math.sin(t))
    if kind in ("on top of", "under", "gap_on_top"):
        gap = rng.uniform(*(NEAR_TOUCH_GAP if kind == "gap_on_top" else TOUCH_GAP))
        ox = rng.uniform(-0.2, 0.2) * b.width
        return _at_gap(a, b, gap, 0.0, 1.0 if kind == "under" else -1.0, ox)
    if kind == "next to":
        return _at_box_gap(a, b, rng.uniform(NEXT_GAP[0] + pad, NEXT_GAP[1]), rng)
    if kind == "near_far":
        return _at_box_gap(a, b, rng.uniform(*NEAR_NEXT_GAP), rng)
    if kind == "far":
        return _at_box_gap(a, b, rng.uniform(FAR_MIN, FAR_MIN + 0.2), rng)
    if kind in SPATIAL:
        ux, uy = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}[kind]
        half = (a.width + b.width) / 2 if ux else (a.height + b.height) / 2
        lo = max(MIN_ALONG, half + DIRECTION_GAP + pad)
        if lo >= 0.95:
            return None
        along = rng.uniform(lo, 0.95)
        across = rng.uniform(-along / CONE, along / CONE)
        return a.moved(b.cx + ux * along - uy * across, b.cy + uy * along + ux * across)
    if kind == "inside":
        rx, ry = ((b.width - a.width) / 2 - INSIDE_MARGIN, (b.height - a.height) / 2 - INSIDE_MARGIN)
        if rx < 0 or ry < 0:
            return None
        return a.moved(b.cx + rng.uniform(-rx, rx) * 0.6, b.cy + rng.uniform(-ry, ry) * 0.6)
    if kind == "apart":
        return _free(a, rng, pad)
    raise KeyError(kind)


def _in_bounds(o: Obj, pad: float, margin: float = 0.0) -> bool:
    x0, y0, x1, y1 = o.bbox
    m = pad / 2 + margin
    return min(x0, y0) >= m - 1e-9 and max(x1, y1) <= 1 - m + 1e-9


def _try_layout(
    plan: Plan, rng: np.random.Generator, pad: float, near_prob: float, margin: float = 0.0
) -> list[Obj] | None:
    per_entity = _draw_objects(plan, rng)
    subject_of = {o: (k, s) for k, s, o in plan.relations}
    subjects = {s for _, s, _ in plan.relations}
    sep = SEPARATION + pad

    def fits(p: Obj, others: list[Obj]) -> bool:
        return _in_bounds(p, pad, margin) and all(bbox_gap(p, q) >= sep for q in others)

    order = [int(i) for i in rng.permutation(len(plan.entities)) if int(i) not in subjects]
    if rng.random() < 0.5:  # largest groups first
        area = [sum(o.width * o.height for o in objs) for objs in per_entity]
        order.sort(key=lambda i: -(area[i] + (area[subject_of[i][1]] if i in subject_of else 0.0)))
    placed: list[Obj] = []
    for i in order:
        for _ in range(30):
            group: list[Obj] = []
            for k, o in enumerate(per_entity[i]):
                if i in plan.close and k == 1:
                    p = _at_box_gap(o, group[0], rng.uniform(*CLOSE_GAP) + pad, rng)
                elif placed + group and rng.random() < near_prob:
                    q = (placed + group)[int(rng.integers(len(placed + group)))]
                    p = _at_box_gap(o, q, rng.uniform(*CLOSE_GAP) + pad, rng)
                else:
                    p = _free(o, rng, pad, margin)
                if p is None or not fits(p, placed + group):
                    break
                group.append(p)
            else:
                if i in subject_of:
                    kind, s = subject_of[i]
                    p = _place_pair(kind, per_entity[s][0], group[0], rng, pad)
                    if p is None or not fits(p, placed) or not relation_ok(kind, p, group[0], pad):
                        continue
                    group.append(p)
                placed += group
                break
        else:
            return None
    contents = {s for k, s, _ in plan.relations if k == "inside"}
    return sorted(placed, key=lambda o: (o.entity in contents, o.entity))


def layout(
    scene: Scene | Plan,
    rng: np.random.Generator,
    pad: float = 0.0,
    tries: int = 100,
    near_prob: float = NEAR_PROB,
    margin: float = 0.0,
) -> list[Obj]:
    """Place a scene (or a plan) by rejection sampling; raise `LayoutFailed` if nothing fits.

    `pad` (unit coordinates) keeps the meaning's gaps for outlines drawn that much wider; `margin`
    (unit) keeps every object that far inside the image."""
    plan = Plan.of(scene) if isinstance(scene, Scene) else scene
    for kind, _, o in plan.relations:
        if kind == "inside" and plan.entities[o].shape not in CONTAINERS:
            raise LayoutFailed(f"a {plan.entities[o].shape} holds nothing inside (containers: {CONTAINERS})")
    for _ in range(tries):
        objects = _try_layout(plan, rng, pad, near_prob, margin)
        if objects is not None:
            return objects
    raise LayoutFailed(f"no layout in {tries} tries for {len(plan.entities)} entities {plan.relations}")


def true_layout(scene: Scene, rng: np.random.Generator, pad: float = 0.0, margin: float = 0.0) -> list[Obj]:
    """A layout of `scene` that obeys the strict meaning (checked)."""
    for _ in range(20):
        objects = layout(scene, rng, pad, margin=margin)
        if not check_true(scene, objects, pad, margin):
            return objects
    raise LayoutFailed(f"no layout obeying the meaning for {scene}")


# --------------------------------------------------------------------------------------------
# wrong scenes


def wrong_plan(scene: Scene, kind: str, rng: np.random.Generator) -> Plan | None:
    """A plan that contradicts `scene` in one way, or None if `kind` does not apply to it."""
    entities = list(scene.entities)
    relations = [(r.kind, r.subject, r.object) for r in scene.relations]
    extents: dict[int, float] = {}
    close: frozenset[int] = frozenset()

    def pick(options: list):
        return options[int(rng.integers(len(options)))] if options else None

    if kind == "swap_colors":
        colored = [i for i, e in enumerate(entities) if e.color]
        pair = pick(
            [(i, j) for i, j in itertools.combinations(colored, 2) if entities[i].color != entities[j].color]
        )
        if pair:
            i, j = pair
            ci, cj = entities[i].color, entities[j].color
            entities[i], entities[j] = entities[i].with_(color=cj), entities[j].with_(color=ci)
        elif colored:
            i = pick(colored)
            used = {e.color for e in entities}
            entities[i] = entities[i].with_(color=pick([c for c in COLORS if c not in used]))
        else:
            return None
    elif kind == "swap_shapes":
        pair = pick(
            [
                (i, j)
                for i, j in itertools.combinations(range(len(entities)), 2)
                if entities[i].shape != entities[j].shape
            ]
        )
        if pair:
            i, j = pair
            si, sj = entities[i].shape, entities[j].shape
            entities[i], entities[j] = entities[i].with_(shape=sj), entities[j].with_(shape=si)
        else:
            i = int(rng.integers(len(entities)))
            entities[i] = entities[i].with_(shape=pick([s for s in GRAMMAR_SHAPES if s != entities[i].shape]))
    elif kind == "reverse_relation":
        if not relations:
            return None
        n = int(rng.integers(len(relations)))
        k, s, o = relations[n]
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        flip |= {"next to": "far", "on top of": "under", "touching": "apart", "inside": "apart"}
        relations[n] = (flip[k], s, o)
    elif kind in ("near_touching", "near_next_to", "near_inside"):
        wanted = {
            "near_touching": ("touching", "on top of"),
            "near_next_to": ("next to",),
            "near_inside": ("inside",),
        }
        n = pick([n for n, (k, _, _) in enumerate(relations) if k in wanted[kind]])
        if n is None:
            return None
        k, s, o = relations[n]
        new = {
            "touching": "gap_touching",
            "on top of": "gap_on_top",
            "next to": "near_far",
            "inside": "outside",
        }
        relations[n] = (new[k], s, o)
    elif kind in ("count_off_by_one", "near_count"):
        i = pick([i for i, e in enumerate(entities) if e.numbered])
        if i is None:
            return None
        c = entities[i].count
        c = c + 1 if c == 1 or (c < 4 and rng.random() < 0.5) else c - 1
        entities[i] = entities[i].with_(count=c)
        if kind == "near_count" and c >= 2:
            close = frozenset({i})
    elif kind == "near_size":
        options = [
            (i, cls, f)
            for i, e in enumerate(entities)
            if e.size
            for cls, f in NEAR_SIZES[e.size]
            if not (cls == "small" and e.texture == "striped")
        ]
        choice = pick(options)
        if choice is None:
            return None
        i, cls, f = choice
        entities[i] = entities[i].with_(size=cls)
        extents[i] = SIZES[cls] * f
    else:
        raise KeyError(f"unknown wrong kind {kind!r}; expected one of {WRONG_KINDS}")
    return Plan(tuple(entities), tuple(relations), extents, close)


def wrong_layout(scene: Scene, kind: str, rng: np.random.Generator, tries: int = 10) -> list[Obj] | None:
    """A layout of a wrong plan that truly contradicts `scene` (lenient meaning), or None."""
    for _ in range(tries):
        plan = wrong_plan(scene, kind, rng)
        if plan is None:
            return None
        try:
            objects = layout(plan, rng, tries=20, near_prob=0.0 if plan.close else NEAR_PROB)
        except LayoutFailed:
            continue
        if not holds(scene, objects):
            return objects
    return None


# --------------------------------------------------------------------------------------------
# adversarial set


def distractor_layout(scene: Scene, rng: np.random.Generator, tries: int = 30) -> list[Obj]:
    """A true layout of `scene` plus 8-10 small distractors that match none of its entities."""
    for _ in range(tries):
        objects = true_layout(scene, rng)
        drawn = {(o.color, o.shape) for o in objects}
        want = int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))
        for _ in range(want * 40):
            if len(objects) - scene.n_objects >= want:
                break
            shape = str(rng.choice(GRAMMAR_SHAPES))
            color = str(rng.choice(list(COLORS)))
            if (color, shape) in drawn or any(
                e.shape == shape and e.color in (None, color) for e in scene.entities
            ):
                continue
            o = _free(make_object(shape, rng.uniform(*DISTRACTOR_EXTENT), rng, color=color), rng, 0.0)
            if o is not None and all(bbox_gap(o, q) >= SEPARATION for q in objects):
                objects.append(o)
        if len(objects) - scene.n_objects >= want:
            return objects
    raise LayoutFailed(f"no room for {DISTRACTORS[0]} distractors around {scene}")


def _blob(res: int, rng: np.random.Generator, cx: float, cy: float) -> np.ndarray:
    sigma = rng.uniform(2.0, 5.0) * res / 32
    c = np.arange(res) + 0.5
    r2 = (c[None, :] - cx * res) ** 2 + (c[:, None] - cy * res) ** 2
    return np.exp(-r2 / (2 * sigma * sigma))[..., None]


def adversarial(
    kind: str, res: int, rng: np.random.Generator, index: int = 0, scene: Scene | None = None
) -> tuple[np.ndarray, str]:
    """One adversarial image `[res, res, 3]` and a description of it.

    `index` picks the colour of a uniform canvas and the shape of an off-grammar image (cycling);
    "many_distractors" needs the true `scene` to draw among its distractors."""
    if kind == "uniform":
        name = UNIFORM_COLORS[index % len(UNIFORM_COLORS)]
        if name in COLORS:
            rgb = shade(name, rng)
        else:
            level = {"black": (0.0, 0.03), "grey": (0.4, 0.6), "white": (0.93, 1.0)}[name]
            rgb = (rng.uniform(*level),) * 3
        return np.broadcast_to(np.asarray(rgb, np.float32), (res, res, 3)).copy(), f"uniform {name}"
    if kind == "colour_noise":
        sigma = rng.uniform(2.0, 4.0)
        img = ndimage.gaussian_filter(
            rng.random((res, res, 3)), (sigma * res / 32, sigma * res / 32, 0), mode="wrap"
        )
        lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
        return ((img - lo) / np.maximum(hi - lo, 1e-6)).astype(
            np.float32
        ), f"colour noise sigma {sigma:.1f} px"
    if kind == "pixel_noise":
        return rng.random((res, res, 3)).astype(np.float32), "pixel noise"
    if kind in ("blob", "overlapping_blobs"):
        img = np.broadcast_to(np.asarray(random_background(rng), np.float32), (res, res, 3)).copy()
        n = 1 if kind == "blob" else int(rng.integers(2, 4))
        colors = [str(c) for c in rng.choice(list(COLORS), size=n, replace=False)]
        cx, cy = rng.uniform(0.25, 0.75, size=2)
        for k, color in enumerate(colors):
            ox, oy = (0.0, 0.0) if k == 0 else rng.uniform(-4 * PX, 4 * PX, size=2)
            a = _blob(res, rng, cx + ox, cy + oy)
            img = img * (1 - a) + np.asarray(shade(color, rng), np.float32) * a
        return img.astype(np.float32), f"{kind.replace('_', ' ')} {' '.join(colors)}"
    if kind == "off_grammar":
        shape = OFF_GRAMMAR[index % len(OFF_GRAMMAR)]
        color = str(rng.choice(list(COLORS)))
        o = None
        while o is None:
            o = _free(make_object(shape, rng.uniform(0.3, 0.5), rng, color=color), rng, 0.0)
        return render([o], res, rng), f"off-grammar {color} {shape}"
    if kind == "many_distractors":
        if scene is None:
            raise ValueError("many_distractors needs the true scene")
        objects = distractor_layout(scene, rng)
        return render(objects, res, rng), f"{len(objects) - scene.n_objects} distractors"
    raise KeyError(f"unknown adversarial kind {kind!r}; expected one of {ADVERSARIAL_KINDS}")

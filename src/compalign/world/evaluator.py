"""Exact evaluator (v2): image + prompt -> per-clause verdicts, a score in [0, 1] and pass/fail.

It parses the prompt into its scene, finds the objects in the image (colour segmentation, then
shape by template fit, size by extent, texture by the stripe frequency), matches scene entities to
objects (the assignment that satisfies most clauses) and checks every clause. Built to work on
imperfect images (blur, noise, colour shifts, other drawing styles), not only on clean renders. It
is the judge of every quality figure and must never be the optimised reward.

What counts as an object (v2):
- the image has a ground: at least `BG_MIN_FRACTION` of its pixels are dark grey (chroma below
  `FG_CHROMA`, value at most `BG_MAX_VALUE`, within `BG_TOL` of their median colour). Uniform
  canvases, pixel noise and colour mush have none, so they hold no objects at all;
- a grammar shape, rendered and blurred, explains the object's coverage (`MIN_SHAPE_FIT`), and
  what the fit leaves after its sub-pixel shift, scale and rotation are projected out is no more
  than `MAX_STRUCT` plus the image's noise (`STRUCT_NOISE`);
- it sits on the ground: at least `SUPPORT_MIN` of a ring `RING` px around it is ground, the image
  border, or an accepted object (a container, a base); holes in it hold other objects.

Meanings, in pixels of a 32-px image (scaled with the resolution):
- touching / on top of: the two outlines at most about 1 px apart (mask pixel centres at most
  `TOUCH_MAX` px, or fitted outlines at most `FIT_TOUCH_MAX` px); on top of also needs the subject
  above the object's middle and within half its width;
- next to: bounding boxes at most `NEAR_MAX` of the side apart (6.7 px at 32 px);
- inside: at least `INSIDE_MIN` of the subject inside the container's filled mask or fitted shape;
- left of / right of / above / below: the object's centre within 45 degrees of the direction;
- sizes: extent / side split at `SIZE_EDGES`, midway between a class drawn 1 px larger than its
  largest (nominal x 1.05) and the next class at its smallest (nominal x 0.95);
- objects of one colour a gap of 2 px or more apart are separate objects; every object is seen
  (no cap on their number).

Figures (both renderers, 32 and 64 px, adversarial images): `benchmarks/world_evaluator.py`,
stored in `benchmarks/evaluator_world.json`.
"""

from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .grammar import COLORS, SHAPES, Entity, Scene, parse_prompt
from .render import CROSS_ARM, STRIPE_DARK, STRIPE_PERIOD, shape_mask, stripe_dark

_COLOR_NAMES = list(COLORS)
_HUES = np.array([colorsys.rgb_to_hsv(*COLORS[c])[0] for c in _COLOR_NAMES], dtype=np.float32)

FG_CHROMA = 0.2  # coarse foreground: smoothed chroma above this
BRIDGE = 0.33  # dark stripes bridged when their chroma is above this fraction of the peak
REFINE = 0.5  # object mask: chroma above this fraction of the object's peak chroma
MIN_AREA = 6.0  # px at 32 px resolution
# An object counts only if some shape template explains its coverage this well (least-squares fit
# in [0, 1]); shapes drawn pixel-sharp and rotated a few degrees fit down to ~0.85
MIN_SHAPE_FIT = 0.84
STRUCT_BLUR = 0.8  # px at 32: low-pass of the fit residual before its worst pixel is read
# worst low-passed residual of a noise-free object (relative to its coverage): anti-aliased or
# blurred outlines, and pixel-sharp (aliased) ones, whose 1-px steps leave more
MAX_STRUCT = (0.55, 0.75)
SOFT_MIN = 0.3  # an outline with fewer pixels at partial coverage than this is pixel-sharp
STRUCT_NOISE = 1.0  # ... plus this many times the pixel noise in coverage units
BG_MAX_VALUE = 0.4  # ground pixels: chroma below FG_CHROMA and value at most this
BG_TOL = 0.12  # ... and each channel within this of the ground's median colour
BG_MIN_FRACTION = 0.25  # an image with less ground than this holds no objects
RING = (2.0, 2.0)  # px at 32: the ring around an object starts this far out and is this wide
SUPPORT_MIN = 0.5  # fraction of the ring that must be ground, image border or accepted objects
HOLE_MAX = 3.0  # px^2 at 32: larger holes in an object must hold another object
SPLIT_GAIN = 0.03  # one-colour piece read as several objects when their fit beats the whole by this
SIZE_EDGES = (0.313, 0.428)  # extent / side: small | medium | large (midway between a class drawn
# 1 px larger than its largest and the next class at its smallest: SIZES x 1.05 + 1 px vs SIZES x 0.95)
# Stripe score = (striped template fit - solid template fit) / 0.02 + (row stripe amplitude) / 0.05;
# threshold calibrated on perturbed renders (benchmarks/world_evaluator.py).
STRIPE_MIN = 2.2
SMOOTH = 0.7  # px at 32: denoising before colour classification and segmentation
PRE_BLUR = 0.6  # px at 32: coverage is smoothed by this before template fitting
TOUCH_MAX = 2.0  # px at 32: mask pixel centres this close touch (a gap of at most 1 px)
FIT_TOUCH_MAX = 1.5  # px at 32: ... or fitted outlines this close
NEAR_MAX = 0.21  # bbox gap (unit coords) at most this: "next to"
INSIDE_MIN = 0.6  # fraction of the subject inside the object's filled mask or fitted shape


@dataclass
class Component:
    """One object found in the image; geometry in pixels of the analysed image."""

    color: str
    mask: np.ndarray  # [H, W] bool
    filled: np.ndarray  # mask with holes filled
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    shape: str
    shape_fit: float
    extent: float  # fraction of the image side
    stripe: float  # stripe score (see STRIPE_MIN)
    res: int
    struct: float = 0.0  # worst low-passed fit residual, relative to the object's coverage
    fit_center: tuple[float, float] = (0.5, 0.5)  # centre of the fitted shape (unit coordinates)
    soft: float = 1.0  # fraction of the outline's pixels at partial coverage (anti-aliased, blurred)
    core: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))  # core colour
    ground: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # background colour
    support: float = 1.0  # fraction of the surrounding ring on ground, border or other objects

    @property
    def size(self) -> str:
        return (
            "small" if self.extent < SIZE_EDGES[0] else "medium" if self.extent < SIZE_EDGES[1] else "large"
        )

    @property
    def texture(self) -> str:
        return "striped" if self.stripe >= STRIPE_MIN else "solid"

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1 + 1) / 2 / self.res, (y0 + y1 + 1) / 2 / self.res)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Verdict:
    prompt: str
    clauses: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(ok for _, ok in self.clauses) / max(1, len(self.clauses))

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.clauses)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "score": self.score,
            "passed": self.passed,
            "clauses": [{"clause": c, "ok": ok} for c, ok in self.clauses],
        }


def as_image(image) -> np.ndarray:
    """Accept HxWx3 float [0,1] / uint8 arrays, PIL images or torch tensors [3,H,W]."""
    if hasattr(image, "detach"):  # torch tensor, [3,H,W] in [0,1]
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.transpose(1, 2, 0)
    elif not isinstance(image, np.ndarray):  # PIL
        image = np.asarray(image.convert("RGB"))
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square RGB image [H, W, 3], got shape {image.shape}")
    return np.clip(image, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# 1. find objects


def _hue_classes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel chroma [H,W] and nearest colour class [H,W] by hue."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    chroma = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    c = np.maximum(chroma, 1e-6)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4)) / 6
    d = np.abs(h[..., None] - _HUES)
    d = np.minimum(d, 1 - d)
    return chroma, d.argmin(-1)


AREA = {"circle": np.pi / 4, "square": 1.0, "rectangle": 0.5, "triangle": 0.5}
AREA["cross"] = 2 * CROSS_ARM - CROSS_ARM**2
CENTROID_DY = {"triangle": 1 / 6}  # centroid below the bounding-box centre, times the extent


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] Gaussian blur as a matrix, mirrored at both ends (as `ndimage.gaussian_filter` and
    a blurred image do at the image border; inside the image the crop's ends hold no coverage);
    identity for sigma 0."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    i = np.arange(n, dtype=np.float32)
    k = np.exp(-(np.arange(-n, n + 1) ** 2) / (2 * sigma * sigma)).sum()
    g = np.zeros((n, n), np.float32)
    for j in (i, -1 - i, 2 * n - 1 - i):  # each input pixel and its mirror images
        g += np.exp(-((i[:, None] - j[None, :]) ** 2) / (2 * sigma * sigma))
    return (g / k).astype(np.float32)


def _template(hyp: tuple, gx: np.ndarray, gy: np.ndarray, h: int, w: int, n: int) -> np.ndarray:
    """Coverage [h, w] of one hypothesis (shape, striped, e, cx, cy, phase), box-filtered."""
    shape, striped, e, cx, cy, phase = hyp
    t = shape_mask(shape, gx, gy, cx, cy, e).astype(np.float32)
    if striped:
        t = np.where(stripe_dark(gx, cx, phase), t * STRIPE_DARK, t)
    return t.reshape(h, n, w, n).mean(axis=(1, 3))


def _fit_shape(
    alpha: np.ndarray,
    peaks: tuple[float, float],
    box: tuple[int, int],
    res: int,
    pre_blur: float,
    weight: np.ndarray | None = None,
) -> tuple[str, float, tuple, float, float]:
    """Analysis by synthesis: which shape and texture, rendered and blurred, explain the coverage?

    `alpha` is the object's coverage in a crop at `box` = (x0, y0), already blurred by `pre_blur`
    px. Stage 1: each hypothesis takes its extent from the area (sum of alpha over the peak
    coverage of its texture, times factors absorbing error in the peak) and its centre from the
    centroid; it is rendered (solid, or striped at four phases), blurred by candidate widths,
    scaled by least squares and scored by squared error. Stage 2 refines centre and extent of the
    two best shapes of each texture. Returns (shape, fit, extent / side, stripe evidence = best
    striped fit minus best solid fit). `weight` (0 or 1 per pixel) leaves pixels out of the fit
    (the holes that contained objects fill). Returns (shape, fit, winning hypothesis
    (shape, striped, extent, cx, cy, phase), stripe evidence = best striped fit minus best solid
    fit, structured residual of the winner).
    """
    wgt = np.ones_like(alpha, dtype=np.float32) if weight is None else weight.astype(np.float32)
    x0, y0 = box
    h, w = alpha.shape
    ys, xs = np.indices(alpha.shape)
    total = max(float(alpha.sum()), 1e-6)
    # centre from the centroid of the coverage with dark stripes closed along rows (stripes
    # would pull the centroid towards the brighter side)
    widen = int(np.ceil(STRIPE_PERIOD * res / 4))
    closed = ndimage.grey_closing(alpha, size=(1, 2 * widen + 1))
    if float(closed.sum()) <= 1e-9:  # no coverage left (everything left out of the fit): the crop's centre
        closed = np.ones_like(alpha)
    mx = (float((closed * (xs + 0.5)).sum()) / float(closed.sum()) + x0) / res
    my = (float((closed * (ys + 0.5)).sum()) / float(closed.sum()) + y0) / res
    n = 4
    gx, gy = np.meshgrid((np.arange(w * n) + 0.5) / n, (np.arange(h * n) + 0.5) / n)
    gx, gy = (gx + x0) / res, (gy + y0) / res
    energy = max(float((wgt * alpha**2).sum()), 1e-9)
    s = res / 32
    blurs = [
        (_blur_matrix(h, sg), _blur_matrix(w, sg))
        for sg in (np.hypot(b * s, pre_blur) for b in (0.0, 0.8, 1.4))
    ]
    target = alpha.astype(np.float32) * wgt

    def score(hyps: list[tuple]) -> np.ndarray:
        """hyps: (shape, striped, e, cx, cy, phase) -> best fit over blurs, [len(hyps)]."""
        stack = []
        for shape, striped, e, cx, cy, phase in hyps:
            t = shape_mask(shape, gx, gy, cx, cy, e).astype(np.float32)
            if striped:
                dark = stripe_dark(gx, cx, phase)
                t = np.where(dark, t * STRIPE_DARK, t)
            stack.append(t)
        t0 = np.stack(stack).reshape(len(hyps), h, n, w, n).mean(axis=(2, 4))  # [K, h, w]
        best = np.full(len(hyps), -np.inf, np.float32)
        for by, bx in blurs:
            t = (by @ t0 @ bx.T) * wgt  # blur columns and rows: [h,h] @ [K,h,w] @ [w,w]
            tt = (t * t).sum(axis=(1, 2))
            beta = (t * target).sum(axis=(1, 2)) / np.maximum(tt, 1e-9)
            err = ((target - beta[:, None, None] * t) ** 2).sum(axis=(1, 2))
            best = np.maximum(best, np.where(tt > 0, 1.0 - err / energy, -np.inf))
        return best

    # stage 1: coarse hypotheses at the centroid
    hyps = []
    for shape in SHAPES:
        for striped, peak in ((False, peaks[0]), (True, peaks[1] * (1 + STRIPE_DARK) / 2)):
            area = max(total / max(peak, 1e-3), 1.0)
            for mult in (0.9, 1.0, 1.1):
                e = float(np.sqrt(area / AREA[shape])) * mult / res
                cy = my - CENTROID_DY.get(shape, 0.0) * e
                for phase in (0.0, 0.25, 0.5, 0.75) if striped else (0.0,):
                    hyps.append((shape, striped, e, mx, cy, phase))
    fits = score(hyps)
    best: dict[tuple[str, bool], tuple[float, tuple]] = {}
    for hyp, fit in zip(hyps, fits, strict=True):
        if fit > best.get(hyp[:2], (-np.inf,))[0]:
            best[hyp[:2]] = (float(fit), hyp)
    # stage 2: refine centre and extent of the three best (shape, texture) pairs
    d = 0.4 / res
    ranked = sorted(best.values(), key=lambda v: -v[0])
    top = [v for v in ranked if not v[1][1]][:2] + [v for v in ranked if v[1][1]][:2]
    hyps = [
        (sh, st, e * m, cx + dx, cy + dy, ph)
        for _, (sh, st, e, cx, cy, ph) in top
        for m in (0.95, 1.0, 1.05)
        for dx in (-d, 0.0, d)
        for dy in (-d, 0.0, d)
    ]
    for hyp, fit in zip(hyps, score(hyps), strict=True):
        if fit > best[hyp[:2]][0]:
            best[hyp[:2]] = (float(fit), hyp)
    (shape, _), (fit, hyp) = max(best.items(), key=lambda kv: kv[1][0])
    solid = max(v[0] for (_, st), v in best.items() if not st)
    stripes = max(v[0] for (_, st), v in best.items() if st)
    # structured residual of the winner: the error left after a low-pass (pixel noise averages
    # out, a corner or an edge that no grammar shape has does not), relative to the coverage
    t0 = _template(hyp, gx, gy, h, w, n)
    if hyp[1]:  # striped: the stripes' phase is corrected to first order as well
        dp = 0.05
        plus = _template((*hyp[:5], hyp[5] + dp), gx, gy, h, w, n)
        minus = _template((*hyp[:5], hyp[5] - dp), gx, gy, h, w, n)
        dphase = (plus - minus) / (2 * dp)
    worst = 0.0
    rbest = np.inf
    for by, bx in blurs:
        t = by @ t0 @ bx.T
        # first-order corrections (sub-pixel shift and per-axis scale of the template) are
        # projected out with the template itself: what stays is a shape the grammar lacks
        ty, tx = np.gradient(t)
        cx_px, cy_px = hyp[3] * res - x0 - 0.5, hyp[4] * res - y0 - 0.5
        u, v = xs - cx_px, ys - cy_px
        cols = [t, tx, ty, u * tx, v * ty, u * ty - v * tx]  # + shift, per-axis scale, rotation
        if hyp[1]:
            cols.append(by @ dphase @ bx.T)
        basis = (np.stack(cols, -1) * wgt[..., None]).reshape(-1, len(cols))
        coef, *_ = np.linalg.lstsq(basis, target.reshape(-1), rcond=None)
        resid = (target - (basis @ coef).reshape(h, w)) * wgt
        r = float((resid**2).sum())
        if r < rbest:
            rbest = r
            beta = max(float(coef[0]), 1e-3)
            low = ndimage.gaussian_filter(resid, STRUCT_BLUR * s) / beta
            worst = float(np.abs(low).max())
    return shape, fit, hyp, stripes - solid, worst


def _stripe_amplitude(value: np.ndarray, mask: np.ndarray, period_px: float) -> float:
    """Relative amplitude of the stripe frequency along rows (each row's mean removed)."""
    inner = mask & ndimage.binary_erosion(mask, structure=np.ones((1, 3), bool))  # drop run ends
    ys, xs = np.nonzero(inner)
    if len(xs) < 4:
        return 0.0
    v = value[ys, xs].astype(np.float64)
    mean_v = max(float(v.mean()), 1e-3)
    rows, inv = np.unique(ys, return_inverse=True)
    v = v - (np.bincount(inv, v) / np.bincount(inv))[inv]
    w = 2 * np.pi / period_px
    design = np.stack([np.cos(w * xs), np.sin(w * xs)], 1)
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return float(np.hypot(coef[0], coef[1]) / mean_v)


def _unmix(pixels: np.ndarray, color: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """Coverage of `color` in each pixel [h,w,3], each pixel read as a blend of `color` with the
    one of `others` (background, neighbouring objects) that explains it best."""
    best_a = np.zeros(pixels.shape[:2], np.float32)
    best_r = np.full(pixels.shape[:2], np.inf, np.float32)
    for o in others:
        d = color - o
        a = np.clip(((pixels - o) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)
        r = ((pixels - o - a[..., None] * d) ** 2).sum(-1)
        better = r < best_r
        best_a[better], best_r[better] = a[better], r[better]
    return best_a


def find_objects(image) -> list[Component]:
    """Segment the image into coloured objects with their measured attributes."""
    img = as_image(image)
    res = img.shape[0]
    s = res / 32
    smooth = ndimage.gaussian_filter(img, sigma=(SMOOTH * s, SMOOTH * s, 0), mode="nearest")
    chroma, cls = _hue_classes(smooth)
    fg = chroma > FG_CHROMA
    # 0. the ground: objects sit on a dark grey background; an image without one holds no objects
    ground = _background(img, smooth, fg)
    if ground is None:
        return []
    background, is_bg, noise = ground
    # 1. mode filter of the colour classes (weighted by chroma) removes speckle and blend seams
    votes = np.stack([(cls == i) * chroma * fg for i in range(len(_COLOR_NAMES))], -1)
    cls = ndimage.uniform_filter(votes, size=(3, 3, 1), mode="constant").argmax(-1)
    value = img.max(-1)
    widen = int(np.ceil(STRIPE_PERIOD * res / 4))
    eight = np.ones((3, 3), bool)
    # 2. coarse objects: connected pieces of one colour class, with their core colour
    coarse = []
    for ci in range(len(_COLOR_NAMES)):
        labels, n = ndimage.label(fg & (cls == ci), structure=eight)
        for lab in range(1, n + 1):
            comp = labels == lab
            if comp.sum() < MIN_AREA * s * s or not ndimage.binary_erosion(comp).any():
                continue  # speckle or a thin blend seam between two objects
            core = comp & (chroma >= 0.8 * float(chroma[comp].max()))
            bright = core & (value >= np.percentile(value[core], 50))
            coarse.append((ci, comp, np.median(img[bright], axis=0)))
    # a piece whose colour is a blend of two pieces it touches is the blurred seam between them
    seams = [k for k in range(len(coarse)) if _is_seam(k, coarse, s)]
    coarse = [c for k, c in enumerate(coarse) if k not in seams]
    found: list[Component] = []
    for k, (ci, comp, color) in enumerate(coarse):
        # other objects of this colour class are no part of this one's coverage
        same = np.zeros_like(comp)
        for j, (cj, other, _) in enumerate(coarse):
            if j != k and cj == ci:
                same |= other
        # 3. refine at half of this object's peak chroma (the edge stays put under blur), closing
        #    the dark stripes along rows; objects of one colour that blur merged come apart here
        peak = float(np.percentile(chroma[comp], 90))
        near = ndimage.binary_dilation(comp, iterations=max(1, int(s)))
        half = unbridged = near & (chroma >= REFINE * peak) & (cls == ci)
        half = np.pad(half, widen)
        half = ndimage.binary_closing(half, structure=np.ones((1, 2 * widen + 1), bool))
        # bridge only pixels that carry colour themselves (a dark stripe), never a gap between objects
        half = half[widen:-widen, widen:-widen] & near & (chroma >= BRIDGE * peak)
        labels, n = ndimage.label(half, structure=eight)
        pieces = [labels == j for j in range(1, n + 1)]
        pieces = [m for m in pieces if m.sum() >= MIN_AREA * s * s and ndimage.binary_erosion(m).any()]
        neighbours = [(cm, c) for cj, cm, c in coarse if cj != ci]  # other colours only

        def measure(
            mask: np.ndarray, others: list[np.ndarray], ci=ci, color=color, nb=neighbours, same=same
        ) -> Component:
            rest = same.copy()
            for other in others:
                rest |= other
            return _measure(img, chroma, value, mask, rest, ci, color, background, nb)

        for k, mask in enumerate(pieces):
            others = pieces[:k] + pieces[k + 1 :]
            merged = measure(mask, others)
            # 4. a piece that falls apart without the bridges is one striped object or several
            #    objects a few px apart: unless the parts are stripe-thin, the better fit decides
            labels, n = ndimage.label(unbridged & mask, structure=eight)
            parts = [labels == j for j in range(1, n + 1)]
            parts = [m for m in parts if m.sum() >= MIN_AREA * s * s and ndimage.binary_erosion(m).any()]
            thin = [np.ptp(np.nonzero(m)[1]) + 1 <= STRIPE_PERIOD * res / 2 + 1 for m in parts]
            if len(parts) < 2 or all(thin):
                found.append(merged)
                continue
            split = [measure(m, others + parts[:j] + parts[j + 1 :]) for j, m in enumerate(parts)]
            area = np.array([c.area for c in split], np.float32)
            split_fit = float((np.array([c.shape_fit for c in split]) * area).sum() / area.sum())
            # (a whole that no grammar shape explains falls apart into parts that are objects)
            gain = 0.0 if merged.shape_fit < MIN_SHAPE_FIT else SPLIT_GAIN
            if min(c.shape_fit for c in split) >= MIN_SHAPE_FIT and split_fit > merged.shape_fit + gain:
                found.extend(split)
            else:
                found.append(merged)
    # 5. objects must be objects: a grammar shape explains the pixels (up to the image's noise) ...
    found = [
        c
        for c in found
        if c.shape_fit >= MIN_SHAPE_FIT
        and c.struct <= MAX_STRUCT[c.soft < SOFT_MIN] + STRUCT_NOISE * _alpha_noise(c, noise)
    ]
    # ... and the object sits on visible background (or on / in another object)
    found = _on_ground(found, is_bg)
    found.sort(key=lambda c: -c.area)
    return found


def _background(
    img: np.ndarray, smooth: np.ndarray, fg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(colour, background mask [H,W], pixel noise) of the image's ground, or None without one.

    The ground is dark and grey: pixels of low chroma and value, close to their median colour. If
    fewer than `BG_MIN_FRACTION` of the pixels are ground (a uniform colour, colour mush, noise),
    the image holds no objects."""
    low = ~fg & (smooth.max(-1) <= BG_MAX_VALUE)
    if low.mean() < BG_MIN_FRACTION:
        return None
    color = np.median(img[low], axis=0)
    is_bg = low & (np.abs(smooth - color).max(-1) <= BG_TOL)
    if is_bg.mean() < BG_MIN_FRACTION:
        return None
    inner = ndimage.binary_erosion(is_bg, iterations=1)
    vals = img[inner] if inner.sum() >= 16 else img[is_bg]
    noise = float(np.median(np.abs(vals - np.median(vals, axis=0)))) * 1.4826
    return color.astype(np.float32), low, noise


def _alpha_noise(c: Component, noise: float) -> float:
    """Pixel noise expressed in coverage units of this object's colour."""
    return noise / max(float(np.abs(c.core - c.ground).max()), 0.1)


def _on_ground(found: list[Component], is_bg: np.ndarray) -> list[Component]:
    """Keep objects whose surroundings are ground, the image border or accepted objects, and whose
    holes hold other objects; accepted objects support others (a container, a base)."""
    if not found:
        return found
    res = is_bg.shape[0]
    s = res / 32
    r1, r2 = max(1, round(RING[0] * s)), max(1, round(RING[1] * s))
    pad = r1 + r2 + 1
    grown = [ndimage.binary_dilation(c.filled, iterations=1) for c in found]
    rings = []
    for c in found:
        f = np.pad(c.filled, pad)
        inner = ndimage.binary_dilation(f, iterations=r1)
        rings.append(ndimage.binary_dilation(inner, iterations=r2) & ~inner)
    holes_ok = []
    for k, c in enumerate(found):
        holes = c.filled & ~ndimage.binary_dilation(c.mask, iterations=max(1, int(s)))
        others = np.zeros_like(is_bg)
        for j, o in enumerate(found):
            if j != k:
                others |= o.mask
        holes_ok.append(holes.sum() <= HOLE_MAX * s * s or (holes & others).sum() >= 0.5 * holes.sum())
    accepted = [False] * len(found)
    support = np.pad(is_bg, pad, constant_values=True)
    changed = True
    while changed:
        changed = False
        for k, c in enumerate(found):
            if accepted[k] or not holes_ok[k]:
                continue
            ring = rings[k]
            c.support = float((support & ring).sum() / max(1, ring.sum()))
            if c.support >= SUPPORT_MIN:
                accepted[k] = changed = True
                support |= np.pad(grown[k], pad)
    return [c for c, ok in zip(found, accepted, strict=True) if ok]


def _is_seam(k: int, coarse: list, s: float, tol: float = 0.12) -> bool:
    _, comp, color = coarse[k]
    grown = ndimage.binary_dilation(comp, iterations=max(2, int(2 * s)))
    touching = [c for j, (_, cm, c) in enumerate(coarse) if j != k and (cm & grown).any()]
    for a in range(len(touching)):
        for b in range(a + 1, len(touching)):
            d = touching[b] - touching[a]
            t = float(np.clip((color - touching[a]) @ d / max(float(d @ d), 1e-6), 0.0, 1.0))
            if 0.1 < t < 0.9 and np.linalg.norm(touching[a] + t * d - color) < tol:
                return True
    return False


def _measure(
    img: np.ndarray,
    chroma: np.ndarray,
    value: np.ndarray,
    mask: np.ndarray,
    rest: np.ndarray,
    ci: int,
    color: np.ndarray,
    background: np.ndarray,
    neighbours: list[tuple[np.ndarray, np.ndarray]],
) -> Component:
    """Shape, extent and texture of the object `mask` of colour class `ci` (core colour `color`).

    `rest` holds other objects of the same colour; `neighbours` (mask, core colour) the objects of
    other colours, which it may blend with where they come near."""
    res = img.shape[0]
    s = res / 32
    filled = ndimage.binary_fill_holes(mask)
    ys, xs = np.nonzero(filled)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    # 4. coverage of this object's colour in a crop, unmixed from background and neighbours
    m = 5 * max(1, int(s))
    x0, x1 = max(0, bbox[0] - m), min(res, bbox[2] + 1 + m)
    y0, y1 = max(0, bbox[1] - m), min(res, bbox[3] + 1 + m)
    crop = (slice(y0, y1), slice(x0, x1))
    others = [background] + [c * f for cm, c in neighbours if cm[crop].any() for f in (1.0, STRIPE_DARK)]
    region = (ndimage.binary_dilation(filled, iterations=4 * max(1, int(s))) & ~rest)[crop]
    alpha = np.where(region, _unmix(img[crop], color, others), 0.0)
    # holes hold contained objects: left out of the fit, their blended rims included
    holes = ndimage.binary_dilation(filled & ~mask, iterations=max(1, int(s))) & filled
    core = mask[crop] & (chroma[crop] >= 0.8 * float(chroma[mask].max()))
    peaks = (
        (float(np.percentile(alpha[core], 50)), float(np.percentile(alpha[core], 85)))
        if core.any()
        else (1.0, 1.0)
    )
    band = (ndimage.binary_dilation(mask, iterations=1) & ~ndimage.binary_erosion(mask, iterations=1))[crop]
    raw_peak = max(peaks[0], 1e-3)
    soft = (
        float(((alpha[band] > 0.2 * raw_peak) & (alpha[band] < 0.8 * raw_peak)).mean()) if band.any() else 1.0
    )
    alpha = ndimage.gaussian_filter(alpha, PRE_BLUR * s)  # denoise; templates get the same
    # ... and so are other colours' pixels within the object's box (what it holds or what covers it)
    box = np.zeros_like(mask)
    box[bbox[1] : bbox[3] + 1, bbox[0] : bbox[2] + 1] = True
    for cm, _ in neighbours:
        if (cm & box).any():
            holes |= ndimage.binary_dilation(cm, iterations=1) & box & ~mask
    weight = ~holes[crop] if holes.any() else None
    shape, fit, hyp, evidence, struct = _fit_shape(alpha, peaks, (x0, y0), res, PRE_BLUR * s, weight)
    e = hyp[2]
    stripe = evidence / 0.02 + _stripe_amplitude(value, mask, STRIPE_PERIOD * res) / 0.05
    return Component(
        color=_COLOR_NAMES[ci],
        mask=mask,
        filled=filled,
        bbox=bbox,
        shape=shape,
        shape_fit=fit,
        extent=e,
        stripe=stripe,
        res=res,
        struct=struct,
        soft=soft,
        fit_center=(hyp[3], hyp[4]),
        core=np.asarray(color, np.float32),
        ground=np.asarray(background, np.float32),
    )


# --------------------------------------------------------------------------------------------
# 2. clauses


def _attr_clauses(e: Entity, c: Component | None) -> list[tuple[str, bool]]:
    name = e.phrase()
    out = [(f"{name}: is a {e.shape}", c is not None and c.shape == e.shape)]
    for attr in ("color", "size", "texture"):
        want = getattr(e, attr)
        if want is not None:
            out.append((f"{name}: {attr} {want}", c is not None and getattr(c, attr) == want))
    return out


def _matches(e: Entity, c: Component) -> bool:
    return all(ok for _, ok in _attr_clauses(e, c))


def _distance_px(a: Component, b: Component) -> float:
    """Smallest distance between the two masks, in pixels at 32 px resolution."""
    dist = ndimage.distance_transform_edt(~b.mask)
    return float(dist[a.mask].min()) * 32 / a.res


def _fit_gap_px(a: Component, b: Component, n: int = 4) -> float:
    """Gap between the two fitted outlines, in pixels at 32 px resolution (0 when they overlap)."""
    res = a.res
    x0 = max(0, min(a.bbox[0], b.bbox[0]) - 3)
    y0 = max(0, min(a.bbox[1], b.bbox[1]) - 3)
    x1 = min(res, max(a.bbox[2], b.bbox[2]) + 4)
    y1 = min(res, max(a.bbox[3], b.bbox[3]) + 4)
    gx, gy = np.meshgrid(
        (np.arange(x0 * n, x1 * n) + 0.5) / (n * res), (np.arange(y0 * n, y1 * n) + 0.5) / (n * res)
    )
    ma = shape_mask(a.shape, gx, gy, *a.fit_center, a.extent)
    mb = shape_mask(b.shape, gx, gy, *b.fit_center, b.extent)
    if not ma.any() or not mb.any():
        return np.inf
    dist = ndimage.distance_transform_edt(~mb)
    return max(0.0, float(dist[ma].min()) - 1.0) / n * 32 / res


def _fit_bbox(c: Component) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the fitted shape in pixels (unit coordinates x resolution)."""
    (cx, cy), e = c.fit_center, c.extent
    h = e / 2 if c.shape == "rectangle" else e
    return ((cx - e / 2) * c.res, (cy - h / 2) * c.res, (cx + e / 2) * c.res, (cy + h / 2) * c.res)


def _inside_fraction(a: Component, b: Component) -> float:
    """Fraction of `a` inside `b`: inside b's filled mask, or inside b's fitted shape (a rim
    blended with what it holds can leave b's mask open)."""
    ys, xs = np.nonzero(a.mask)
    in_fit = shape_mask(b.shape, (xs + 0.5) / b.res, (ys + 0.5) / b.res, *b.fit_center, b.extent)
    in_mask = b.filled[ys, xs]
    return float(max(in_mask.mean(), in_fit.mean())) if len(xs) else 0.0


def relation_holds(kind: str, a: Component, b: Component) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = bx - ax, by - ay
    if kind == "left of":
        return dx > 0 and dx >= abs(dy)
    if kind == "right of":
        return dx < 0 and -dx >= abs(dy)
    if kind == "above":
        return dy > 0 and dy >= abs(dx)
    if kind == "below":
        return dy < 0 and -dy >= abs(dx)
    if kind == "next to":  # the smaller of the masks' and the fitted shapes' box gaps
        a0, b0 = a.bbox, b.bbox
        gap = max(0, max(a0[0], b0[0]) - min(a0[2], b0[2]) - 1, max(a0[1], b0[1]) - min(a0[3], b0[3]) - 1)
        a1, b1 = _fit_bbox(a), _fit_bbox(b)
        fit_gap = max(0.0, max(a1[0], b1[0]) - min(a1[2], b1[2]), max(a1[1], b1[1]) - min(a1[3], b1[3]))
        return min(gap, fit_gap) / a.res <= NEAR_MAX
    if kind == "inside":
        return _inside_fraction(a, b) >= INSIDE_MIN
    inside = _inside_fraction(a, b) >= INSIDE_MIN or _inside_fraction(b, a) >= INSIDE_MIN
    # touching: the masks' pixel centres, or the fitted outlines, are at most about a pixel apart
    # (either reading can overstate the gap: a dark stripe at the edge leaves the mask, a shape
    # drawn off the grammar's proportions leaves its fit)
    close = _distance_px(a, b) <= TOUCH_MAX or _fit_gap_px(a, b) <= FIT_TOUCH_MAX
    touching = close and not inside
    if kind == "touching":
        return touching
    if kind == "on top of":
        half = (b.bbox[2] - b.bbox[0] + 1) / 2 / b.res
        return touching and dy > 0 and a.bbox[3] <= (b.bbox[1] + b.bbox[3]) / 2 and abs(dx) <= half
    raise KeyError(kind)


def check(scene: Scene, objects: list[Component], prompt: str = "", max_candidates: int = 6) -> Verdict:
    """Best assignment of single entities to objects; counted entities are counted.

    Every object is seen (no cap on their number): counted entities count all of them, and each
    single entity chooses among the `max_candidates` objects that satisfy most of its attribute
    clauses (all of them when there are no more), so distractors cannot crowd out a target."""
    single = [i for i, e in enumerate(scene.entities) if not e.numbered]
    counted = [i for i, e in enumerate(scene.entities) if e.numbered]
    verdict = Verdict(prompt or "")
    for i in counted:
        e = scene.entities[i]
        n = sum(_matches(e, c) for c in objects)
        verdict.clauses.append((f"{e.phrase()}: count {e.count} (found {n})", n == e.count))
    options: list[list[int | None]] = []
    for i in single:
        hits = [sum(ok for _, ok in _attr_clauses(scene.entities[i], c)) for c in objects]
        order = sorted(range(len(objects)), key=lambda j: -hits[j])  # stable: larger objects first
        options.append([*order[:max_candidates], None])
    best: list[tuple[str, bool]] | None = None
    judged: dict[tuple[str, int, int], bool] = {}
    for choice in itertools.product(*options):
        taken = [j for j in choice if j is not None]
        if len(taken) != len(set(taken)):
            continue  # one object per entity
        assign = {i: (objects[j] if j is not None else None) for i, j in zip(single, choice, strict=True)}
        clauses = [cl for i in single for cl in _attr_clauses(scene.entities[i], assign[i])]
        for r in scene.relations:
            a, b = assign.get(r.subject), assign.get(r.object)
            ok = False
            if a is not None and b is not None:  # each (relation, object pair) is judged once
                key = (r.kind, id(a), id(b))
                if key not in judged:
                    judged[key] = relation_holds(r.kind, a, b)
                ok = judged[key]
            desc = f"{scene.entities[r.subject].phrase()} {r.kind} {scene.entities[r.object].phrase()}"
            clauses.append((desc, ok))
        if best is None or sum(ok for _, ok in clauses) > sum(ok for _, ok in best):
            best = clauses
            if all(ok for _, ok in best):
                break
    verdict.clauses.extend(best or [])
    return verdict


def evaluate(image, prompt: str) -> Verdict:
    """Score one image against its prompt (raises `PromptError` for prompts outside the grammar)."""
    scene = parse_prompt(prompt)
    return check(scene, find_objects(image), prompt)

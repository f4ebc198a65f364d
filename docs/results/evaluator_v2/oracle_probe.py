"""Is a shape still there after the perturbation? An ideal observer's bound at 32 px.

    PYTHONPATH=src python docs/results/evaluator_v2/oracle_probe.py --n 25 --seed 3

For single objects of the second renderer (`tests/world/second_renderer.py`), the noise-free
perturbed image T (the render blurred with sigma 1 px, as `perturb` does) is compared with the
closest image B of another grammar shape: same colour and ground, centre, extent and height
stretch (0.5-2) free, an amplitude scale 0.5-1.5, fitted by Nelder-Mead (from three starting
stretches). With the perturbation's Gaussian noise (sigma 0.1 per channel), d' = |T - B| / 0.1, and
an observer that knows both images errs with probability Phi(-d'/2). A small d' means the
perturbation destroyed the difference (a limit of 32 px); a large one means the information is
there and an evaluator that misreads the shape could do better. Shifts, colour jitter and the
other shapes' proportions are not modelled: the bound is optimistic for the observer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.world import second_renderer as sr  # noqa: E402

from compalign.world.grammar import SIZES  # noqa: E402
from compalign.world.render import shape_mask  # noqa: E402

RES, SUB, NOISE, BLUR = 32, 4, 0.1, 1.0
CASES = (  # (true shape, size, drawn 1 px larger, alternatives)
    ("cross", "small", 1, ("circle", "square")),
    ("cross", "small", 0, ("circle", "square")),
    ("square", "small", 1, ("circle",)),
    ("square", "small", 0, ("circle",)),
    ("circle", "small", 1, ("square",)),
    ("triangle", "small", 1, ("circle",)),
    ("cross", "medium", 1, ("circle", "square")),
)
_g = (np.arange(RES * SUB) + 0.5) / (RES * SUB)
GX, GY = np.meshgrid(_g, _g)


def coverage(shape: str, cx: float, cy: float, e: float, stretch: float) -> np.ndarray:
    """Box-filtered coverage of a grammar shape, its height stretched about its centre."""
    m = shape_mask(shape, GX, cy + (GY - cy) / stretch, cx, cy, e).astype(np.float32)
    return m.reshape(RES, SUB, RES, SUB).mean((1, 3))


def closest(target: np.ndarray, rgb: np.ndarray, ground: np.ndarray, shape: str, box: tuple) -> float:
    """Smallest |target - B| over images B of `shape` (blurred like the target)."""
    x0, y0, x1, y1 = box

    def loss(p: np.ndarray) -> float:
        cx, cy, e, stretch = p
        if e <= 0.02 or not 0.5 <= stretch <= 2.0:
            return 1e9
        c = ndimage.gaussian_filter(coverage(shape, cx, cy, e, stretch), BLUR)
        d = (c[..., None] * (rgb - ground)).ravel()
        r = (target - ground).ravel()
        k = float(np.clip((d @ r) / max(float(d @ d), 1e-9), 0.5, 1.5))
        return float(((r - k * d) ** 2).sum())

    best = np.inf
    for stretch in (0.9, 1.0, 1.1):
        p0 = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, stretch]
        opts = {"xatol": 1e-4, "fatol": 1e-6, "maxiter": 400}
        best = min(best, optimize.minimize(loss, p0, method="Nelder-Mead", options=opts).fun)
    return float(np.sqrt(best))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=25, help="objects per case")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "magenta"]
    print("| object (32 px, blur 1 px) | vs | d' median | d' min | ideal observer's error: mean / worst |")
    print("|---|---|---|---|---|")
    for shape, size, grow, alts in CASES:
        ds = []
        for _ in range(args.n):
            extent = SIZES[size] * rng.uniform(*sr.SIZE_JITTER)
            o = sr.make_object(shape, extent, rng, color=str(rng.choice(colors)))
            o = o.moved(*rng.uniform(0.35, 0.65, 2))
            ground = np.array(sr.random_background(rng), np.float32)
            style = sr.STYLES[int(rng.integers(len(sr.STYLES)))]
            image = sr.draw([o], RES, style, tuple(ground), grow=grow)
            target = ndimage.gaussian_filter(image, (BLUR, BLUR, 0))
            rgb = np.array(o.rgb, np.float32)
            ds.append(min(closest(target, rgb, ground, a, o.bbox) for a in alts) / NOISE)
        d = np.array(ds)
        err = norm.cdf(-d / 2)
        name = f"{size} {shape}" + (", 1 px larger" if grow else "")
        print(
            f"| {name} | {' / '.join(alts)} | {np.median(d):.1f} | {d.min():.1f} "
            f"| {err.mean():.2%} / {err.max():.1%} |"
        )


if __name__ == "__main__":
    main()

"""Imperfect and wrong images, to measure the evaluator.

- `perturb`: the same content, degraded like a small generator's output (blur, noise, jitter).
- `corrupt`: a different scene that contradicts the prompt (colours swapped, relation reversed,
  count off by one, shape swapped); `truth` checks, from the exact geometry, that it really does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .evaluator import STRIPE_MIN, Component, check
from .grammar import COLORS, SHAPES, Entity, Scene
from .layout import LayoutError, LayoutRelation, sample_layout
from .render import BACKGROUND, SUPERSAMPLE, Placed, object_mask

CORRUPTIONS = ("swap_colors", "reverse_relation", "count_off_by_one", "swap_shapes")
Spec = tuple[tuple[Entity, ...], list[LayoutRelation]]


def perturb(
    image: np.ndarray,
    rng: np.random.Generator,
    noise: float = 0.1,
    blur: float = 1.0,
    shift: int = 1,
    gain: float = 0.07,
    brightness: float = 0.1,
) -> np.ndarray:
    """Shift by up to `shift` px, Gaussian blur (sigma `blur` px), colour jitter, Gaussian noise."""
    img = image.astype(np.float32)
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    img = ndimage.shift(img, (dy, dx, 0), order=0, mode="constant", cval=0.0)
    if dy or dx:  # fill the uncovered border with background
        pad = np.ones(img.shape[:2], bool)
        pad = ndimage.shift(pad, (dy, dx), order=0, mode="constant", cval=False)
        img[~pad] = BACKGROUND
    if blur:
        img = ndimage.gaussian_filter(img, sigma=(blur, blur, 0))
    img = img * rng.uniform(1 - brightness, 1 + brightness) * rng.uniform(1 - gain, 1 + gain, size=3)
    img = img + rng.normal(0.0, noise, size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _spec(scene: Scene) -> Spec:
    return scene.entities, [(r.kind, r.subject, r.object) for r in scene.relations]


def corrupt(scene: Scene, kind: str, rng: np.random.Generator) -> Spec | None:
    """A scene spec that contradicts `scene` in one way, or None if `kind` does not apply."""
    entities, relations = list(scene.entities), [(r.kind, r.subject, r.object) for r in scene.relations]
    if kind == "swap_colors":
        colored = [i for i, e in enumerate(entities) if e.color]
        pairs = [(i, j) for i in colored for j in colored if i < j and entities[i].color != entities[j].color]
        if pairs:
            i, j = pairs[rng.integers(len(pairs))]
            ci, cj = entities[i].color, entities[j].color
            entities[i], entities[j] = entities[i].with_(color=cj), entities[j].with_(color=ci)
        elif colored:
            i = colored[rng.integers(len(colored))]
            used = {e.color for e in entities}
            entities[i] = entities[i].with_(color=str(rng.choice([c for c in COLORS if c not in used])))
        else:
            return None
    elif kind == "reverse_relation":
        if not relations:
            return None
        n = int(rng.integers(len(relations)))
        k, s, o = relations[n]
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        if k in flip:
            relations[n] = (flip[k], s, o)
        elif k == "next to":
            relations[n] = ("far", s, o)
        elif k == "on top of":
            relations[n] = ("on top of", o, s)
        else:  # inside, touching
            relations[n] = ("apart", s, o)
    elif kind == "count_off_by_one":
        counted = [i for i, e in enumerate(entities) if e.numbered]
        if not counted:
            return None
        i = counted[rng.integers(len(counted))]
        c = entities[i].count
        entities[i] = entities[i].with_(count=c + (1 if c == 1 or (c < 4 and rng.random() < 0.5) else -1))
    elif kind == "swap_shapes":
        pairs = [
            (i, j)
            for i in range(len(entities))
            for j in range(i + 1, len(entities))
            if entities[i].shape != entities[j].shape
        ]
        if pairs:
            i, j = pairs[rng.integers(len(pairs))]
            si, sj = entities[i].shape, entities[j].shape
            entities[i], entities[j] = entities[i].with_(shape=sj), entities[j].with_(shape=si)
        else:
            i = int(rng.integers(len(entities)))
            entities[i] = entities[i].with_(
                shape=str(rng.choice([s for s in SHAPES if s != entities[i].shape]))
            )
    else:
        raise KeyError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    return tuple(entities), relations


def components_from_layout(objects: list[Placed], res: int) -> list[Component]:
    """Exact objects of a layout (visible masks after drawing order), as the evaluator sees them."""
    s = SUPERSAMPLE
    owner = np.full((res * s, res * s), -1)
    for n, o in enumerate(objects):
        owner[object_mask(o, res, s)] = n
    comps = []
    for n, o in enumerate(objects):
        cov = (owner == n).reshape(res, s, res, s).mean(axis=(1, 3))
        mask = cov >= 0.5
        if not mask.any():
            continue
        filled = ndimage.binary_fill_holes(mask)
        ys, xs = np.nonzero(filled)
        comps.append(
            Component(
                color=o.color,
                mask=mask,
                filled=filled,
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                shape=o.shape,
                shape_fit=1.0,
                extent=o.extent,
                stripe=2 * STRIPE_MIN if o.texture == "striped" else 0.0,
                res=res,
                fit_center=(o.cx, o.cy),
            )
        )
    comps.sort(key=lambda c: -c.area)
    return comps


def truth(scene: Scene, objects: list[Placed], res: int = 32) -> bool:
    """Does a layout satisfy the scene? Judged on exact geometry, not on pixels."""
    return check(scene, components_from_layout(objects, res)).passed


def wrong_layout(scene: Scene, kind: str, rng: np.random.Generator, tries: int = 10) -> list[Placed] | None:
    """A layout of a corrupted scene that truly contradicts `scene`, or None if there is none."""
    for _ in range(tries):
        spec = corrupt(scene, kind, rng)
        if spec is None:
            return None
        try:
            objects = sample_layout(spec, rng, max_tries=20)
        except LayoutError:
            continue
        if not truth(scene, objects):
            return objects
    return None

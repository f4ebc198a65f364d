"""Layout sampler: a scene -> placed objects that satisfy every clause with a margin.

Rejection sampling in unit coordinates; one pixel (`PX`) is 1/32 of the side, so a layout valid
at 32 px is valid at any larger resolution. Relation kinds beyond the grammar ("far", "apart")
exist only to draw deliberately wrong scenes for evaluator tests.
"""

from __future__ import annotations

import math

import numpy as np

from .grammar import BASE_SHAPES, COLORS, CONTAINER_SHAPES, SIZES, Entity, Scene
from .render import Placed, grid, object_mask, shape_mask

PX = 1 / 32
SEPARATION = 3 * PX  # min bbox gap between objects that are not in a contact relation
NEAR_MAX = 0.17  # "next to": bbox gap in [SEPARATION, NEAR_MAX]
FAR_MIN = 0.32  # corruption of "next to"
APART_MIN = 8 * PX  # corruption of "touching"/"on top of"/"inside"
CONTACT = ("inside", "on top of", "touching")
LayoutRelation = tuple[str, int, int]  # (kind, subject entity, object entity)


class LayoutError(RuntimeError):
    """No layout satisfying the scene was found (e.g. too many large objects)."""


def bbox_gap(a: Placed, b: Placed) -> float:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return max(0.0, max(ax0, bx0) - min(ax1, bx1), max(ay0, by0) - min(ay1, by1))


def masks_overlap(a: Placed, b: Placed, res: int = 32, supersample: int = 4) -> bool:
    return bool((object_mask(a, res, supersample) & object_mask(b, res, supersample)).any())


def in_bounds(o: Placed, margin: float = PX) -> bool:
    x0, y0, x1, y1 = o.bbox
    return x0 >= margin and y0 >= margin and x1 <= 1 - margin and y1 <= 1 - margin


def contained(inner: Placed, outer: Placed, margin: float = 2.5 * PX) -> bool:
    """Every point of `inner` lies inside `outer` shrunk by `margin` on each side."""
    x, y = grid(32, 4)
    m = object_mask(inner, 32, 4)
    shrunk = shape_mask(outer.shape, x[m], y[m], outer.cx, outer.cy, outer.extent - 2 * margin)
    return bool(m.any() and shrunk.all())


def _spatial_ok(kind: str, a: Placed, b: Placed) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy  # vector from subject to object
    if kind == "left of":
        return dx >= 0.1 and dx >= 1.3 * abs(dy)
    if kind == "right of":
        return -dx >= 0.1 and -dx >= 1.3 * abs(dy)
    if kind == "above":
        return dy >= 0.1 and dy >= 1.3 * abs(dx)
    if kind == "below":
        return -dy >= 0.1 and -dy >= 1.3 * abs(dx)
    raise KeyError(kind)


def _touch_along(a: Placed, b: Placed, ux: float, uy: float, ox: float = 0.0) -> Placed | None:
    """Move `a` from b's centre (+ offset ox) along (ux, uy) until it just stops overlapping b."""
    lo, hi = 0.0, 1.0  # overlap at lo, free at hi
    for _ in range(12):
        mid = (lo + hi) / 2
        cand = a.moved(b.cx + ox + ux * mid, b.cy + uy * mid)
        if masks_overlap(cand, b):
            lo = mid
        else:
            hi = mid
    return a.moved(b.cx + ox + ux * hi, b.cy + uy * hi)


def _place_pair(kind: str, a: Placed, b: Placed, rng: np.random.Generator) -> Placed | None:
    """Position subject `a` relative to the already placed object `b`."""
    if kind == "inside":
        j = PX / 2
        return a.moved(b.cx + rng.uniform(-j, j), b.cy + rng.uniform(-j, j))
    if kind == "on top of":
        return _touch_along(a, b, 0.0, -1.0, ox=rng.uniform(-0.2, 0.2) * b.width)
    if kind == "touching":
        t = rng.uniform(0, 2 * math.pi)
        return _touch_along(a, b, math.cos(t), math.sin(t))
    if kind == "next to":
        t, target = rng.uniform(0, 2 * math.pi), rng.uniform(SEPARATION + PX / 2, NEAR_MAX - PX / 2)
        lo, hi = 0.0, 1.0
        for _ in range(14):  # bbox gap grows monotonically along the ray
            mid = (lo + hi) / 2
            if bbox_gap(a.moved(b.cx + math.cos(t) * mid, b.cy + math.sin(t) * mid), b) < target:
                lo = mid
            else:
                hi = mid
        return a.moved(b.cx + math.cos(t) * hi, b.cy + math.sin(t) * hi)
    if kind in _DIRECTIONS:  # offset along the relation's axis, within its cone
        ux, uy = _DIRECTIONS[kind]
        half = (a.width + b.width) / 2 if ux else (a.height + b.height) / 2
        lo = max(0.1, half + SEPARATION)
        if lo >= 0.9:
            return None
        along = rng.uniform(lo, 0.9)
        across = rng.uniform(-along / 1.3, along / 1.3)
        return a.moved(b.cx + ux * along - uy * across, b.cy + uy * along + ux * across)
    return _uniform(a, rng)  # far, apart: sample freely, checked afterwards


# unit vector from the relation object to its subject
_DIRECTIONS = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}


def _uniform(o: Placed, rng: np.random.Generator) -> Placed:
    w, h = o.width / 2 + PX, o.height / 2 + PX
    if w >= 0.5 or h >= 0.5:
        return o
    return o.moved(rng.uniform(w, 1 - w), rng.uniform(h, 1 - h))


def _off_centre(o: Placed) -> float:
    return abs(o.cx - 0.5) + abs(o.cy - 0.5)


def relation_holds(kind: str, a: Placed, b: Placed) -> bool:
    """The sampler's own (strict) check that placed objects satisfy a relation."""
    if kind in ("left of", "right of", "above", "below"):
        return _spatial_ok(kind, a, b) and bbox_gap(a, b) >= SEPARATION
    if kind == "next to":
        return SEPARATION <= bbox_gap(a, b) <= NEAR_MAX
    if kind == "far":
        return bbox_gap(a, b) >= FAR_MIN
    if kind == "apart":
        return bbox_gap(a, b) >= APART_MIN
    if kind == "inside":
        return b.shape in CONTAINER_SHAPES and contained(a, b)
    if kind == "on top of":
        return (
            b.shape in BASE_SHAPES
            and a.cy < b.cy
            and not masks_overlap(a, b)
            and abs(a.cx - b.cx) <= 0.25 * b.width
        )
    if kind == "touching":
        return not masks_overlap(a, b) and not contained(a, b) and not contained(b, a)
    raise KeyError(kind)


def _draw_attributes(
    entities: tuple[Entity, ...], relations: list[LayoutRelation], rng: np.random.Generator
) -> list[list[Placed]]:
    """Fill unspecified attributes; returns per entity its objects (positions not yet set)."""
    contact = {}
    for kind, s, o in relations:
        if kind in CONTACT:
            contact[s], contact[o] = o, s
    inside_subj = {s for k, s, _ in relations if k == "inside"}
    inside_obj = {o for k, _, o in relations if k == "inside"}
    colors = list(COLORS)
    chosen: dict[int, str] = {i: e.color for i, e in enumerate(entities) if e.color}
    out = []
    for i, e in enumerate(entities):
        objs = []
        for _ in range(e.count):
            color = e.color
            if color is None:
                avoid = {chosen.get(contact[i])} if i in contact else set()
                color = str(rng.choice([c for c in colors if c not in avoid]))
                chosen.setdefault(i, color)
            size = e.size
            if size is None:
                if i in inside_subj:
                    size = "medium" if e.texture == "striped" else "small"
                elif i in inside_obj:
                    size = "large"
                elif e.texture == "striped":  # stripes need room
                    size = str(rng.choice(["medium", "large"], p=[0.65, 0.35]))
                else:
                    size = str(rng.choice(list(SIZES), p=[0.4, 0.4, 0.2]))
            texture = e.texture or ("solid" if size == "small" or rng.random() < 0.75 else "striped")
            extent = SIZES[size] * rng.uniform(0.97, 1.03)
            objs.append(Placed(e.shape, color, extent, 0.5, 0.5, texture))
        out.append(objs)
    return out


def sample_layout(
    scene: Scene | tuple[tuple[Entity, ...], list[LayoutRelation]],
    rng: np.random.Generator,
    max_tries: int = 200,
    group_tries: int = 40,
) -> list[Placed]:
    """Sample placed objects (in drawing order) for a scene; raise `LayoutError` if none fits.

    Groups (a related pair, or the objects of one free entity) are placed one after another, each
    retried `group_tries` times against what is already placed; the whole scene `max_tries` times.
    """
    if isinstance(scene, Scene):
        entities = scene.entities
        relations = [(r.kind, r.subject, r.object) for r in scene.relations]
    else:
        entities, relations = scene
    rel_of = {s: (k, o) for k, s, o in relations}
    subjects = set(rel_of)
    contact_pairs = {frozenset((s, o)) for k, s, o in relations if k in CONTACT}

    def separated(i: int, p: Placed, placed: list[tuple[int, Placed]]) -> bool:
        return all(frozenset((i, j)) in contact_pairs or bbox_gap(p, q) >= SEPARATION for j, q in placed)

    for _ in range(max_tries):
        per_entity = _draw_attributes(entities, relations, rng)
        placed: list[tuple[int, Placed]] = []
        # groups (an entity with its relation subject) from the largest to the smallest ...
        area = [sum(o.width * o.height for o in objs) for objs in per_entity]
        for s, (_, o) in rel_of.items():
            area[o] += area[s]
        # ... or in a random order; and half the time the first group keeps to the edges
        order = sorted(range(len(entities)), key=lambda i: -area[i])
        if rng.random() < 0.5:
            order = [int(i) for i in rng.permutation(len(entities))]
        edge_first = rng.random() < 0.5
        for i in order:
            if i in subjects:
                continue  # placed together with its relation object
            partner = next((s for s, (_, o) in rel_of.items() if o == i), None)
            for _ in range(group_tries):
                group: list[tuple[int, Placed]] = []
                # 1. the entity's objects (or the relation's object) anywhere free
                for o in per_entity[i]:
                    draws = [_uniform(o, rng) for _ in range(20)]
                    if edge_first and not placed:  # the farthest from the centre of a few draws
                        draws = [max(draws[:6], key=_off_centre)]
                    p = next((d for d in draws if in_bounds(d) and separated(i, d, placed + group)), None)
                    if p is None:
                        break
                    group.append((i, p))
                else:
                    # 2. a relation subject is placed relative to its object, then checked
                    if partner is not None:
                        kind = rel_of[partner][0]
                        p = _place_pair(kind, per_entity[partner][0], group[0][1], rng)
                        if p is None or not in_bounds(p) or not separated(partner, p, placed):
                            continue
                        if not relation_holds(kind, p, group[0][1]):
                            continue
                        group.append((partner, p))
                    placed += group
                    break
            else:
                break  # this group found no room: start the scene again
        else:
            # drawing order: containers before their contents
            inner = {s for k, s, _ in relations if k == "inside"}
            return [p for i, p in sorted(placed, key=lambda t: (t[0] in inner, t[0]))]
    raise LayoutError(
        f"no layout found in {max_tries} tries for {len(entities)} entities "
        f"({sum(e.count for e in entities)} objects)"
    )

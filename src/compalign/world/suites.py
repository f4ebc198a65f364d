"""Prompt suites per category, deterministic and versioned, with disjoint train / held-out splits.

Whether a scene is held out is decided by a hash of its canonical key, for all categories at
once: a scene held out in one suite is never a training prompt of another, and generators may be
trained on any grammar scene for which `is_heldout` is False.

Categories mirror T2I-CompBench (color, shape, texture, spatial, non_spatial, complex) and GenEval
(single_object, two_object, counting, colors, position, color_attr); each maps to an IterComp
aspect where it fits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache
from importlib import resources

import numpy as np

from .grammar import (
    BASE_SHAPES,
    COLORS,
    CONTAINER_SHAPES,
    NON_SPATIAL_RELATIONS,
    SHAPES,
    SIZES,
    SPATIAL_RELATIONS,
    TEXTURES,
    Entity,
    Relation,
    Scene,
    to_prompt,
)
from .layout import LayoutError, sample_layout

SUITE_VERSION = "v1"
HELDOUT_FRACTION = 0.25
N_TRAIN, N_HELDOUT = 300, 100
SPLITS = ("train", "heldout")
ASPECTS = ("attribute_binding", "spatial_relationship", "non_spatial_relationship")

CATEGORY_ASPECT: dict[str, str | None] = {
    # T2I-CompBench-like
    "color": "attribute_binding",
    "shape": "attribute_binding",
    "texture": "attribute_binding",
    "spatial": "spatial_relationship",
    "non_spatial": "non_spatial_relationship",
    "complex": None,
    # GenEval-like
    "single_object": None,
    "two_object": None,
    "counting": None,
    "colors": "attribute_binding",
    "position": "spatial_relationship",
    "color_attr": "attribute_binding",
}
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_ASPECT)


def is_heldout(scene_or_key: Scene | str) -> bool:
    """Global held-out membership of a scene, by a hash of its canonical key."""
    key = scene_or_key.key() if isinstance(scene_or_key, Scene) else scene_or_key
    h = int.from_bytes(hashlib.sha256(f"{SUITE_VERSION}|{key}".encode()).digest()[:8], "big")
    return h / 2**64 < HELDOUT_FRACTION


# --------------------------------------------------------------------------------------------
# scene samplers, one per category: rng -> Scene


def _pick(rng: np.random.Generator, options, p_none: float = 0.0):
    if p_none and rng.random() < p_none:
        return None
    return str(rng.choice(list(options)))


def _entity(rng, color=0.5, size=0.5, texture=0.5, avoid_colors=(), shape=None) -> Entity:
    colors = [c for c in COLORS if c not in avoid_colors]
    shape = shape or _pick(rng, SHAPES)
    color = _pick(rng, colors, 1 - color) if color else None
    size = _pick(rng, SIZES, 1 - size) if size else None
    texture = _pick(rng, TEXTURES, 1 - texture) if texture else None
    if texture == "striped" and size == "small":  # stripes need room
        size = _pick(rng, ("medium", "large"))
    return Entity(shape=shape, color=color, size=size, texture=texture)


def _two(rng, **kw) -> tuple[Entity, Entity]:
    a = _entity(rng, **kw)
    b = _entity(rng, avoid_colors=(a.color,) if a.color else (), **kw)
    return a, b


def _pair(rng, kind, **kw) -> Scene:
    a, b = _two(rng, **kw)
    return Scene((a, b), (Relation(kind, 0, 1),))


def _fit_object(kind: str | None, b: Entity, rng) -> Entity:
    """Containers and bases must be shapes that can hold / carry another object."""
    if kind == "inside" and b.shape not in CONTAINER_SHAPES:
        return b.with_(shape=_pick(rng, CONTAINER_SHAPES))
    if kind == "on top of" and b.shape not in BASE_SHAPES:
        return b.with_(shape=_pick(rng, BASE_SHAPES))
    return b


def _non_spatial(rng) -> Scene:
    kind = _pick(rng, NON_SPATIAL_RELATIONS)
    a, b = _two(rng, color=1.0, size=0.0, texture=0.3)
    b = _fit_object(kind, b, rng)
    if kind == "inside":
        a = a.with_(size="small" if rng.random() < 0.4 and a.texture != "striped" else None)
        b = b.with_(size="large" if rng.random() < 0.4 else None)
    return Scene((a, b), (Relation(kind, 0, 1),))


def _complex(rng) -> Scene:
    # two clauses; at least one relation; colours distinct across the scene
    entities: list[Entity] = []
    relations: list[Relation] = []
    kinds = [_pick(rng, SPATIAL_RELATIONS + NON_SPATIAL_RELATIONS), None]
    if rng.random() < 0.5:
        kinds[1] = _pick(rng, SPATIAL_RELATIONS + NON_SPATIAL_RELATIONS)
    for kind in kinds:
        n = 2 if kind else 1
        for _ in range(n):
            used = tuple(e.color for e in entities if e.color)
            contact = kind in NON_SPATIAL_RELATIONS
            e = _entity(rng, color=1.0 if contact else 0.7, size=0.3, texture=0.3, avoid_colors=used)
            entities.append(_fit_object(kind, e, rng) if len(entities) % 2 == 1 and kind else e)
        if kind:
            relations.append(Relation(kind, len(entities) - 2, len(entities) - 1))
    return Scene(tuple(entities), tuple(relations))


def _counting(rng) -> Scene:
    n = int(rng.integers(1, 5))
    e = _entity(rng, color=0.5, size=0.3, texture=0.0)
    return Scene((Entity(e.shape, e.color, e.size, None, n, True),))


SAMPLERS: dict[str, Callable[[np.random.Generator], Scene]] = {
    "color": lambda r: Scene(_two(r, color=1.0, size=0.3, texture=0.0)),
    "shape": lambda r: Scene(_two(r, color=0.3, size=1.0, texture=0.0)),
    "texture": lambda r: Scene(_two(r, color=0.5, size=0.0, texture=1.0)),
    "spatial": lambda r: _pair(r, _pick(r, SPATIAL_RELATIONS), color=0.7, size=0.2, texture=0.2),
    "non_spatial": _non_spatial,
    "complex": _complex,
    "single_object": lambda r: Scene((_entity(r, color=0.5, size=0.5, texture=0.5),)),
    "two_object": lambda r: Scene(_two(r, color=0.0, size=0.5, texture=0.5)),
    "counting": _counting,
    "colors": lambda r: Scene((_entity(r, color=1.0, size=0.5, texture=0.5),)),
    "position": lambda r: _pair(r, _pick(r, SPATIAL_RELATIONS[:4]), color=0.3, size=0.5, texture=0.0),
    "color_attr": lambda r: Scene(_two(r, color=1.0, size=0.0, texture=0.0)),
}


def _valid(scene: Scene) -> bool:
    """No two identical descriptions in one scene, and a layout exists (checked on a fixed seed)."""
    descs = [e.phrase() for e in scene.entities]
    if len(set(descs)) != len(descs):
        return False
    seed = int.from_bytes(hashlib.sha256(scene.key().encode()).digest()[:4], "big")
    try:  # must fit on several seeds, with fewer tries than a render gets
        for k in range(3):
            sample_layout(scene, np.random.default_rng(seed + k), max_tries=15)
    except LayoutError:
        return False
    return True


def build_suites(max_draws: int = 40000) -> dict[str, dict[str, list[str]]]:
    """Generate every suite from scratch (deterministic). The shipped file is this, saved."""
    out: dict[str, dict[str, list[str]]] = {}
    for category, sampler in SAMPLERS.items():
        seed = int.from_bytes(hashlib.sha256(f"{SUITE_VERSION}|{category}".encode()).digest()[:8], "big")
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        split: dict[str, list[str]] = {"train": [], "heldout": []}
        for _ in range(max_draws):
            if len(split["train"]) >= N_TRAIN and len(split["heldout"]) >= N_HELDOUT:
                break
            scene = sampler(rng)
            key = scene.key()
            if key in seen:
                continue
            seen.add(key)
            name = "heldout" if is_heldout(key) else "train"
            limit = N_HELDOUT if name == "heldout" else N_TRAIN
            if len(split[name]) < limit and _valid(scene):
                split[name].append(to_prompt(scene))
        if len(split["train"]) < N_TRAIN or len(split["heldout"]) < N_HELDOUT:
            raise RuntimeError(
                f"category {category!r}: only {len(split['train'])} train / "
                f"{len(split['heldout'])} held-out prompts after {max_draws} draws"
            )
        out[category] = split
    return out


@cache
def _shipped() -> dict:
    path = resources.files("compalign.world") / "data" / f"suites_{SUITE_VERSION}.json"
    return json.loads(path.read_text())


def load_suite(category: str, split: str = "heldout") -> list[str]:
    """Prompts of one shipped suite."""
    if category not in CATEGORY_ASPECT:
        raise KeyError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return list(_shipped()["suites"][category][split])


def list_categories(aspect: str | None = None) -> list[str]:
    if aspect is not None and aspect not in ASPECTS:
        raise KeyError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
    return [c for c, a in CATEGORY_ASPECT.items() if aspect is None or a == aspect]


def sample_train_scene(
    rng: np.random.Generator, categories: list[str] | None = None, max_tries: int = 100
) -> tuple[str, Scene]:
    """A random training scene (never a held-out one) from the samplers of `categories`.

    Returns (category, scene). Generators and reward models train on these: the whole grammar
    minus the held-out keys, not only the 300 shipped train prompts per category.
    """
    cats = list(categories or CATEGORIES)
    for _ in range(max_tries):
        category = cats[int(rng.integers(len(cats)))]
        scene = SAMPLERS[category](rng)
        descs = [e.phrase() for e in scene.entities]
        if not is_heldout(scene) and len(set(descs)) == len(descs):
            return category, scene
    raise RuntimeError(f"no training scene found in {max_tries} draws from {cats}")

"""Prompt suites per category, deterministic and versioned, with disjoint train / held-out splits.

Whether a scene is held out is decided by its meaning, for all categories at once: a scene held
out in one suite is never a training prompt of another in any wording, and generators may be
trained on any grammar scene for which `is_heldout` is False.

The rule (`is_heldout`): a scene is held out when any of its written forms is held out under the
per-wording rule of suite v1 (`is_heldout_v1`: a hash of `Scene.key()`, 25% of keys). Its
written forms are its wordings as the samplers write them (`written_forms`): every relation with
a reverse or mirror in both orientations ("A on the left of B" / "B on the right of A", "A next to
B" / "B next to A"), and a lone single object with "a" and with "one"; objects of scenes with
several entities are written with "a" (no sampler writes "one" there; counting those wordings
would hold out 1 - 0.75^16 = 99% of the scenes of four objects). Every scene that suite v1 held
out in a form the samplers write stays held out, its held-out prompts among them, so held-out
figures of both versions are comparable. Scenes with several written
forms are held out more often than v1's 25%: of the samplers' draws, spatial / position 45-46%,
complex 49%, single_object / colors 47-50%, counting 34%, non_spatial 32%, the others 22-27%.

Versions: suite v1 split by the key of each wording, so a held-out prompt could be a training
scene in another wording (`leaked_under_v1`). Suite v2 (shipped, `SUITE_VERSION`) has the held-out
lists of v1 byte for byte and in the same order; its train lists are v1's without the prompts now
held out by meaning, topped up by further draws of the same seeded samplers (`build_suites`);
single_object and colors have only 268 and 239 trainable scenes in all, and every one is listed.

Categories mirror T2I-CompBench (color, shape, texture, spatial, non_spatial, complex) and GenEval
(single_object, two_object, counting, colors, position, color_attr); each maps to an IterComp
aspect where it fits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache, lru_cache
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
    parse_prompt,
    to_prompt,
    wordings,
)
from .layout import LayoutError, sample_layout

SUITE_VERSION = "v2"
SPLIT_HASH_VERSION = "v1"  # salt of the per-wording hash and of the suites' sampler seeds (v1's)
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


def is_heldout_v1(scene_or_key: Scene | str) -> bool:
    """Held-out membership under suite v1's rule: a hash of one wording's `Scene.key()`."""
    key = scene_or_key.key() if isinstance(scene_or_key, Scene) else scene_or_key
    h = int.from_bytes(hashlib.sha256(f"{SPLIT_HASH_VERSION}|{key}".encode()).digest()[:8], "big")
    return h / 2**64 < HELDOUT_FRACTION


def written_forms(scene: Scene) -> list[Scene]:
    """The wordings of `scene` as the samplers write them (see the module doc), one per key."""
    ents = scene.entities
    lone = len(ents) == 1
    if not lone and any(e.numbered and e.count == 1 for e in ents):
        ents = tuple(e.with_(numbered=False) if e.count == 1 else e for e in ents)
        scene = Scene(ents, scene.relations)
    return wordings(scene, clause_orders=False, articles=lone)


def _scene(scene_or_prompt: Scene | str) -> Scene:
    return scene_or_prompt if isinstance(scene_or_prompt, Scene) else parse_prompt(scene_or_prompt)


def is_heldout(scene_or_prompt: Scene | str) -> bool:
    """Global held-out membership of a scene (or a prompt), by meaning: equal for all its wordings.

    Held out when any written form is held out under `is_heldout_v1`. Raises `PromptError` for a
    prompt outside the grammar.
    """
    return _heldout_scene(_scene(scene_or_prompt))


@lru_cache(maxsize=1 << 16)
def _heldout_scene(scene: Scene) -> bool:  # the same for every wording: its written forms are
    return any(is_heldout_v1(w) for w in written_forms(scene))


def leaked_under_v1(scene_or_prompt: Scene | str) -> bool:
    """Whether a model trained on suite v1's split may have seen this scene's meaning.

    True when a written form of the scene that the samplers draw was a training scene under v1
    (`is_heldout_v1` False): for a held-out prompt, another wording of it could be drawn for
    training. Every written form is drawn by some sampler except "one X" with a texture (the
    counting sampler, the only one writing "one", names no texture).
    """
    forms = written_forms(_scene(scene_or_prompt))
    drawn = [w for w in forms if not (w.entities[0].numbered and w.entities[0].texture is not None)]
    return not all(is_heldout_v1(w) for w in drawn)


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


def build_suites(
    max_draws: int = 40000, categories: list[str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """Generate every suite from scratch (deterministic). The shipped file is this, saved.

    Each category's sampler draws from a seed of suite v1; a new key is a held-out candidate when
    v1 held it out (so the held-out lists are v1's, in v1's order), else a train candidate when
    its meaning is not held out (`is_heldout`) and not already in the train list. Candidates with
    a layout are kept until a list is full: the train list is v1's minus the prompts held out by
    meaning, topped up by the draws after v1's last. A category with fewer trainable scenes than
    `N_TRAIN` (single_object, colors: a lone object is held out when "a X" or "one X" is) gets all
    of them, once `max_draws` draws find no new scene in their second half.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for category in categories or CATEGORIES:
        sampler = SAMPLERS[category]
        salt = f"{SPLIT_HASH_VERSION}|{category}"
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "big"))
        seen: set[str] = set()
        train_meanings: set[str] = set()
        split: dict[str, list[str]] = {"train": [], "heldout": []}
        last_new = 0
        for draw in range(max_draws):
            if len(split["train"]) >= N_TRAIN and len(split["heldout"]) >= N_HELDOUT:
                break
            scene = sampler(rng)
            key = scene.key()
            if key in seen:
                continue
            seen.add(key)
            last_new = draw
            if is_heldout_v1(key):
                name = "heldout"
            elif is_heldout(scene) or scene.meaning_key() in train_meanings:
                continue
            else:
                name = "train"
            limit = N_HELDOUT if name == "heldout" else N_TRAIN
            if len(split[name]) < limit and _valid(scene):
                split[name].append(to_prompt(scene))
                if name == "train":
                    train_meanings.add(scene.meaning_key())
        exhausted = last_new < max_draws // 2  # every scene the sampler makes was seen: take all
        if (len(split["train"]) < N_TRAIN and not exhausted) or len(split["heldout"]) < N_HELDOUT:
            raise RuntimeError(
                f"category {category!r}: only {len(split['train'])} train / "
                f"{len(split['heldout'])} held-out prompts after {max_draws} draws"
            )
        out[category] = split
    return out


@cache
def _shipped(version: str = SUITE_VERSION) -> dict:
    """A shipped suite file (``v1`` is kept: the train lists that figures before v2 used)."""
    path = resources.files("compalign.world") / "data" / f"suites_{version}.json"
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
    """A random training scene (never a held-out one in any wording) from the samplers of `categories`.

    Returns (category, scene). Generators and reward models train on these: the whole grammar
    minus the held-out meanings, not only the shipped train prompts. No layout is drawn (~0.1 ms).
    """
    cats = list(categories or CATEGORIES)
    for _ in range(max_tries):
        category = cats[int(rng.integers(len(cats)))]
        scene = SAMPLERS[category](rng)
        descs = [e.phrase() for e in scene.entities]
        if not is_heldout(scene) and len(set(descs)) == len(descs):
            return category, scene
    raise RuntimeError(f"no training scene found in {max_tries} draws from {cats}")

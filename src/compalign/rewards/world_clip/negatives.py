"""Hard-negative prompts: the true prompt edited through the grammar so that it no longer holds.

``parse_prompt -> edit the scene -> to_prompt``. Edit kinds:

- ``color_swap``: swap the colours of two objects (both with a colour, different ones);
- ``color``: give one coloured object another colour;
- ``shape``: give one object another shape (containers / bases keep a shape that can hold / carry);
- ``size``: give one sized object another size;
- ``texture``: solid <-> striped on an object whose texture is named;
- ``relation_swap``: swap the two objects of a directed relation (left of, right of, above,
  below, inside, on top of); the symmetric ones (next to, touching) are left alone;
- ``relation``: replace a directional relation (left of / right of / above / below) by a
  perpendicular one (the layout puts a subject inside a narrow cone of its direction, so a
  perpendicular relation does not hold either); its reverse is the ``relation_swap`` scene in
  another wording, kept there;
- ``count``: change the number of a counted object by one (1..4), or make a lone "a X" two.

Only edits that give a scene with a different meaning (`Scene.meaning_key`: not the true scene
in another wording, e.g. the colours of "a red circle next to a blue circle" swapped), whose prompt
parses back to that scene, and with distinct object descriptions are kept. Candidates of one prompt are
cached (`HardNegatives`), so drawing negatives in a training loop costs a dictionary look-up.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compalign.world.grammar import (
    BASE_SHAPES,
    COLORS,
    CONTAINER_SHAPES,
    SHAPES,
    SIZES,
    Relation,
    Scene,
    parse_prompt,
    to_prompt,
)

EDIT_KINDS: tuple[str, ...] = (
    "color_swap",
    "color",
    "shape",
    "size",
    "texture",
    "relation_swap",
    "relation",
    "count",
)
DIRECTIONAL = ("left of", "right of", "above", "below")
SWAPPABLE = DIRECTIONAL + ("inside", "on top of")


def _with_entity(scene: Scene, i: int, **changes) -> Scene:
    ents = list(scene.entities)
    ents[i] = ents[i].with_(**changes)
    return Scene(tuple(ents), scene.relations)


def _edits(scene: Scene) -> dict[str, list[Callable[[], Scene]]]:
    ents = scene.entities
    rel_obj = {r.object: r.kind for r in scene.relations}
    out: dict[str, list[Callable[[], Scene]]] = {k: [] for k in EDIT_KINDS}
    for i, e in enumerate(ents):
        if e.color is not None:
            for c in COLORS:
                if c != e.color:
                    out["color"].append(lambda i=i, c=c: _with_entity(scene, i, color=c))
            for j in range(i + 1, len(ents)):
                f = ents[j]
                if f.color is not None and f.color != e.color:

                    def swap(i=i, j=j, ci=e.color, cj=f.color) -> Scene:
                        return _with_entity(_with_entity(scene, i, color=cj), j, color=ci)

                    out["color_swap"].append(swap)
        allowed = {"inside": CONTAINER_SHAPES, "on top of": BASE_SHAPES}.get(rel_obj.get(i, ""), SHAPES)
        for s in allowed:
            if s != e.shape:
                out["shape"].append(lambda i=i, s=s: _with_entity(scene, i, shape=s))
        if e.size is not None:
            for s in SIZES:
                if s != e.size:
                    out["size"].append(lambda i=i, s=s: _with_entity(scene, i, size=s))
        if e.texture is not None:
            t = "solid" if e.texture == "striped" else "striped"
            out["texture"].append(lambda i=i, t=t: _with_entity(scene, i, texture=t))
        if e.numbered:
            for n in (e.count - 1, e.count + 1):
                if 1 <= n <= 4:
                    out["count"].append(lambda i=i, n=n: _with_entity(scene, i, count=n))
        elif e.count == 1 and i not in rel_obj and all(r.subject != i for r in scene.relations):
            out["count"].append(lambda i=i: _with_entity(scene, i, count=2, numbered=True))
    for k, r in enumerate(scene.relations):
        if r.kind in SWAPPABLE:

            def swap_roles(r=r) -> Scene:
                ents2 = list(ents)
                ents2[r.subject], ents2[r.object] = ents[r.object], ents[r.subject]
                return Scene(tuple(ents2), scene.relations)

            out["relation_swap"].append(swap_roles)
        if r.kind in DIRECTIONAL:
            for kind in DIRECTIONAL:
                if kind != r.kind:

                    def change(k=k, kind=kind, r=r) -> Scene:
                        rels = list(scene.relations)
                        rels[k] = Relation(kind, r.subject, r.object)
                        return Scene(ents, tuple(rels))

                    out["relation"].append(change)
    return out


def hard_negative_candidates(prompt: str) -> dict[str, list[str]]:
    """Every valid hard-negative prompt of `prompt`, by edit kind (kinds with none are left out).

    Raises `PromptError` when `prompt` is not a world prompt.
    """
    scene = parse_prompt(prompt)
    truth = scene.meaning_key()
    seen = {truth}
    out: dict[str, list[str]] = {}
    for kind, makers in _edits(scene).items():
        for make in makers:
            try:
                new = make()
            except ValueError:  # an entity or scene the grammar does not allow
                continue
            descs = [e.phrase() for e in new.entities]
            meaning = new.meaning_key()
            if meaning in seen or len(set(descs)) != len(descs):
                continue
            text = to_prompt(new)
            try:
                if parse_prompt(text).key() != new.key():
                    continue
            except ValueError:
                continue
            seen.add(meaning)
            out.setdefault(kind, []).append(text)
    return out


def sample_from_candidates(cands: dict[str, list[str]], k: int, rng) -> list[str]:
    """`k` negatives: an edit kind drawn uniformly, then one of its prompts, without repeats while
    there are unused candidates (repeats only when a prompt has fewer than `k`).

    `rng`: a numpy Generator, or an array of uniforms in [0, 1) of shape ``[k, 2]`` (the fast path
    of the training loop, which draws a batch's uniforms at once).
    """
    full = {kind: v for kind, v in cands.items() if v}
    if not full:
        raise ValueError("no hard negatives to draw from")
    u = rng.random((k, 2)) if isinstance(rng, np.random.Generator) else rng
    pools: dict[str, list[str]] = {}
    out: list[str] = []
    for a, b in u.tolist() if hasattr(u, "tolist") else u:
        if not pools:  # all used (or first draw): start over
            pools = {kind: list(v) for kind, v in full.items()}
        kinds = sorted(pools)
        kind = kinds[int(a * len(kinds))]
        options = pools[kind]
        out.append(options.pop(int(b * len(options))))
        if not options:
            del pools[kind]
    return out


def sample_hard_negatives(prompt: str, k: int, rng: np.random.Generator) -> list[str]:
    """`k` hard-negative prompts of `prompt` (see `sample_from_candidates`)."""
    return sample_from_candidates(hard_negative_candidates(prompt), k, rng)


class HardNegatives:
    """Cached `hard_negative_candidates` per prompt (training draws the same prompts many times)."""

    def __init__(self, max_cache: int = 500_000):
        self._cache: dict[str, dict[str, list[str]]] = {}
        self.max_cache = max_cache

    def candidates(self, prompt: str) -> dict[str, list[str]]:
        c = self._cache.get(prompt)
        if c is None:
            c = hard_negative_candidates(prompt)
            if len(self._cache) >= self.max_cache:
                self._cache.clear()
            self._cache[prompt] = c
        return c

    def sample(self, prompt: str, k: int, rng: np.random.Generator) -> list[str]:
        return sample_from_candidates(self.candidates(prompt), k, rng)

"""Web-like captions: what a web page's alt-text might say about a scene, inside the grammar.

Real text-to-image models fail at compositions largely because their pre-training captions
(alt-text) rarely state relations, counts and which attribute belongs to which object, and often
state them wrongly (Betker et al. 2023, "Improving image generation with better captions"; the
SPRIGHT study of spatial words in LAION / CC12M captions). `web_caption` gives the world that
cause: from a `Scene`, a caption drawn with a numpy Generator where

- a relation clause is often written without its relation ("A and B") or with a wrong one (its
  objects swapped, or another relation of the same family: spatial or non-spatial);
- the colours of two objects are sometimes swapped (attribute bound to the wrong object), and each
  attribute word (size, texture, colour) is sometimes left out;
- the number of a counted group is sometimes left out ("three red circles" -> "a red circle":
  the grammar has no bare plural, so the singular is the closest a caption without a number gets);
- the clauses are sometimes written in a random order.

Every caption is a prompt of the grammar (`parse_prompt` reads it, the same tokenizer encodes
it). With every rate 0 (preset ``exact``) the caption is `to_prompt(scene)`. A caption is a
pure function of the scene, the rates and the Generator's state.

Rates (`WebCaptionRates`, preset ``web``; each field's docstring gives its reason). "Drawn" is
the rate of one draw; "in training" is what the captions of training scenes show after the
held-out redraw (below), measured with `web_caption` on 12,000 training scenes of the relation,
colour, attribute and counting categories (1,400-6,000 cases a rate, standard error <= 0.013):

=================== ===== =========== ====================================================
rate                drawn in training applies to
=================== ===== =========== ====================================================
spatial_drop         0.50  0.48       each spatial relation clause: written "A and B"
spatial_wrong        0.20  0.17       each spatial relation clause: a wrong relation
non_spatial_drop     0.50  0.50       each non-spatial relation clause: written "A and B"
non_spatial_wrong    0.20  0.20       each non-spatial relation clause: a wrong relation
wrong_reversed       0.50             of the wrong asymmetric relations: objects swapped
color_swap           0.40  0.34       each scene with objects of different colours: swap two
attribute_drop       0.30  0.25       each size / texture / colour word: left out
count_drop           0.30  0.15       each counted group (count > 1): written as one object
clause_shuffle       0.50             each caption: clauses written in a random order
=================== ===== =========== ====================================================

In training the true relation is stated in 34% of spatial and 31% of non-spatial relation
clauses (30% drawn). ``count_drop`` halves because "a red circle" is a held-out scene for about
half of the counted groups (a lone object is held out more often than other scenes, see
`compalign.world.suites`). The colour swap is counted where a swapped colour is still written
(0.37 drawn), the attribute drop on size and texture words (0.29 drawn).

Presets (`list_caption_presets`, `create_caption_rates`): ``web``, ``exact`` (all rates 0) and,
for a gallery of specialists, ``exact-attribute`` / ``exact-spatial`` / ``exact-nonspatial``:
exact for one aspect (its rates 0) and web-like for the others; ``no-relations``: every relation
clause written "A and B" and nothing else changed (the relations issue's learnability check).

Held-out scenes: a caption of a training scene may be a wording of a held-out scene (a swapped
colour or a dropped relation gives another scene), and training must never show a held-out
prompt. `web_caption` therefore redraws a caption that `compalign.world.suites.is_heldout` holds
out, up to `MAX_REDRAWS` times from the same Generator, and then falls back to the exact prompt
(never held out for a training scene). This conditions the draws on "not held out", so the
rates seen in training are lower than the drawn ones by the share of noisy captions that are
held out (the table's "in training" column; ``avoid_heldout=False`` gives the drawn rates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .grammar import (
    NON_SPATIAL_RELATIONS,
    SPATIAL_RELATIONS,
    SYMMETRIC_RELATIONS,
    Entity,
    Relation,
    Scene,
    to_prompt,
)
from .suites import is_heldout

MAX_REDRAWS = 16


@dataclass(frozen=True)
class WebCaptionRates:
    """Probabilities of each caption error; the defaults are preset ``web``.

    The rates are design choices of the world, not measurements of the web: each is set so that
    the fact it hides is stated correctly in a minority of captions (weak signal, as in alt-text)
    but still more often than any single wrong statement (learnable, so preference data has room
    to help).
    """

    spatial_drop: float = 0.5
    """Share of spatial relation clauses ("left of", "above", ...) written as "A and B". Alt-text
    names what is in an image far more often than where it is: spatial words are rare in web
    captions. Half keeps the relation present in enough captions to be learnable."""
    spatial_wrong: float = 0.2
    """Share of spatial relation clauses stated with a wrong spatial relation. Alt-text that does
    state a position often gets it wrong (mirrored images, the viewer's vs. the object's left,
    vague "next to"). With `spatial_drop`, the true relation is stated in 30% of clauses and a
    wrong one in 20%. 0.3 (with `non_spatial_wrong` 0.3) was tried on train prompts: the
    continued world-web then lost no more relations and had the same headroom
    (docs/results/world_web), so 0.2 stays."""
    non_spatial_drop: float = 0.5
    """Share of non-spatial relation clauses ("inside", "on top of", "touching") written as
    "A and B". Contact and containment are left out of alt-text as often as positions."""
    non_spatial_wrong: float = 0.2
    """Share of non-spatial relation clauses stated with a wrong non-spatial relation (a wrong
    relation stays in its family, so ``exact-spatial`` captions never misstate a spatial one)."""
    wrong_reversed: float = 0.5
    """Of the wrong relations of an asymmetric kind, the share written with the two objects
    swapped ("B on the left of A"); the others get another relation of the family. Role reversal
    ("a cat on a dog") and a wrong preposition are both common caption errors. Symmetric
    relations ("next to", "touching") are always replaced: swapping their objects changes nothing."""
    color_swap: float = 0.4
    """Share of scenes (with two objects of different colours) whose caption swaps the colours of
    two of them, chosen at random: the attribute is bound to the wrong object. Alt-text lists
    attributes loosely ("red and blue shapes"). 40% swapped with 30% of colours dropped is the
    noise whose effect was measured: fine-tuning world-base on it took its attribute mean from
    82.5 to 73.0, a learnable but clear loss."""
    attribute_drop: float = 0.3
    """Share of attribute words (size, texture, colour) left out, each on its own. Alt-text
    names objects more reliably than their looks; 30% is the colour-drop rate of that measurement."""
    count_drop: float = 0.3
    """Share of counted groups ("three red circles") written as a single object ("a red
    circle"). Alt-text rarely gives exact numbers beyond one or two."""
    clause_shuffle: float = 0.5
    """Share of captions whose clauses are written in a random order (which may be the original
    one). Alt-text has no fixed order of mention; this changes the wording, not the meaning."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"caption rate {f.name} must be in [0, 1], got {v}")
        for family in ("spatial", "non_spatial"):
            total = getattr(self, f"{family}_drop") + getattr(self, f"{family}_wrong")
            if total > 1.0:
                raise ValueError(f"caption rates {family}_drop + {family}_wrong must be <= 1, got {total}")

    def is_exact(self) -> bool:
        """True when every rate is 0: the caption is the exact prompt."""
        return not any(asdict(self).values())


_ZERO = {f.name: 0.0 for f in fields(WebCaptionRates)}
_ATTRIBUTE_RATES = ("color_swap", "attribute_drop")

# Presets as data: name -> (description, rates that differ from the ``web`` defaults).
CAPTION_PRESETS: dict[str, tuple[str, dict[str, float]]] = {
    "web": ("web-like captions for every aspect (the defaults of WebCaptionRates)", {}),
    "exact": ("the exact prompt of every scene (all rates 0)", _ZERO),
    "exact-attribute": (
        "attributes exact (no colour swap, no dropped attribute); relations, counts, order web-like",
        {k: 0.0 for k in _ATTRIBUTE_RATES},
    ),
    "exact-spatial": (
        "spatial relations exact; attributes, non-spatial relations, counts, order web-like",
        {"spatial_drop": 0.0, "spatial_wrong": 0.0},
    ),
    "exact-nonspatial": (
        "non-spatial relations exact; attributes, spatial relations, counts, order web-like",
        {"non_spatial_drop": 0.0, "non_spatial_wrong": 0.0},
    ),
    "no-relations": (
        "every relation clause written as 'A and B', all else exact: the learnability check's "
        "copy of a model, which must lose its relations and win them back from its own samples",
        {**_ZERO, "spatial_drop": 1.0, "non_spatial_drop": 1.0},
    ),
}


def list_caption_presets() -> list[str]:
    """Names of the caption presets."""
    return list(CAPTION_PRESETS)


def create_caption_rates(name: str) -> WebCaptionRates:
    """The `WebCaptionRates` of a named preset."""
    if name not in CAPTION_PRESETS:
        raise KeyError(f"unknown caption preset {name!r}; expected one of {', '.join(CAPTION_PRESETS)}")
    return replace(WebCaptionRates(), **CAPTION_PRESETS[name][1])


# ------------------------------------------------------------------------------------ captions
def noisy_scene(scene: Scene, rng: np.random.Generator, rates: WebCaptionRates) -> Scene:
    """One draw of the caption errors on `scene` (held-out or not): the scene the caption states."""
    ents = list(scene.entities)

    # attributes bound to the wrong object: swap the colours of two objects
    pairs = [
        (i, j) for i in range(len(ents)) for j in range(i + 1, len(ents)) if ents[i].color != ents[j].color
    ]
    if pairs and rng.random() < rates.color_swap:
        i, j = pairs[int(rng.integers(len(pairs)))]
        ents[i], ents[j] = ents[i].with_(color=ents[j].color), ents[j].with_(color=ents[i].color)

    # attribute words left out, counts left out
    for k, e in enumerate(ents):
        for slot in ("size", "texture", "color"):
            if getattr(e, slot) is not None and rng.random() < rates.attribute_drop:
                e = e.with_(**{slot: None})
        if e.count > 1 and rng.random() < rates.count_drop:
            e = e.with_(count=1, numbered=False)
        ents[k] = e

    # clauses: (relation kind or None, entities in written order)
    rel_of = {r.subject: r.kind for r in scene.relations}
    objects = {r.object for r in scene.relations}
    clauses: list[tuple[str | None, tuple[Entity, ...]]] = []
    for i, e in enumerate(ents):
        if i in objects:
            continue
        if i not in rel_of:
            clauses.append((None, (e,)))
            continue
        kind, pair = rel_of[i], (e, ents[i + 1])
        family = SPATIAL_RELATIONS if kind in SPATIAL_RELATIONS else NON_SPATIAL_RELATIONS
        drop, wrong = (
            (rates.spatial_drop, rates.spatial_wrong)
            if kind in SPATIAL_RELATIONS
            else (rates.non_spatial_drop, rates.non_spatial_wrong)
        )
        u = rng.random()
        if u < drop:
            clauses += [(None, (pair[0],)), (None, (pair[1],))]
            continue
        if u < drop + wrong:
            if kind not in SYMMETRIC_RELATIONS and rng.random() < rates.wrong_reversed:
                pair = pair[::-1]
            else:
                others = [k for k in family if k != kind]
                kind = others[int(rng.integers(len(others)))]
        clauses.append((kind, pair))

    if len(clauses) > 1 and rng.random() < rates.clause_shuffle:
        clauses = [clauses[int(k)] for k in rng.permutation(len(clauses))]

    entities: list[Entity] = []
    relations: list[Relation] = []
    for kind, written in clauses:
        entities.extend(written)
        if kind is not None:
            relations.append(Relation(kind, len(entities) - 2, len(entities) - 1))
    return Scene(tuple(entities), tuple(relations))


def web_caption(
    scene: Scene,
    rng: np.random.Generator,
    rates: WebCaptionRates | str = "web",
    avoid_heldout: bool = True,
) -> str:
    """A web-like caption of `scene` (a prompt of the grammar), drawn with `rng`.

    `rates`: a `WebCaptionRates` or a preset name. With `avoid_heldout`, a caption held out by
    `is_heldout` is redrawn (up to `MAX_REDRAWS` times), then replaced by the exact prompt.
    """

    if isinstance(rates, str):
        rates = create_caption_rates(rates)
    if rates.is_exact():
        return to_prompt(scene)
    for _ in range(MAX_REDRAWS if avoid_heldout else 1):
        caption = noisy_scene(scene, rng, rates)
        if not avoid_heldout or not is_heldout(caption):
            return to_prompt(caption)
    return to_prompt(scene)

"""Scene grammar of the embedded world: vocabulary, scenes, prompt <-> scene.

A scene is a list of entities (an object description with an optional count) and a list of
relations between single entities. Every prompt the grammar produces parses back to the same
scene (round trip), and a prompt outside the grammar raises `PromptError` naming the word.

Prompt grammar (one line per rule)::

    prompt   := clause (" and " clause)*
    clause   := np [relation np]
    np       := ("a" | "an" | NUMBER) [SIZE] [TEXTURE] [COLOR] SHAPE(s)
    relation := "on the left of" | "on the right of" | "above" | "below" | "next to"
              | "inside" | "on top of" | "touching"

Meaning: several prompts can describe the same scene. `Scene.key()` is equal for prompts that
differ only in clause order; `Scene.meaning_key()` is equal for every wording of a scene: clause
order, a reversed relation with its objects swapped ("A on the left of B" = "B on the right of A",
"A above B" = "B below A"), a symmetric relation with its objects swapped ("A next to B" = "B next
to A", the same for "touching") and the article of a single object ("a red circle" = "one red
circle"). `wordings(scene)` lists every scene of the grammar with the same meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import permutations, product

COLORS: dict[str, tuple[float, float, float]] = {
    # name -> RGB in [0, 1]; hues are ~30-60 degrees apart so they survive blur, noise and jitter
    "red": (0.95, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.02),
    "yellow": (0.93, 0.93, 0.08),
    "green": (0.10, 0.82, 0.12),
    "cyan": (0.08, 0.85, 0.90),
    "blue": (0.12, 0.28, 1.00),
    "purple": (0.58, 0.12, 0.95),
    "magenta": (0.95, 0.12, 0.78),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "rectangle")
PLURALS: dict[str, str] = {s: (s + "es" if s.endswith("ss") else s + "s") for s in SHAPES}
SIZES: dict[str, float] = {"small": 0.25, "medium": 0.35, "large": 0.48}  # extent / image side
TEXTURES: tuple[str, ...] = ("solid", "striped")
NUMBERS: dict[str, int] = {"one": 1, "two": 2, "three": 3, "four": 4}
SPATIAL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")
NON_SPATIAL_RELATIONS: tuple[str, ...] = ("inside", "on top of", "touching")
RELATIONS: tuple[str, ...] = SPATIAL_RELATIONS + NON_SPATIAL_RELATIONS
# "A right of B" means "B left of A"; "A next to B" means "B next to A". "inside" and "on top of"
# have no reverse in the grammar.
REVERSE_RELATIONS: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "next to": "next to",
    "touching": "touching",
}
SYMMETRIC_RELATIONS: tuple[str, ...] = tuple(k for k, v in REVERSE_RELATIONS.items() if k == v)
RELATION_PHRASES: dict[str, str] = {
    "left of": "on the left of",
    "right of": "on the right of",
    "above": "above",
    "below": "below",
    "next to": "next to",
    "inside": "inside",
    "on top of": "on top of",
    "touching": "touching",
}
# Shapes that can hold another object / carry one on top (checked by the layout sampler).
CONTAINER_SHAPES: tuple[str, ...] = ("circle", "square")
BASE_SHAPES: tuple[str, ...] = ("circle", "square", "rectangle")

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {"a", "an", "and", "on", "the", "of", "to", "top", "left", "right"}
        | set(NUMBERS)
        | set(SIZES)
        | set(TEXTURES)
        | set(COLORS)
        | set(SHAPES)
        | set(PLURALS.values())
        | {w for r in RELATION_PHRASES.values() for w in r.split()}
    )
)


class PromptError(ValueError):
    """A prompt that is not in the world grammar; the message names the offending word."""


@dataclass(frozen=True)
class Entity:
    """One object description; `count` > 1 (or `numbered`) only in counting prompts."""

    shape: str
    color: str | None = None
    size: str | None = None
    texture: str | None = None
    count: int = 1
    numbered: bool = False  # True: written with a number word ("two ..."), count is exact

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {tuple(COLORS)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")
        if self.texture is not None and self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}; expected one of {TEXTURES}")
        if self.texture == "striped" and self.size == "small":
            raise ValueError("stripes are not visible on small objects: a striped object is medium or large")
        if not 1 <= self.count <= 4:
            raise ValueError(f"count must be in 1..4, got {self.count}")
        if self.count > 1 and not self.numbered:
            raise ValueError("an entity with count > 1 must be numbered")

    def phrase(self) -> str:
        words = [k for k, v in NUMBERS.items() if v == self.count][:1] if self.numbered else ["a"]
        words += [w for w in (self.size, self.texture, self.color) if w is not None]
        words.append(PLURALS[self.shape] if self.count > 1 else self.shape)
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return " ".join(words)

    def with_(self, **changes) -> Entity:
        return replace(self, **changes)


@dataclass(frozen=True)
class Relation:
    """`subject` and `object` index single (count 1) entities of the scene."""

    kind: str
    subject: int
    object: int

    def __post_init__(self) -> None:
        if self.kind not in RELATIONS:
            raise ValueError(f"unknown relation {self.kind!r}; expected one of {RELATIONS}")


@dataclass(frozen=True)
class Scene:
    """Entities plus relations; the prompt is `to_prompt(scene)`.

    Clauses are written in entity order: a relation's subject directly precedes its object, and
    entities that are in no relation stand alone (``a red circle and a blue square``).
    """

    entities: tuple[Entity, ...]
    relations: tuple[Relation, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.entities)
        if n == 0:
            raise ValueError("a scene needs at least one entity")
        used: set[int] = set()
        for r in self.relations:
            if not (0 <= r.subject < n and 0 <= r.object < n) or r.subject == r.object:
                raise ValueError(f"relation {r} does not link two entities of the scene")
            if r.object != r.subject + 1 or r.subject in used or r.object in used:
                raise ValueError(f"relation {r} must link adjacent entities, each at most once")
            if self.entities[r.subject].count != 1 or self.entities[r.object].count != 1:
                raise ValueError(f"relation {r} must link single objects")
            used |= {r.subject, r.object}

    @property
    def n_objects(self) -> int:
        return sum(e.count for e in self.entities)

    def key(self) -> str:
        """Canonical key: equal for scenes that mean the same (clause order does not matter)."""
        rel_of = {r.subject: r for r in self.relations}
        in_rel = {i for r in self.relations for i in (r.subject, r.object)}
        clauses = []
        for i, e in enumerate(self.entities):
            if i in rel_of:
                r = rel_of[i]
                clauses.append(f"{_ekey(e)}|{r.kind}|{_ekey(self.entities[r.object])}")
            elif i not in in_rel:
                clauses.append(_ekey(e))
        return " & ".join(sorted(clauses))

    def meaning_key(self) -> str:
        """Canonical meaning: equal for every wording of the scene (see `wordings`).

        A single object written with "one" is keyed as written with "a"; a relation whose reverse
        or mirror is in the grammar is keyed in one orientation (``left of`` / ``above``, the two
        objects of ``next to`` / ``touching`` in sorted order); clauses are sorted.
        """
        rel_of = {r.subject: r for r in self.relations}
        in_rel = {i for r in self.relations for i in (r.subject, r.object)}
        clauses = []
        for i, e in enumerate(self.entities):
            if i in rel_of:
                r = rel_of[i]
                a, kind, b = _mkey(e), r.kind, _mkey(self.entities[r.object])
                if kind in ("right of", "below") or (kind in SYMMETRIC_RELATIONS and b < a):
                    a, kind, b = b, REVERSE_RELATIONS[kind], a
                clauses.append(f"{a}|{kind}|{b}")
            elif i not in in_rel:
                clauses.append(_mkey(e))
        return " & ".join(sorted(clauses))


def _ekey(e: Entity) -> str:
    return f"{e.count}{'n' if e.numbered else ''}:{e.size}:{e.texture}:{e.color}:{e.shape}"


def _mkey(e: Entity) -> str:
    return f"{e.count}:{e.size}:{e.texture}:{e.color}:{e.shape}"


def wordings(scene: Scene, clause_orders: bool = True, articles: bool = True) -> list[Scene]:
    """Every scene of the grammar whose prompt means the same as `scene`'s (`scene` included).

    Each single object written with "a" or "one" (with `articles`; else as in `scene`), each
    relation with a reverse or mirror in both orientations, and (with `clause_orders`) the clauses
    in every order; without `clause_orders` the clauses keep their order, which gives one scene per
    distinct `Scene.key()`. Each once, in a fixed order (at most 2^objects x 2^relations x clauses!
    scenes).
    """
    rel_of = {r.subject: r for r in scene.relations}
    objects = {r.object for r in scene.relations}
    # per clause, its variants: (relation kind or None, its entities in written order)
    clauses: list[list[tuple[str | None, tuple[Entity, ...]]]] = []
    for i, e in enumerate(scene.entities):
        if i in objects:
            continue
        if i in rel_of:
            r = rel_of[i]
            pairs = [(r.kind, (e, scene.entities[r.object]))]
            if r.kind in REVERSE_RELATIONS:
                pairs.append((REVERSE_RELATIONS[r.kind], (scene.entities[r.object], e)))
        else:
            pairs = [(None, (e,))]
        clauses.append(
            [(k, ents) for k, es in pairs for ents in product(*(_articles(x, articles) for x in es))]
        )
    orders = permutations(range(len(clauses))) if clause_orders else [tuple(range(len(clauses)))]
    out: dict[Scene, None] = {}  # insertion-ordered set
    for order in orders:
        for choice in product(*(clauses[c] for c in order)):
            entities: list[Entity] = []
            relations: list[Relation] = []
            for kind, ents in choice:
                entities.extend(ents)
                if kind is not None:
                    relations.append(Relation(kind, len(entities) - 2, len(entities) - 1))
            out[Scene(tuple(entities), tuple(relations))] = None
    return list(out)


def _articles(e: Entity, both: bool = True) -> tuple[Entity, ...]:
    """`e` written with "a" and with "one" (a single object), or `e` alone (a counted group)."""
    if e.count != 1 or not both:
        return (e,)
    return (e.with_(numbered=False), e.with_(numbered=True))


def to_prompt(scene: Scene) -> str:
    rel_of = {r.subject: r for r in scene.relations}
    objects = {r.object for r in scene.relations}
    clauses = []
    for i, e in enumerate(scene.entities):
        if i in objects:
            continue
        if i in rel_of:
            r = rel_of[i]
            obj = scene.entities[r.object].phrase()
            clauses.append(f"{e.phrase()} {RELATION_PHRASES[r.kind]} {obj}")
        else:
            clauses.append(e.phrase())
    return " and ".join(clauses)


_PHRASE_TO_RELATION = {tuple(p.split()): k for k, p in RELATION_PHRASES.items()}
_SINGULAR = {p: s for s, p in PLURALS.items()}


def parse_prompt(prompt: str) -> Scene:
    """Parse a world prompt into its scene; raise `PromptError` naming the offending word."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    words = prompt.strip().lower().rstrip(".").replace(",", " ").split()
    if not words:
        raise PromptError("empty prompt")
    pos = 0

    def fail(expected: str) -> PromptError:
        if pos >= len(words):
            return PromptError(f"prompt {prompt!r} ends early: expected {expected}")
        return PromptError(
            f"unexpected word {words[pos]!r} (word {pos + 1}) in prompt {prompt!r}: expected {expected}"
        )

    def parse_np() -> Entity:
        nonlocal pos
        if pos >= len(words):
            raise fail("'a' or a number")
        w = words[pos]
        if w in ("a", "an"):
            count, numbered = 1, False
        elif w in NUMBERS:
            count, numbered = NUMBERS[w], True
        else:
            raise fail("'a' or a number (one..four)")
        pos += 1
        attrs: dict[str, str] = {}
        for slot, vocab in (("size", SIZES), ("texture", TEXTURES), ("color", COLORS)):
            if pos < len(words) and words[pos] in vocab:
                attrs[slot] = words[pos]
                pos += 1
        if pos >= len(words):
            raise fail("a shape")
        w = words[pos]
        if count > 1:
            if w not in _SINGULAR:
                raise fail(f"a plural shape ({', '.join(PLURALS.values())})")
            shape = _SINGULAR[w]
        else:
            if w not in SHAPES:
                known = w in _SINGULAR or w in VOCABULARY
                raise fail(
                    ("a singular shape" if known else "a known word: size, texture, color or shape")
                    + f" ({', '.join(SHAPES)})"
                )
            shape = w
        pos += 1
        try:
            return Entity(shape=shape, count=count, numbered=numbered, **attrs)
        except ValueError as err:
            raise PromptError(f"prompt {prompt!r}: {err}") from None

    def parse_relation() -> str | None:
        nonlocal pos
        for phrase, kind in _PHRASE_TO_RELATION.items():
            if tuple(words[pos : pos + len(phrase)]) == phrase:
                pos += len(phrase)
                return kind
        return None

    entities: list[Entity] = []
    relations: list[Relation] = []
    while True:
        subject = parse_np()
        entities.append(subject)
        if pos < len(words) and words[pos] != "and":
            kind = parse_relation()
            if kind is None:
                raise fail("'and' or a relation (" + ", ".join(RELATION_PHRASES.values()) + ")")
            obj = parse_np()
            entities.append(obj)
            if subject.count != 1 or obj.count != 1:
                raise PromptError(f"prompt {prompt!r}: relations link single objects only")
            relations.append(Relation(kind, len(entities) - 2, len(entities) - 1))
        if pos >= len(words):
            break
        if words[pos] != "and":
            raise fail("'and' or the end of the prompt")
        pos += 1
    return Scene(tuple(entities), tuple(relations))

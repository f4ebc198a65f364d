"""Meaning of a scene (every wording of it) and the held-out split by meaning (suite v2)."""

from __future__ import annotations

import json
from math import factorial

import numpy as np
import pytest

from compalign.world import suites
from compalign.world.grammar import (
    REVERSE_RELATIONS,
    PromptError,
    Scene,
    parse_prompt,
    to_prompt,
    wordings,
)


@pytest.mark.parametrize(
    "a, b",
    [
        ("a red circle on the left of a blue square", "a blue square on the right of a red circle"),
        ("a red circle above a blue square", "a blue square below a red circle"),
        ("a red circle next to a blue square", "a blue square next to a red circle"),
        ("a red circle touching a blue square", "a blue square touching a red circle"),
        ("a red circle", "one red circle"),
        ("an orange cross and a small square", "a small square and one orange cross"),
        (
            "a red circle inside a blue square and a green cross above a cyan triangle",
            "a cyan triangle below one green cross and a red circle inside one blue square",
        ),
    ],
)
def test_wordings_of_one_scene_share_the_meaning_key(a, b):
    sa, sb = parse_prompt(a), parse_prompt(b)
    assert sa.key() != sb.key() and sa.meaning_key() == sb.meaning_key()
    assert sb in wordings(sa) and sa in wordings(sb)
    assert suites.is_heldout(sa) == suites.is_heldout(sb)


@pytest.mark.parametrize(
    "a, b",
    [
        ("a red circle on the left of a blue square", "a red circle on the right of a blue square"),
        ("a red circle on the left of a blue square", "a blue square on the left of a red circle"),
        ("a red circle above a blue square", "a red circle on the left of a blue square"),
        ("a red circle inside a blue square", "a blue square inside a red circle"),
        ("a red circle on top of a blue square", "a blue square on top of a red circle"),
        ("a red circle next to a blue square", "a red circle touching a blue square"),
        ("a red circle", "two red circles"),
        ("a red circle and a blue square", "a blue circle and a red square"),
    ],
)
def test_different_scenes_keep_different_meaning_keys(a, b):
    sa, sb = parse_prompt(a), parse_prompt(b)
    assert sa.meaning_key() != sb.meaning_key()
    assert sb not in wordings(sa)


def test_wordings_lists_every_wording():
    expected = {
        f"{x} {y}"
        for x, y in [
            ("a red circle next to", "a blue square"),
            ("a red circle next to", "one blue square"),
            ("one red circle next to", "a blue square"),
            ("one red circle next to", "one blue square"),
            ("a blue square next to", "a red circle"),
            ("a blue square next to", "one red circle"),
            ("one blue square next to", "a red circle"),
            ("one blue square next to", "one red circle"),
        ]
    }
    scene = parse_prompt("a red circle next to a blue square")
    assert {to_prompt(w) for w in wordings(scene)} == expected
    assert {to_prompt(w) for w in wordings(scene, articles=False)} == {
        "a red circle next to a blue square",
        "a blue square next to a red circle",
    }
    two = parse_prompt("a red circle inside a blue square and three green crosses")
    assert {to_prompt(w) for w in wordings(two, articles=False)} == {
        "a red circle inside a blue square and three green crosses",
        "three green crosses and a red circle inside a blue square",
    }
    assert len(wordings(two, clause_orders=False, articles=False)) == 1


@pytest.mark.parametrize("category", suites.CATEGORIES)
def test_wordings_round_trip_and_count(category):
    rng = np.random.default_rng(11)
    for _ in range(40):
        scene = suites.SAMPLERS[category](rng)
        if len({e.phrase() for e in scene.entities}) < len(scene.entities):
            continue  # two identical objects: never a suite or training scene
        ws = wordings(scene)
        singles = sum(e.count == 1 for e in scene.entities)
        flips = sum(r.kind in REVERSE_RELATIONS for r in scene.relations)
        clauses = len(scene.entities) - len(scene.relations)
        assert len(ws) == 2**singles * 2**flips * factorial(clauses), to_prompt(scene)
        assert scene in ws and len({to_prompt(w) for w in ws}) == len(ws)
        for w in ws:
            assert parse_prompt(to_prompt(w)) == w
            assert w.meaning_key() == scene.meaning_key()
        assert len({w.key() for w in wordings(scene, clause_orders=False)}) == len(ws) // factorial(clauses)


def test_is_heldout_is_the_same_for_every_wording():
    rng = np.random.default_rng(5)
    for category in suites.CATEGORIES:
        for _ in range(30):
            scene = suites.SAMPLERS[category](rng)
            assert len({suites.is_heldout(w) for w in wordings(scene)}) == 1, to_prompt(scene)


def test_is_heldout_takes_prompts_and_names_a_bad_word():
    p = suites.load_suite("spatial", "heldout")[0]
    assert suites.is_heldout(p) and suites.is_heldout(parse_prompt(p))
    with pytest.raises(PromptError, match="hexagon"):
        suites.is_heldout("a red hexagon")


def test_every_v1_heldout_prompt_stays_heldout_in_the_same_lists():
    v1, v2 = suites._shipped("v1"), suites._shipped()
    assert v1["version"] == "v1" and v2["version"] == suites.SUITE_VERSION == "v2"
    for c in suites.CATEGORIES:
        held = v1["suites"][c]["heldout"]
        assert json.dumps(v2["suites"][c]["heldout"]) == json.dumps(held), c  # same bytes, same order
        for p in held:
            assert suites.is_heldout_v1(parse_prompt(p)) and suites.is_heldout(p), (c, p)


def test_v2_train_lists_are_v1_minus_heldout_meanings_then_new_draws():
    changed = 0
    for c in suites.CATEGORIES:
        old, new = suites._shipped("v1")["suites"][c]["train"], suites.load_suite(c, "train")
        kept, meanings = [], set()  # v1's train prompts neither held out nor a repeated meaning
        for p in old:
            m = parse_prompt(p).meaning_key()
            if not suites.is_heldout(p) and m not in meanings:
                kept.append(p)
                meanings.add(m)
        assert new[: len(kept)] == kept, c
        assert not set(new[len(kept) :]) & set(old), c
        changed += len(old) - len(kept)
    assert changed > 100  # v1 trained on held-out meanings in other wordings


@pytest.mark.parametrize("n", [10_000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_training_draws_hold_no_heldout_meaning(n):
    shipped = {
        parse_prompt(p).meaning_key() for c in suites.CATEGORIES for p in suites.load_suite(c, "heldout")
    }
    rng = np.random.default_rng(2024)
    cats = set()
    for k in range(n):
        category, scene = suites.sample_train_scene(rng)
        cats.add(category)
        assert scene.meaning_key() not in shipped, to_prompt(scene)
        if k % 50 == 0:  # no written form held out by v1; every wording of the grammar trainable
            assert not any(suites.is_heldout_v1(w) for w in suites.written_forms(scene)), to_prompt(scene)
            assert not any(suites.is_heldout(w) for w in wordings(scene)), to_prompt(scene)
    assert cats == set(suites.CATEGORIES)
    # the same checks catch the per-wording split of suite v1
    rng = np.random.default_rng(2024)
    leaks = 0
    for _ in range(20_000):
        scene = suites.SAMPLERS[suites.CATEGORIES[int(rng.integers(len(suites.CATEGORIES)))]](rng)
        if not suites.is_heldout_v1(scene) and scene.meaning_key() in shipped:
            leaks += 1
    assert leaks > 0


def _reverse(prompt: str) -> str:
    """The reversed wording of a one-clause directional / symmetric prompt, written by hand."""
    for phrase, back in (
        (" on the left of ", " on the right of "),
        (" on the right of ", " on the left of "),
        (" above ", " below "),
        (" below ", " above "),
        (" next to ", " next to "),
        (" touching ", " touching "),
    ):
        if phrase in prompt:
            a, b = prompt.split(phrase)
            return f"{b}{back}{a}"
    raise AssertionError(prompt)


def test_leaked_under_v1():
    n = 0
    for c in ("spatial", "position"):
        for p in suites.load_suite(c, "heldout"):
            other = parse_prompt(_reverse(p))
            assert suites.leaked_under_v1(p) == (not suites.is_heldout_v1(other)), p
            n += suites.leaked_under_v1(p)
    assert 0 < n < 200
    for c in ("color", "shape", "texture", "two_object", "color_attr"):  # one wording only
        assert not any(suites.leaked_under_v1(p) for p in suites.load_suite(c, "heldout")), c
    for p in suites.load_suite("single_object", "heldout"):
        one = parse_prompt("one " + p.split(" ", 1)[1])
        textured = one.entities[0].texture is not None  # never drawn with "one"
        assert suites.leaked_under_v1(p) == (not textured and not suites.is_heldout_v1(one)), p
    assert isinstance(suites.leaked_under_v1(Scene(parse_prompt("a red circle").entities)), bool)

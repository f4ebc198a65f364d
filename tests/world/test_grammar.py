"""Scene grammar and prompt suites: round trips, canonical keys, errors, splits."""

from __future__ import annotations

import numpy as np
import pytest

from compalign.world import suites
from compalign.world.grammar import PromptError, Scene, parse_prompt, to_prompt


def all_suite_prompts() -> list[tuple[str, str, str]]:
    return [(c, s, p) for c in suites.CATEGORIES for s in suites.SPLITS for p in suites.load_suite(c, s)]


def test_round_trip_every_shipped_prompt():
    rows = all_suite_prompts()
    assert len(rows) >= len(suites.CATEGORIES) * 400 - 100  # single_object and colors have fewer
    for category, split, prompt in rows:
        scene = parse_prompt(prompt)
        assert to_prompt(scene) == prompt, (category, split)
        assert parse_prompt(to_prompt(scene)) == scene


@pytest.mark.parametrize("category", suites.CATEGORIES)
def test_round_trip_sampler_scenes(category):
    rng = np.random.default_rng(1234)
    for _ in range(200):
        scene = suites.SAMPLERS[category](rng)
        prompt = to_prompt(scene)
        back = parse_prompt(prompt)
        assert back == scene, prompt
        assert back.key() == scene.key()
        assert to_prompt(back) == prompt


def test_key_ignores_clause_order():
    a = parse_prompt("a red circle and a blue square")
    b = parse_prompt("a blue square and a red circle")
    assert a != b and a.key() == b.key()
    c = parse_prompt("a red circle on the left of a blue square and a green cross")
    d = parse_prompt("a green cross and a red circle on the left of a blue square")
    assert c.key() == d.key()


def test_key_keeps_meaning_apart():
    keys = {
        parse_prompt(p).key()
        for p in (
            "a red circle and a blue square",
            "a blue circle and a red square",
            "a red circle on the left of a blue square",
            "a blue square on the left of a red circle",
            "a red circle on the right of a blue square",
        )
    }
    assert len(keys) == 5


def test_prompt_normalisation():
    assert parse_prompt("A red circle.") == parse_prompt("a red circle")
    assert isinstance(parse_prompt("two blue squares"), Scene)


@pytest.mark.parametrize(
    "prompt, word",
    [
        ("a red hexagon", "hexagon"),
        ("a red circle beside a square", "beside"),
        ("the red circle", "the"),
        ("a red circle and and a square", "and"),
        ("two red circle", "circle"),
        ("a red circles", "circles"),
        ("a crimson circle", "crimson"),
    ],
)
def test_unparseable_prompt_names_the_word(prompt, word):
    with pytest.raises(PromptError) as err:
        parse_prompt(prompt)
    assert repr(word) in str(err.value)


@pytest.mark.parametrize("prompt", ["", "   ", "a red", "a red circle on the left of"])
def test_incomplete_prompt_raises(prompt):
    with pytest.raises(PromptError):
        parse_prompt(prompt)


def test_prompt_error_is_value_error():
    assert issubclass(PromptError, ValueError)


def test_suites_sizes_and_determinism():
    for c in suites.CATEGORIES:
        train, held = suites.load_suite(c, "train"), suites.load_suite(c, "heldout")
        # a lone object is held out when "a X" or "one X" is: these two categories have fewer
        small = c in ("single_object", "colors")
        assert (200 <= len(train) < 300) if small else len(train) == 300, c
        assert len(held) == 100, c
        assert suites.load_suite(c, "train") == train and suites.load_suite(c, "heldout") == held
        for split in (train, held):  # no duplicate scene within a suite
            assert len({parse_prompt(p).key() for p in split}) == len(split), c
        assert len({parse_prompt(p).meaning_key() for p in train}) == len(train), c


def test_splits_disjoint_by_meaning_within_and_across_categories():
    train_meanings: set[str] = set()
    held_meanings: set[str] = set()
    for c in suites.CATEGORIES:
        for p in suites.load_suite(c, "train"):
            assert not suites.is_heldout(p), (c, p)
            train_meanings.add(parse_prompt(p).meaning_key())
        for p in suites.load_suite(c, "heldout"):
            assert suites.is_heldout(p), (c, p)
            held_meanings.add(parse_prompt(p).meaning_key())
    assert not train_meanings & held_meanings


def test_sample_train_scene_is_never_heldout():
    rng = np.random.default_rng(7)
    for _ in range(300):
        category, scene = suites.sample_train_scene(rng)
        assert category in suites.CATEGORIES
        assert not suites.is_heldout(scene)


def test_unknown_category_or_split():
    with pytest.raises(KeyError):
        suites.load_suite("colour")
    with pytest.raises(KeyError):
        suites.load_suite("color", "test")


def test_categories_and_aspects():
    assert set(suites.CATEGORY_ASPECT) == set(suites.CATEGORIES)
    assert {a for a in suites.CATEGORY_ASPECT.values() if a} == set(suites.ASPECTS)
    for aspect in suites.ASPECTS:
        assert suites.list_categories(aspect)


def test_build_suites_reproduces_shipped_categories():
    # the categories whose train scenes run out, and one that fills up, rebuilt from their seeds
    cats = ["single_object", "colors", "color_attr"]
    assert suites.build_suites(categories=cats) == {c: suites._shipped()["suites"][c] for c in cats}


@pytest.mark.slow
def test_build_suites_reproduces_shipped_file():
    # ~4 min on 2 busy cores (complex alone ~2 min): every suite regenerated, layouts checked
    assert suites.build_suites() == suites._shipped()["suites"]

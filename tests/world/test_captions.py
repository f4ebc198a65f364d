"""Web-like captions: inside the grammar, exact at rate 0, each rate's effect, never held out, and
the training-config hook (`WorldTrainConfig.captions` -> the batches of `generators.world.data`)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from compalign.generators.world.config import WorldTrainConfig
from compalign.generators.world.data import ScenePool, make_batch, sample_example
from compalign.world.captions import (
    WebCaptionRates,
    create_caption_rates,
    list_caption_presets,
    noisy_scene,
    web_caption,
)
from compalign.world.grammar import (
    NON_SPATIAL_RELATIONS,
    SPATIAL_RELATIONS,
    SYMMETRIC_RELATIONS,
    Scene,
    parse_prompt,
    to_prompt,
)
from compalign.world.suites import CATEGORIES, SAMPLERS, is_heldout, sample_train_scene

ZERO = {f.name: 0.0 for f in fields(WebCaptionRates)}


def only(**rates: float) -> WebCaptionRates:
    """Rates with every error off except the ones named."""
    return WebCaptionRates(**{**ZERO, **rates})


@pytest.fixture(scope="module")
def train_scenes() -> list[tuple[str, Scene]]:
    rng = np.random.default_rng(24)
    return [sample_train_scene(rng) for _ in range(10_000)]


def scenes_of(category: str, n: int, seed: int = 0) -> list[Scene]:
    """`n` scenes of the category's sampler whose objects have distinct descriptions."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        scene = SAMPLERS[category](rng)
        if len({e.phrase() for e in scene.entities}) == len(scene.entities):
            out.append(scene)
    return out


def near(measured: float, stated: float, n: int) -> bool:
    """Within 4 binomial standard deviations (and 0.01)."""
    return abs(measured - stated) <= 4 * np.sqrt(stated * (1 - stated) / n) + 0.01


def test_presets_are_data():
    assert list_caption_presets()[:2] == ["web", "exact"]
    assert {"exact-attribute", "exact-spatial", "exact-nonspatial"} <= set(list_caption_presets())
    assert create_caption_rates("web") == WebCaptionRates() and not WebCaptionRates().is_exact()
    assert create_caption_rates("exact").is_exact()
    spatial = create_caption_rates("exact-spatial")
    assert spatial.spatial_drop == spatial.spatial_wrong == 0 and spatial.non_spatial_drop > 0
    attribute = create_caption_rates("exact-attribute")
    assert attribute.color_swap == attribute.attribute_drop == 0 and attribute.spatial_drop > 0
    nonspatial = create_caption_rates("exact-nonspatial")
    assert nonspatial.non_spatial_drop == nonspatial.non_spatial_wrong == 0 and nonspatial.color_swap > 0
    assert "no-relations" in list_caption_presets()
    with pytest.raises(KeyError, match="unknown caption preset 'alt'.*exact-spatial"):
        create_caption_rates("alt")
    with pytest.raises(ValueError, match="color_swap must be in"):
        WebCaptionRates(color_swap=1.5)
    with pytest.raises(ValueError, match="spatial_drop \\+ spatial_wrong"):
        WebCaptionRates(spatial_drop=0.7, spatial_wrong=0.4)


def test_captions_stay_in_the_grammar_and_out_of_the_heldout_split(train_scenes):
    rng = np.random.default_rng(0)
    seen = set()
    for category, scene in train_scenes:
        caption = web_caption(scene, rng, "web")
        parsed = parse_prompt(caption)  # raises outside the grammar
        assert to_prompt(parsed) == caption and not is_heldout(parsed)
        seen.add(category)
    assert seen == set(CATEGORIES)


@pytest.mark.slow
def test_no_caption_of_100k_training_scenes_is_held_out():
    rng = np.random.default_rng(100)
    for _ in range(100_000):
        _, scene = sample_train_scene(rng)
        assert not is_heldout(parse_prompt(web_caption(scene, rng, "web")))


def test_rates_zero_give_the_exact_prompt(train_scenes):
    rng = np.random.default_rng(1)
    exact = create_caption_rates("exact")
    for _, scene in train_scenes[:2000]:
        assert web_caption(scene, rng, exact) == to_prompt(scene)
        assert to_prompt(noisy_scene(scene, rng, exact)) == to_prompt(scene)  # draws, changes nothing


def test_captions_are_deterministic(train_scenes):
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [web_caption(s, rng, "web") for _, s in train_scenes[:500]]

    assert draw(5) == draw(5) and draw(5) != draw(6)
    assert sum(a != to_prompt(s) for a, (_, s) in zip(draw(5), train_scenes[:500], strict=True)) > 250


def test_a_heldout_caption_is_redrawn_then_the_exact_prompt():
    rng = np.random.default_rng(2)
    scenes = [s for _, s in (sample_train_scene(rng, ["color_attr"]) for _ in range(300))]
    swap = only(color_swap=1.0)  # every caption swaps the two colours
    raw = [noisy_scene(s, rng, swap) for s in scenes]
    assert 0.1 < np.mean([is_heldout(x) for x in raw]) < 0.5  # some swaps name a held-out scene
    for s in scenes:
        caption = web_caption(s, rng, swap)
        assert not is_heldout(caption)
        swapped = parse_prompt(caption).entities[0].color == s.entities[1].color
        assert swapped or caption == to_prompt(s)  # the swap, or else the exact prompt


def test_relation_rates():
    n = 4000
    for category, prefix in (("spatial", "spatial"), ("non_spatial", "non_spatial")):
        scenes = scenes_of(category, n)
        rng = np.random.default_rng(3)
        drop = {f"{prefix}_drop": 0.5}
        dropped = [not noisy_scene(s, rng, only(**drop)).relations for s in scenes]
        assert near(np.mean(dropped), 0.5, n), (category, np.mean(dropped))
        wrong = [noisy_scene(s, rng, only(**{f"{prefix}_wrong": 0.2})) for s in scenes]
        changed = [w.meaning_key() != s.meaning_key() for w, s in zip(wrong, scenes, strict=True)]
        assert near(np.mean(changed), 0.2, n), (category, np.mean(changed))
        family = SPATIAL_RELATIONS if category == "spatial" else NON_SPATIAL_RELATIONS
        assert all(w.relations[0].kind in family for w in wrong)  # a wrong relation stays in its family
        # of the wrong asymmetric relations, `wrong_reversed` swap the objects (else replace the kind)
        asym = [s for s in scenes if s.relations[0].kind not in SYMMETRIC_RELATIONS]
        always = only(**{f"{prefix}_wrong": 1.0, "wrong_reversed": 0.3})
        reversed_ = [noisy_scene(s, rng, always).entities[0] == s.entities[1] for s in asym]
        assert near(np.mean(reversed_), 0.3, len(asym)), (category, np.mean(reversed_))


def test_other_families_are_left_alone():
    rng = np.random.default_rng(4)
    spatial_only = only(spatial_drop=0.5, spatial_wrong=0.5)
    for s in scenes_of("non_spatial", 300):
        assert noisy_scene(s, rng, spatial_only) == s
    attribute_exact = create_caption_rates("exact-attribute")
    for s in scenes_of("color_attr", 300):
        caption = noisy_scene(s, rng, attribute_exact)
        assert sorted(e.color for e in caption.entities) == sorted(e.color for e in s.entities)
        assert {(e.shape, e.color) for e in caption.entities} == {(e.shape, e.color) for e in s.entities}


def test_no_relations_keeps_everything_but_the_relations():
    rng, rates = np.random.default_rng(5), create_caption_rates("no-relations")
    for category in ("spatial", "position", "non_spatial", "color_attr", "counting"):
        for s in scenes_of(category, 100):
            caption = noisy_scene(s, rng, rates)
            assert not caption.relations and caption.entities == s.entities, (category, s)


def test_attribute_count_and_order_rates():
    n = 4000
    rng = np.random.default_rng(5)
    scenes = scenes_of("color_attr", n)  # two objects of two different colours
    swapped = [
        noisy_scene(s, rng, only(color_swap=0.4)).entities[0].color == s.entities[1].color for s in scenes
    ]
    assert near(np.mean(swapped), 0.4, n), np.mean(swapped)

    kept = []
    for s in scenes_of("shape", n) + scenes_of("texture", n):
        caption = noisy_scene(s, rng, only(attribute_drop=0.3))
        for a, b in zip(s.entities, caption.entities, strict=True):
            kept += [
                getattr(b, slot) is not None for slot in ("size", "texture", "color") if getattr(a, slot)
            ]
    assert near(1 - np.mean(kept), 0.3, len(kept)), 1 - np.mean(kept)

    counted = [s for s in scenes_of("counting", n) if s.entities[0].count > 1]
    single = [noisy_scene(s, rng, only(count_drop=0.3)).entities[0].count == 1 for s in counted]
    assert near(np.mean(single), 0.3, len(counted)), np.mean(single)

    moved = [noisy_scene(s, rng, only(clause_shuffle=0.5)).entities != s.entities for s in scenes]
    assert near(np.mean(moved), 0.25, n), np.mean(moved)  # two clauses: half the shuffles keep the order


# ---------------------------------------------------------------------- training-config hook
def test_config_names_a_bad_caption_preset():
    assert WorldTrainConfig().captions == "exact" and WorldTrainConfig(captions="web").captions == "web"
    with pytest.raises(ValueError, match=r"captions must be one of web, exact, .*got 'alt-text'"):
        WorldTrainConfig(captions="alt-text")


def test_exact_stream_batches_are_unchanged_and_web_ones_are_captioned():
    seed, step, size, cats = 3, 5, 10, ["color_attr", "position", "counting"]  # fast layouts

    def batch(captions: str = "exact", at: int = step) -> dict:
        return make_batch(seed, at, size, cats, with_images=False, captions=captions)

    rng = np.random.default_rng([seed, step, 0x57A7])  # the stream's draws, as before captions existed
    before = [sample_example(rng, cats, False)[:2] for _ in range(size)]
    exact = batch("exact")
    assert exact["prompts"] == [p for _, p in before] and exact["categories"] == [c for c, _ in before]
    assert make_batch(seed, step, size, cats, with_images=False) == exact
    web = batch("web")
    assert web["categories"] == exact["categories"] and web["prompts"] != exact["prompts"]
    assert web == batch("web")  # deterministic
    assert web["prompts"] != batch("web", step + 1)["prompts"]
    assert not any(is_heldout(p) for p in web["prompts"])


def test_exact_pool_batches_are_unchanged_and_web_ones_are_captioned(tmp_path):
    pool = ScenePool(tmp_path, ["color_attr", "position"], per_category=4, shard_size=4)
    pool.build(progress=False)
    data = pool.load()
    exact = pool.batch(seed=1, step=7, batch_size=16)
    rng = np.random.default_rng([1, 7, 0x9001])  # the pool's draws, as before captions existed
    cats = [pool.categories[i] for i in rng.integers(2, size=16)]
    idx = [int(rng.integers(len(data[c][1]))) for c in cats]
    assert exact["prompts"] == [data[c][1][i] for c, i in zip(cats, idx, strict=True)]
    web = pool.batch(seed=1, step=7, batch_size=16, captions="web")
    assert torch.equal(web["images"], exact["images"]) and web["categories"] == exact["categories"]
    assert web["prompts"] != exact["prompts"] and not any(is_heldout(p) for p in web["prompts"])
    again = next(pool.batches(seed=1, batch_size=16, start_step=7, captions="web"))
    assert again["prompts"] == web["prompts"]

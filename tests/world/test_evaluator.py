"""The exact evaluator: accepts clean and perturbed renders, rejects wrong ones (fixed seeds)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from compalign.world.evaluator import Verdict, evaluate, find_objects
from compalign.world.grammar import PromptError, parse_prompt
from compalign.world.layout import sample_layout
from compalign.world.perturb import CORRUPTIONS, perturb, truth, wrong_layout
from compalign.world.render import Placed, render, to_uint8
from compalign.world.suites import CATEGORIES, load_suite


def _figures(res: int, per_category: int, seed: int = 0) -> dict[str, dict[str, float]]:
    out = {}
    kinds: Counter = Counter()
    for ci, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, ci, res])
        clean = pert = wrong = wrong_n = 0
        prompts = load_suite(category, "heldout")[:per_category]
        for prompt in prompts:
            scene = parse_prompt(prompt)
            image = render(sample_layout(scene, rng), res)
            clean += evaluate(image, prompt).passed
            pert += evaluate(perturb(image, rng), prompt).passed
            for kind in CORRUPTIONS:
                objects = wrong_layout(scene, kind, rng)
                if objects is not None:
                    kinds[kind] += 1
                    wrong_n += 1
                    wrong += not evaluate(render(objects, res), prompt).passed
        n = len(prompts)
        out[category] = {
            "n": n,
            "clean": clean / n,
            "pert": pert / n,
            "wrong": wrong / wrong_n,
            "wn": wrong_n,
        }
    out["_kinds"] = dict(kinds)
    return out


def _pooled(figs: dict, key: str) -> float:
    cats = [c for c in figs if not c.startswith("_")]
    if key == "wrong":
        return sum(figs[c]["wrong"] * figs[c]["wn"] for c in cats) / sum(figs[c]["wn"] for c in cats)
    return sum(figs[c][key] * figs[c]["n"] for c in cats) / sum(figs[c]["n"] for c in cats)


SAMPLE = 25  # held-out prompts per category in the default suite; `-m slow` runs all 100


@pytest.fixture(scope="module")
def figures_32() -> dict:
    return _figures(32, per_category=SAMPLE)


def test_clean_renders_are_accepted(figures_32):
    assert _pooled(figures_32, "clean") >= 0.99
    for c in CATEGORIES:
        assert figures_32[c]["clean"] >= 0.96, (c, figures_32[c])


def test_perturbed_renders_are_accepted(figures_32):
    assert _pooled(figures_32, "pert") >= 0.95
    for c in CATEGORIES:
        assert figures_32[c]["pert"] >= 0.88, (c, figures_32[c])


def test_wrong_renders_are_rejected(figures_32):
    assert _pooled(figures_32, "wrong") >= 0.99
    for c in CATEGORIES:
        assert figures_32[c]["wrong"] >= 0.96, (c, figures_32[c])
    # every kind of corruption was exercised
    assert set(figures_32["_kinds"]) == set(CORRUPTIONS)
    assert min(figures_32["_kinds"].values()) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("res", [32, 64])
def test_readme_figures_full(res):
    """The figures the README reports: every category, all 100 held-out prompts."""
    figs = _figures(res, per_category=100)
    for c in CATEGORIES:
        assert figs[c]["clean"] >= 0.99, (c, figs[c])
        assert figs[c]["pert"] >= 0.95, (c, figs[c])
        assert figs[c]["wrong"] >= 0.99, (c, figs[c])


def test_64px_sample():
    rng = np.random.default_rng(1)
    prompts = [load_suite(c, "heldout")[3] for c in CATEGORIES]
    ok = [evaluate(render(sample_layout(parse_prompt(p), rng), 64), p).passed for p in prompts]
    assert sum(ok) >= len(prompts) - 1


def test_verdict_has_per_clause_results():
    p = "a red circle on the left of a blue square"
    left = render([Placed("circle", "red", 0.3, 0.25, 0.5), Placed("square", "blue", 0.3, 0.75, 0.5)])
    right = render([Placed("circle", "red", 0.3, 0.75, 0.5), Placed("square", "blue", 0.3, 0.25, 0.5)])
    good, bad = evaluate(left, p), evaluate(right, p)
    assert isinstance(good, Verdict) and good.passed and good.score == 1.0
    assert not bad.passed and 0.0 < bad.score < 1.0
    failed = [c for c, ok in bad.clauses if not ok]
    assert failed == ["a red circle left of a blue square"]
    assert bad.to_dict()["clauses"][0]["ok"] is True


def test_empty_image_fails_every_clause():
    v = evaluate(np.full((32, 32, 3), 0.08, np.float32), "two red circles")
    assert not v.passed and v.score == 0.0


def test_counting_counts():
    objs = [Placed("circle", "green", 0.25, x, 0.5) for x in (0.15, 0.5, 0.85)]  # >= 3 px apart
    img = render(objs)
    assert evaluate(img, "three green circles").passed
    assert not evaluate(img, "two green circles").passed
    assert not evaluate(img, "four green circles").passed
    assert len(find_objects(img)) == 3


def test_input_types_agree():
    rng = np.random.default_rng(0)
    p = "a large striped orange cross below a small cyan triangle"
    img = render(sample_layout(parse_prompt(p), rng))
    as_u8 = to_uint8(img)
    results = {
        "float": evaluate(img, p).clauses,
        "uint8": evaluate(as_u8, p).clauses,
        "pil": evaluate(Image.fromarray(as_u8), p).clauses,
        "torch": evaluate(torch.from_numpy(img).permute(2, 0, 1), p).clauses,
    }
    assert all(all(ok for _, ok in v) for v in results.values()), results


def test_bad_image_and_prompt():
    with pytest.raises(ValueError, match="square RGB image"):
        evaluate(np.zeros((32, 16, 3)), "a red circle")
    with pytest.raises(PromptError, match="hexagon"):
        evaluate(np.zeros((32, 32, 3)), "a red hexagon")


def test_truth_agrees_with_layout():
    rng = np.random.default_rng(3)
    for category in CATEGORIES:
        for p in load_suite(category, "heldout")[:5]:
            scene = parse_prompt(p)
            assert truth(scene, sample_layout(scene, rng)), p


def test_suite_items_offset():
    """`offset` skips the first prompts of each suite (e.g. ReNO comparisons on unused prompts)."""
    from compalign.world.quality import suite_items
    from compalign.world.suites import load_suite

    cats = ["spatial", "non_spatial"]
    got = suite_items(cats, 3, "train", offset=150)
    assert got == [(c, p) for c in cats for p in load_suite(c, "train")[150:153]]
    assert suite_items(cats, 2) == suite_items(cats, 2, "heldout", 0)
    assert suite_items(["spatial"], None, "heldout", offset=95) == [
        ("spatial", p) for p in load_suite("spatial", "heldout")[95:]
    ]


def test_relation_given_objects_separates_drawing_from_placing():
    """Records of relation prompts say whether the objects were drawn and, apart, whether they
    were placed; `summarize` turns them into `objects` and `relation_given_objects`."""
    from compalign.world.quality import judge_clauses, summarize

    rng = np.random.default_rng(0)
    prompt = "a red circle on the left of a blue square"
    placed = to_uint8(render(sample_layout(parse_prompt(prompt), rng)))
    swapped = to_uint8(render(sample_layout(parse_prompt("a red circle on the right of a blue square"), rng)))
    empty = np.zeros_like(placed)
    single = to_uint8(render(sample_layout(parse_prompt("a red circle"), rng)))
    got = judge_clauses(np.stack([placed, swapped, empty, single]), [prompt, prompt, prompt, "a red circle"])
    assert got[0] == (True, 1.0, True, True)
    assert got[1][0] is False and got[1][2:] == (True, False)
    assert got[2][2:] == (False, False)
    assert got[3] == (True, 1.0, True, None)  # no relation: nothing to place
    records = [
        {"category": c, "passed": ok, "score": s, "objects_ok": o, "relations_ok": r}
        for c, (ok, s, o, r) in zip(["spatial"] * 3 + ["single_object"], got, strict=True)
    ]
    out = summarize(records)["categories"]
    assert out["spatial"]["objects"] == pytest.approx(2 / 3)
    assert out["spatial"]["relation_given_objects"] == pytest.approx(1 / 2)
    assert "objects" not in out["single_object"]


def test_gallery_spread_names_each_aspects_ends_and_who_is_best_everywhere():
    from compalign.world.quality import format_spread, gallery_spread

    def res(name, attr, spat, nons):
        return {
            "model": name,
            "aspects": {
                "attribute_binding": attr,
                "spatial_relationship": spat,
                "non_spatial_relationship": nons,
            },
        }

    specialists = [res("web", 0.4, 0.1, 0.1), res("attr", 0.8, 0.2, 0.1), res("spat", 0.5, 0.6, 0.15)]
    s = gallery_spread(specialists)
    assert s["aspects"]["attribute_binding"] == {"best": "attr", "worst": "web", "span": 40.0}
    assert s["aspects"]["spatial_relationship"]["span"] == 50.0
    assert s["best_in_all"] == []
    assert "best in every aspect: no model" in format_spread(s)
    s = gallery_spread([*specialists, res("ref", 0.9, 0.7, 0.5)])
    assert s["best_in_all"] == ["ref"] and s["aspects"]["non_spatial_relationship"]["worst"] == "web"
    # an aspect some model was not measured on is left out
    partial = {"model": "p", "aspects": {"attribute_binding": 0.3}}
    assert list(gallery_spread([*specialists, partial])["aspects"]) == ["attribute_binding"]

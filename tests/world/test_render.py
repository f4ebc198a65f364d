"""Layout sampler and renderer."""

from __future__ import annotations

import numpy as np
import pytest

from compalign.world import suites
from compalign.world.grammar import COLORS, parse_prompt
from compalign.world.layout import LayoutError, sample_layout
from compalign.world.perturb import truth
from compalign.world.render import BACKGROUND, Placed, render, to_uint8


@pytest.mark.parametrize("res", [32, 64])
def test_render_shape_dtype_range(res):
    scene = parse_prompt("a red circle on the left of a striped blue square")
    img = render(sample_layout(scene, np.random.default_rng(0)), res)
    assert img.shape == (res, res, 3)
    assert img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    u8 = to_uint8(img)
    assert u8.dtype == np.uint8 and u8.shape == (res, res, 3)


def test_render_rejects_tiny_resolution():
    with pytest.raises(ValueError):
        render([], 8)


@pytest.mark.parametrize("res", [32, 64])
def test_anti_aliasing(res):
    img = render([Placed("circle", "red", 0.46, 0.5, 0.5)], res)
    red = img[..., 0]
    lo, hi = BACKGROUND[0], COLORS["red"][0]
    assert np.isclose(red, lo).any() and np.isclose(red, hi).any()
    edge = (red > lo + 0.02) & (red < hi - 0.02)
    assert edge.sum() >= 8  # a ring of blended pixels around the disc


def test_same_seed_same_image():
    scene = parse_prompt("three small green triangles and a large striped purple circle")
    a = render(sample_layout(scene, np.random.default_rng(5)), 32)
    b = render(sample_layout(scene, np.random.default_rng(5)), 32)
    c = render(sample_layout(scene, np.random.default_rng(6)), 32)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("category", suites.CATEGORIES)
def test_layouts_satisfy_their_scene(category):
    prompts = suites.load_suite(category, "heldout")[:15]
    for i, prompt in enumerate(prompts):
        scene = parse_prompt(prompt)
        objects = sample_layout(scene, np.random.default_rng(i))
        assert len(objects) == scene.n_objects
        assert truth(scene, objects), prompt
        for o in objects:  # inside the canvas
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, prompt


@pytest.mark.parametrize(
    "prompt",
    [
        "a large circle inside a small square",  # the container is smaller than its content
        "a large square inside a small circle",
        "four large squares",  # 2 x 0.46 of the side plus a gap does not fit
    ],
)
def test_impossible_scene_raises_layout_error(prompt):
    with pytest.raises(LayoutError):
        sample_layout(parse_prompt(prompt), np.random.default_rng(0))

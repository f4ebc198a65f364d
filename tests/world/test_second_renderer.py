"""The second renderer obeys its meanings, and the exact evaluator's figures on it (fast and full).

(a) geometry: true layouts, near-threshold wrong layouts and drawings measured independently of the
layout code (per-object masks drawn at 256 px); (b) a fast sample of the evaluator figures with
loose targets; (c) `-m slow`: the full figures against the targets of the evaluator's issue.
"""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
from matplotlib.path import Path
from scipy import ndimage

from compalign.world.grammar import COLORS, SIZES, parse_prompt
from compalign.world.suites import CATEGORIES, load_suite

from . import figures
from . import second_renderer as sr

_TILT = np.cos(np.radians(sr.ROTATION)) + np.sin(np.radians(sr.ROTATION))  # bbox / width, turned
FINE = 256  # resolution of the independent raster measurements (1 px at 32 = 8 px here)


def _mask(o: sr.Obj, res: int = FINE) -> np.ndarray:
    """Pixels of one object drawn alone, point-sampled."""
    solo = sr.Obj(**{**o.__dict__, "rgb": (1.0, 1.0, 1.0), "striped": False})
    return sr.draw([solo], res, "point", (0.0, 0.0, 0.0)).max(-1) > 0.5


def _raster_gap(a: sr.Obj, b: sr.Obj) -> float:
    """Gap between two drawn objects in px of a 32-px image (0 if they meet)."""
    ma, mb = _mask(a), _mask(b)
    if (ma & mb).any():
        return 0.0
    # distance between pixel centres minus one pixel: the gap between the pixel squares
    return max(0.0, float(ndimage.distance_transform_edt(~mb)[ma].min()) - 1) * 32 / FINE


def _raster_width(o: sr.Obj) -> float:
    xs = np.nonzero(_mask(o).any(0))[0]
    return (xs.max() - xs.min() + 1) / FINE


def _scenes(per_category: int = 3) -> list:
    return [parse_prompt(p) for c in CATEGORIES for p in load_suite(c, "heldout")[:per_category]]


def _with(kind: str, per_category: int = 40) -> list:
    """Held-out scenes to which the wrong kind applies."""
    rng = np.random.default_rng(0)
    return [s for s in _scenes(per_category) if sr.wrong_plan(s, kind, rng) is not None]


# --------------------------------------------------------------------------------------------
# (a) geometry


def test_offset_polygon_moves_every_edge():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    for p in (square, square[::-1]):
        grown = sr.offset_polygon(p, 0.1)
        assert np.allclose(sorted(grown[:, 0]), [-0.1, -0.1, 1.1, 1.1])
        assert np.allclose(sorted(sr.offset_polygon(p, -0.1)[:, 1]), [0.1, 0.1, 0.9, 0.9])


def test_drawing_matches_the_geometry():
    rng = np.random.default_rng(1)
    centres = (np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1).reshape(-1, 2) + 0.5) / 32
    for shape, style in itertools.product(sr.GRAMMAR_SHAPES, sr.STYLES):
        o = sr.make_object(shape, 0.35, rng, color="red").moved(*rng.uniform(0.3, 0.7, 2))
        width = o.bbox[2] - o.bbox[0]  # the drawn width is the polygon's, turned by up to 4 degrees
        assert abs(_raster_width(o) - width) <= 2 / FINE
        assert 0.99 * 0.35 <= width <= 0.35 * _TILT + 1e-9
        if shape in ("square", "rectangle"):  # the size is the shape's own width (its side)
            assert abs(np.linalg.norm(o.local[1] - o.local[0]) - 0.35) < 1e-9
        img = sr.draw([o], 32, style, (0.0, 0.0, 0.0))
        covered = img.max(-1).sum() / max(o.rgb)  # in px
        if style == "aa":  # coverage = the polygon's area
            exact = abs(sr._signed_area(o.polygon)) * 32**2
            assert abs(covered - exact) <= 0.03 * exact, (shape, covered, exact)
        else:  # exactly the pixels whose centre lies inside
            inside = Path(o.polygon).contains_points(centres).sum()
            assert abs(covered - inside) <= 1, (shape, covered, inside)
    # point sampling: every pixel is exactly the background or the object colour
    img = sr.draw([o], 32, "point", (0.1, 0.1, 0.1))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) == 2


def test_grow_widens_by_one_pixel():
    """Growing is a round dilation by half a pixel: the bounding box grows by exactly 1 px and the
    area by the Steiner formula (perimeter x 0.5 px + pi x 0.25 px^2), whatever the corners."""
    rng = np.random.default_rng(2)
    for shape in ("square", "triangle"):
        o = sr.make_object(shape, 0.35, rng, color="blue").moved(0.5, 0.5)
        n = 64 * sr.SUPERSAMPLE["aa"]
        widths, areas = [], []
        for grow in (0.0, 1.0):
            xs = np.nonzero(sr._mask(o, n, grow / 64).any(0))[0]
            widths.append((xs.max() - xs.min() + 1) / n * 64)  # in px
            areas.append(sr.draw([o], 64, "aa", (0.0, 0.0, 0.0), grow=grow).max(-1).sum() / max(o.rgb))
        p = o.polygon * 64
        perimeter = float(np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1).sum())
        assert abs(widths[1] - widths[0] - 1.0) <= 1.5 / sr.SUPERSAMPLE["aa"], (shape, widths)
        steiner = perimeter * 0.5 + np.pi * 0.25
        assert abs(areas[1] - areas[0] - steiner) <= 0.1 * steiner, (shape, areas, steiner)


def test_true_layouts_obey_the_meaning():
    rng = np.random.default_rng(3)
    for scene in _scenes(4):
        for pad in (0.0, 1 / 32):
            objects = sr.true_layout(scene, rng, pad=pad)
            assert sr.check_true(scene, objects, pad) == []
            assert sr.holds(scene, objects)
            for o in objects:
                lo, hi = (SIZES[o.size] * f for f in sr.SIZE_JITTER)
                assert lo - 1e-9 <= o.extent <= hi + 1e-9
                assert 0.99 * o.extent <= o.bbox[2] - o.bbox[0] <= o.extent * _TILT + 1e-9
            for r in scene.relations:
                a, b = (next(o for o in objects if o.entity == i) for i in (r.subject, r.object))
                if r.kind in ("touching", "on top of"):
                    assert sr.outline_distance(a, b) <= 0.5 * sr.PX + 1e-6
                    assert _raster_gap(a, b) <= 0.5 + 2 * 32 / FINE
                if r.kind == "inside":
                    assert sr.contains(b, a) and sr.inner_margin(b, a) >= 2 * sr.PX
            for a, b in itertools.combinations(objects, 2):
                linked = {frozenset((r.subject, r.object)) for r in scene.relations}
                if frozenset((a.entity, b.entity)) not in linked:
                    assert sr.bbox_gap(a, b) >= 2 * sr.PX + pad - 1e-9


def test_true_layouts_reach_the_border_and_close_pairs():
    rng = np.random.default_rng(4)
    edge = close = 0
    for scene in _scenes(4):
        objects = sr.true_layout(scene, rng)
        edge += any(min(o.bbox[:2]) < 1e-9 or max(o.bbox[2:]) > 1 - 1e-9 for o in objects)
        close += any(sr.bbox_gap(a, b) <= 3 * sr.PX + 1e-9 for a, b in itertools.combinations(objects, 2))
    assert edge >= 5 and close >= 5


def test_colours_and_background_stay_in_their_families():
    rng = np.random.default_rng(5)
    for name, rgb in COLORS.items():
        h0, s0, v0 = colorsys.rgb_to_hsv(*rgb)
        for _ in range(20):
            h, s, v = colorsys.rgb_to_hsv(*sr.shade(name, rng))
            dh = min(abs(h - h0), 1 - abs(h - h0)) * 360
            assert dh <= 8 + 1e-6 and 0.85 * s0 - 1e-6 <= s <= s0 + 1e-6 and 0.75 - 1e-6 <= v <= v0 + 1e-6
    for _ in range(50):
        bg = np.array(sr.random_background(rng))
        assert bg.min() >= 0.01 - 1e-9 and bg.max() <= 0.17 + 1e-9 and np.ptp(bg) <= 0.04 + 1e-9


@pytest.mark.parametrize("kind", ["near_touching", "near_next_to", "near_inside", "near_count", "near_size"])
def test_near_threshold_wrong_scenes_contradict_the_prompt(kind):
    rng = np.random.default_rng(6)
    scenes = _with(kind)[:12]
    assert len(scenes) >= 3, kind
    made = 0
    for scene in scenes:
        objects = sr.wrong_layout(scene, kind, rng)
        if objects is None:
            continue
        made += 1
        assert not sr.holds(scene, objects)
        if kind == "near_touching":
            gaps = [sr.outline_distance(a, b) / sr.PX for a, b in itertools.combinations(objects, 2)]
            near = [g for g in gaps if g <= 4 + 1e-6]
            assert near and all(2 - 1e-6 <= g for g in near), gaps
            a, b = min(itertools.combinations(objects, 2), key=lambda p: sr.outline_distance(*p))
            assert 2 - 2 * 32 / FINE <= _raster_gap(a, b) <= 4 + 2 * 32 / FINE
        if kind == "near_next_to":
            gaps = [sr.bbox_gap(a, b) for a, b in itertools.combinations(objects, 2)]
            assert any(0.26 - 1e-6 <= g <= 0.32 + 1e-6 for g in gaps), gaps
        if kind == "near_inside":
            assert any(
                0 <= sr.outline_distance(a, b) <= 0.5 * sr.PX + 1e-6 and not sr.overlap(a, b)
                for a, b in itertools.combinations(objects, 2)
            )
        if kind == "near_count":
            counted = next(e for e in scene.entities if e.numbered)
            mine = [o for o in objects if o.shape == counted.shape]
            assert abs(len(mine) - counted.count) == 1
            if len(mine) >= 2:
                gaps = [sr.bbox_gap(a, b) / sr.PX for a, b in itertools.combinations(mine, 2)]
                assert 2 - 1e-6 <= min(gaps) <= 3 + 1e-6, gaps
        if kind == "near_size":
            boundary = {round(SIZES[c] * f, 6) for opts in sr.NEAR_SIZES.values() for c, f in opts}
            assert any(round(o.extent, 6) in boundary for o in objects)
    assert made >= 3, kind


@pytest.mark.parametrize("kind", ["swap_colors", "reverse_relation", "swap_shapes", "count_off_by_one"])
def test_classic_wrong_scenes_contradict_the_prompt(kind):
    rng = np.random.default_rng(7)
    made = 0
    for scene in _with(kind, 6)[:12]:
        objects = sr.wrong_layout(scene, kind, rng)
        if objects is not None:
            made += 1
            assert not sr.holds(scene, objects)
    assert made >= 3


def test_drawings_are_deterministic():
    scene = parse_prompt("a small red circle touching a large striped blue square")

    def once() -> list[np.ndarray]:
        rng = np.random.default_rng(8)
        out = [
            sr.render(sr.true_layout(scene, rng), 32, rng),
            sr.render(sr.wrong_layout(scene, "near_touching", rng), 32, rng),
        ]
        return out + [sr.adversarial(k, 32, rng, 0, scene)[0] for k in sr.ADVERSARIAL_KINDS]

    for a, b in zip(once(), once(), strict=True):
        assert np.array_equal(a, b)


def test_adversarial_images():
    rng = np.random.default_rng(9)
    for res in (32, 64):
        for kind in sr.ADVERSARIAL_KINDS[:-1]:
            img, desc = sr.adversarial(kind, res, rng, index=3)
            assert (
                img.shape == (res, res, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
            ), desc
    names = {sr.adversarial("uniform", 32, rng, i)[1] for i in range(11)}
    assert len(names) == 11
    img, _ = sr.adversarial("uniform", 32, rng, 0)
    assert np.ptp(img.reshape(-1, 3), axis=0).max() == 0
    shapes = {sr.adversarial("off_grammar", 32, rng, i)[1].split()[-1] for i in range(5)}
    assert shapes == set(sr.OFF_GRAMMAR)
    noise, _ = sr.adversarial("colour_noise", 32, rng)
    assert noise.min() < 0.02 and noise.max() > 0.98  # stretched to the full range


def test_many_distractors_keep_the_scene_true():
    rng = np.random.default_rng(10)
    for prompt in load_suite("single_object", "heldout")[:6]:
        scene = parse_prompt(prompt)
        objects = sr.distractor_layout(scene, rng)
        extra = objects[scene.n_objects :]
        assert 8 <= len(extra) <= 10
        assert sr.holds(scene, objects)
        for a, b in itertools.combinations(objects, 2):
            assert sr.bbox_gap(a, b) >= 2 * sr.PX - 1e-9
        e = scene.entities[0]
        assert not any(o.shape == e.shape and e.color in (None, o.color) for o in extra)


# --------------------------------------------------------------------------------------------
# (b) the evaluator on a small sample (loose targets: a good evaluator passes, a broken one fails)


@pytest.fixture(scope="module")
def sample() -> dict:
    rows = [figures.measure_second(c, 32, 6, seed=0, wrong_per_prompt=1) for c in CATEGORIES]
    adv = figures.measure_adversarial(32, 2, seed=0)
    return {"rows": rows, "adversarial": adv}


def test_sample_true_scenes_accepted(sample):
    rows = sample["rows"]
    assert sum(r["n"] for r in rows) >= 70
    assert figures.pooled(rows, "clean_accept") >= 0.95, [(r["category"], r["clean_accept"]) for r in rows]
    assert figures.pooled(rows, "perturbed_accept") >= 0.88, [
        (r["category"], r["perturbed_accept"]) for r in rows
    ]
    many = sample["adversarial"]["many_distractors"]
    assert many["accepted"] == many["n"] >= 2


def test_sample_wrong_scenes_rejected(sample):
    rows = sample["rows"]
    kinds = {k for r in rows for k in r["wrong_by_kind"]}
    assert set(sr.NEAR_KINDS) <= kinds
    assert figures.pooled(rows, "wrong_reject") >= 0.93, [
        f for r in rows for f in r["failures"] if "wrong" in f["kind"]
    ]


def test_sample_adversarial_images_pass_nothing(sample):
    adv = sample["adversarial"]
    assert adv["uniform"]["n"] == 11 and adv["uniform"]["passing_images"] == 0, adv["uniform"]["examples"]
    assert adv["pixel_noise"]["passing_images"] == 0, adv["pixel_noise"]["examples"]
    assert adv["colour_noise"]["single_object_pass_fraction"] <= 0.02, adv["colour_noise"]["examples"]


# --------------------------------------------------------------------------------------------
# (c) the full figures (>= 100 prompts per category, 32 and 64 px)


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
@pytest.mark.parametrize("res", [32, 64])
def test_full_figures_meet_the_targets(res):
    """The issue's targets; on failure the message lists every miss: resolution, renderer,
    category, figure, value, target and by how many points."""
    rows = [
        figures.measure(r, c, res, figures.MIN_PROMPTS, seed=0) for r in figures.RENDERERS for c in CATEGORIES
    ]
    adv = figures.measure_adversarial(res, 40, seed=0)
    misses = figures.target_misses(rows, adv, res)
    assert not misses, f"{len(misses)} targets missed:\n" + "\n".join(misses)

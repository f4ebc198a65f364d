"""`pairs`: preference pairs from ranked galleries (ties, tie-break pairs, split by prompt)."""

from __future__ import annotations

import json

from compalign.gallery.format import load_gallery
from compalign.pairs.make import prompt_split
from compalign.world.suites import load_suite
from tests.factories import read


def test_prompt_split_is_by_prompt():
    for p in load_suite("color", "heldout")[:5]:
        assert prompt_split(p) == "heldout"
    for p in load_suite("color", "train")[:5]:
        assert prompt_split(p) == "train"
    others = [f"a photo of thing number {i}" for i in range(2000)]
    frac = sum(prompt_split(p) == "heldout" for p in others) / len(others)
    assert 0.07 < frac < 0.13
    assert prompt_split(others[0]) == prompt_split(others[0])


def test_pairs_skip_unranked_and_count_per_aspect(cli, gallery_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(gallery_dir, other)
    meta = read(other / "gallery_meta.json")
    meta["aspect"] = "attribute_binding"
    (other / "gallery_meta.json").write_text(json.dumps(meta))
    assert cli("rank", "auto", other, "--tie-break", "none").exit_code == 0
    out = tmp_path / "p.jsonl"
    r = cli("pairs", gallery_dir, other, "--out", out)
    assert r.exit_code == 0, r.output
    assert "spatial_relationship: 0 pairs (train 0, heldout 0) from 0 ranked records" in r.stdout
    assert "4 unranked records" in r.stdout
    assert "attribute_binding: 8 pairs" in r.stdout


def test_pairs_decided_only_drops_tie_break_pairs(gallery_dir, tmp_path):
    from compalign.pairs.make import gallery_pairs, make_pairs

    g = load_gallery(gallery_dir)
    for r in g.records:  # bad and bad2 fail alike; only the tie-break (3rd key) orders them
        scores = {"good": [1, 1.0, 0.9], "bad": [0, 0.5, 0.2], "bad2": [0, 0.5, 0.1]}
        g.set_tiers(r, [["good"], ["bad"], ["bad2"]], scores=scores, source="auto:world")
    rows, counts = gallery_pairs(g)
    assert len(rows) == 3 * len(g.records) and counts["tie_break_skipped"] == 0
    by = {(x["better_model"], x["worse_model"]): x["decided_by"] for x in rows}
    assert by == {("good", "bad"): "evaluator", ("good", "bad2"): "evaluator", ("bad", "bad2"): "tie_break"}
    rows, counts = gallery_pairs(g, decided_only=True)
    assert len(rows) == 2 * len(g.records) == counts["pairs"]
    assert counts["tie_break_skipped"] == len(g.records)
    assert all(x["decided_by"] == "evaluator" for x in rows)
    # a ranking by people (no evaluator verdicts) keeps every pair and has no decided_by
    for r in g.records:
        g.set_tiers(r, [["good"], ["bad"], ["bad2"]], source="people")
    rows, _ = gallery_pairs(g, decided_only=True)
    assert len(rows) == 3 * len(g.records) and all("decided_by" not in x for x in rows)
    g.save()
    counts = make_pairs([gallery_dir], tmp_path / "p.jsonl", decided_only=True)
    assert counts["spatial_relationship"]["pairs"] == 3 * len(g.records)

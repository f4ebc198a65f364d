"""`rank auto`: the world judge, tie-breaks, fallback and reward judges."""

from __future__ import annotations

import json

from compalign.gallery.format import load_gallery
from compalign.rewards.base import Reward
from compalign.world.suites import load_suite
from tests.factories import read


def test_world_judge_with_explicit_ties(cli, gallery_dir, tmp_path):
    r = cli("rank", "auto", gallery_dir, "--tie-break", "none")
    assert r.exit_code == 0, r.output
    data = read(gallery_dir / "gallery.json")
    # models (bad, good, bad2): good passes; the two black images are equal -> a tie
    assert all(d["rank"] == [2, 1, 3] for d in data)
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert ranks["method"] == "auto" and ranks["judge"] == "world" and ranks["tie_break"] == "none"
    assert ranks["records"]["0"]["rank_ties"] == [[1, 3]]
    assert ranks["records"]["0"]["scores"]["good"] == [1, 1.0]
    out = tmp_path / "pairs.jsonl"
    r = cli("pairs", gallery_dir, "--out", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 * 2  # good > bad, good > bad2 per record; the tie gives nothing
    assert {(x["better_model"], x["worse_model"]) for x in rows} == {("good", "bad"), ("good", "bad2")}
    assert set(rows[0]) == {
        "aspect",
        "index",
        "prompt",
        "better",
        "worse",
        "better_model",
        "worse_model",
        "split",
        "decided_by",
    }
    assert {x["decided_by"] for x in rows} == {"evaluator"}  # good passes, the black images do not
    assert rows[0]["aspect"] == "spatial_relationship"
    # split by prompt: the 4th prompt is a held-out suite prompt, the others train prompts
    assert {x["split"] for x in rows if x["index"] == 3} == {"heldout"}
    assert {x["split"] for x in rows if x["index"] != 3} == {"train"}
    assert (
        "spatial_relationship: 8 pairs (train 6, heldout 2) from 4 ranked records; 4 tied pairs" in r.stdout
    )
    assert rows[0]["better"].endswith("images/good/00000.png") and rows[0]["better"].startswith("/")
    r = cli("pairs", gallery_dir, "--out", out, "--paths", "relative")
    assert json.loads(out.read_text().splitlines()[0])["better"] == "g/images/good/00000.png"


def test_world_clip_tie_break_and_fallback(cli, gallery_dir, monkeypatch):
    import compalign.ranking.auto as auto

    def missing(spec, device):  # what create_reward raises without weights (a LookupError)
        raise LookupError("world-clip is not trained yet (no weights in x); train it")

    monkeypatch.setattr(auto, "_create_reward", missing)
    r = cli("rank", "auto", gallery_dir)
    assert r.exit_code == 0, r.output
    assert "world-clip weights missing" in r.stderr
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert "model order" in ranks["tie_break"] and ranks["records"]["1"]["rank_ties"] == [[1, 3]]
    monkeypatch.undo()

    class Brightness(Reward):  # a stand-in world-clip: identical images score the same
        def forward(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    monkeypatch.setattr(auto, "_create_reward", lambda spec, device: Brightness())
    r = cli("rank", "auto", gallery_dir)
    assert r.exit_code == 0, r.output
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert ranks["tie_break"] == "world-clip" and ranks["keys"] == ["passed", "clause_score", "world_clip"]
    assert ranks["records"]["0"]["rank_ties"] == [[1, 3]]  # the black images are still exactly equal


def test_reward_judge(cli, gallery_dir):
    from compalign.rewards.registry import register_reward

    class Red(Reward):
        def forward(self, images, prompts):
            return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))

    register_reward("test-red", lambda device=None: Red(), overwrite=True)
    r = cli("rank", "auto", gallery_dir, "--judge", "reward:test-red")
    assert r.exit_code == 0, r.output
    g = load_gallery(gallery_dir)
    assert g.ranks["judge"] == "reward:test-red"
    for rec in g.records:
        assert len(g.tiers(rec)) >= 2
    r = cli("rank", "auto", gallery_dir, "--judge", "reward:no-such-reward")
    assert r.exit_code == 2 and "unknown reward 'no-such-reward'" in r.stderr
    r = cli("rank", "auto", gallery_dir, "--judge", "oracle")
    assert r.exit_code == 2 and "unknown --judge" in r.stderr


def test_world_judge_refuses_non_world_prompts(cli, tmp_path):
    from tests.factories import build_gallery

    g = build_gallery(tmp_path / "g", prompts=[load_suite("spatial", "train")[0]])
    data = read(g.gallery_file)
    data.append({**data[0], "index": 1, "prompt": "a photo of an astronaut riding a horse"})
    g.gallery_file.write_text(json.dumps(data))
    meta = read(g.meta_file)
    meta["seeds"]["1"] = 1
    g.meta_file.write_text(json.dumps(meta))
    r = cli("rank", "auto", g.root)
    assert r.exit_code == 2 and "record index 1, field prompt: not a world prompt" in r.stderr

"""`gallery expand`: auto re-ranking, IterComp format after expansion, imported galleries."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from compalign.gallery.format import load_gallery
from tests.factories import itercomp_tree, read, snapshot


def test_expand_auto_reranks_all(cli, gallery_dir, tiny_models):
    assert cli("rank", "auto", gallery_dir, "--tie-break", "none").exit_code == 0
    r = cli(
        "gallery", "expand", gallery_dir, "--add-model", f"n1={tiny_models[0]}", f"n2={tiny_models[1]}",
        "--steps", "1",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "re-ranked by world" in r.stderr
    data = read(gallery_dir / "gallery.json")
    for d in data:
        assert d["initial_rank"] == [2, 1, 3]
        assert sorted(d["rank"]) == [1, 2, 3, 4, 5] and d["rank"][0] == 2  # the exact render stays first
        assert list(d)[-2:] == ["initial_rank", "rank"]
        assert d["image_n2"] == f"images/n2/{d['index']:05d}.png"
    g = load_gallery(gallery_dir)
    assert g.models == ["bad", "good", "bad2", "n1", "n2"]
    assert g.ties(0, "initial_rank_ties") == [[1, 3]]
    assert [h["event"] for h in g.meta["history"]][-2:] == ["expand", "rank-auto"]
    # the new images use each record's own seed
    from compalign.generators import create_generator
    from compalign.generators.generate import to_uint8

    gen = create_generator(tiny_models[0], device="cpu")
    ref = to_uint8(gen.generate([data[2]["prompt"]], seeds=[2], num_inference_steps=1))[0]
    assert np.array_equal(np.asarray(Image.open(gallery_dir / "images/n1/00002.png")), ref)
    # adding a model already there is refused, nothing written
    before = snapshot(gallery_dir)
    r = cli("gallery", "expand", gallery_dir, "--add-model", f"n1={tiny_models[0]}")
    assert r.exit_code == 2 and "'n1' given twice (or already in the gallery)" in r.stderr
    r = cli("gallery", "expand", gallery_dir, "--add-model", "no-such-model")
    assert r.exit_code == 2 and "unknown model" in r.stderr
    assert snapshot(gallery_dir) == before


def test_expand_imported_itercomp_gallery(cli, tmp_path, tiny_models):
    root = tmp_path / "repo"
    f = itercomp_tree(root)
    assert cli("gallery", "import", f, "--root", root).exit_code == 0
    before = snapshot(root)
    r = cli("gallery", "expand", root, "--add-model", f"it1={tiny_models[0]}", "--steps", "1")
    assert r.exit_code == 2 and "give --seed S" in r.stderr and snapshot(root) == before
    r = cli("gallery", "expand", root, "--add-model", f"it1={tiny_models[0]}", "--steps", "1", "--seed", "0")
    assert r.exit_code == 0, r.output
    # imported IterComp ranks are people's ranks: the new model waits for insertion comparisons
    assert "3 records wait for comparisons" in r.stderr
    data = read(root / "gallery.json")
    assert data[0]["initial_rank"] == [3, 1, 2] and "rank" not in data[0]
    assert data[1]["image_it1"] == "images/it1/00007.png"
    from compalign.ranking.store import DB_FILE, RankingStore

    jobs = RankingStore(root / DB_FILE).jobs()
    assert [(j.index, j.base, j.new_models) for j in jobs][0] == (0, [["sd3"], ["sd15"], ["sdxl"]], ["it1"])
    g = load_gallery(root)
    assert g.meta["seeds"] == {"0": 0, "7": 7, "14": 14}


def test_expand_none_mode(cli, gallery_dir, tiny_models):
    assert cli("rank", "auto", gallery_dir, "--tie-break", "none").exit_code == 0
    r = cli(
        "gallery",
        "expand",
        gallery_dir,
        "--add-model",
        f"x={tiny_models[0]}",
        "--rank",
        "none",
        "--steps",
        "1",
    )
    assert r.exit_code == 0, r.output
    data = read(gallery_dir / "gallery.json")
    assert all("rank" not in d and d["initial_rank"] == [2, 1, 3] for d in data)


def test_expand_judges_only_new_images(cli, gallery_dir, tiny_models):
    import shutil

    assert cli("rank", "auto", gallery_dir, "--tie-break", "none").exit_code == 0
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert ranks["judged_keys"] == ["passed", "clause_score"]
    assert ranks["records"]["0"]["judged"]["good"] == [1, 1.0]
    # plant a wrong stored verdict: a reused verdict shows in the new ranking, a rejudged one does not
    ranks["records"]["0"]["judged"]["bad"] = [1, 1.0]
    (gallery_dir / "gallery_ranks.json").write_text(json.dumps(ranks))
    twin = gallery_dir.parent / "twin"
    shutil.copytree(gallery_dir, twin)
    r = cli("gallery", "expand", gallery_dir, "--add-model", f"n1={tiny_models[0]}", "--steps", "1",
            "--tie-break", "none")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "12 image(s) kept the verdicts stored by the last ranking; 4 judged" in r.stderr
    after = read(gallery_dir / "gallery_ranks.json")
    assert after["records"]["0"]["scores"]["bad"] == [1, 1.0]  # reused, not judged again
    assert set(after["records"]["0"]["judged"]) == {"bad", "good", "bad2", "n1"}
    # --rejudge judges every image again
    r = cli("rank", "auto", gallery_dir, "--tie-break", "none", "--rejudge")
    assert r.exit_code == 0 and "kept the verdicts" not in r.stderr
    assert read(gallery_dir / "gallery_ranks.json")["records"]["0"]["scores"]["bad"] == [0, 0.0]
    # other key names (a world-clip tie-break now): nothing is reused
    r = cli("rank", "auto", twin)
    assert r.exit_code == 0 and "kept the verdicts" not in r.stderr
    assert read(twin / "gallery_ranks.json")["records"]["0"]["scores"]["bad"][:2] == [0, 0.0]


def test_a_second_expansion_keeps_the_history_of_initial_rank(cli, gallery_dir, tiny_models):
    assert cli("rank", "auto", gallery_dir, "--tie-break", "none").exit_code == 0
    common = ["--steps", "1", "--tie-break", "none"]
    r = cli("gallery", "expand", gallery_dir, "--add-model", f"n1={tiny_models[0]}", *common)
    assert r.exit_code == 0, r.output
    first = read(gallery_dir / "gallery.json")
    assert all(d["initial_rank"] == [2, 1, 3] for d in first)
    r = cli("gallery", "expand", gallery_dir, "--add-model", f"n2={tiny_models[1]}", *common)
    assert r.exit_code == 0, r.output
    second = read(gallery_dir / "gallery.json")
    ranks = read(gallery_dir / "gallery_ranks.json")
    for d, before in zip(second, first, strict=True):
        assert d["initial_rank"] == before["rank"]  # the rank before this expansion
        history = ranks["records"][str(d["index"])]["initial_rank_history"]
        assert history == [
            {"models": ["bad", "good", "bad2"], "rank": [2, 1, 3], "ties": [[1, 3]]}
        ]  # bad = bad2
    g = load_gallery(gallery_dir)
    assert g.models == ["bad", "good", "bad2", "n1", "n2"]
    # without a rank (--rank none), a third expansion keeps the initial rank it has
    r = cli(
        "gallery", "expand", gallery_dir, "--add-model", f"n3={tiny_models[0]}", "--rank", "none", *common
    )
    assert r.exit_code == 0, r.output
    r = cli(
        "gallery", "expand", gallery_dir, "--add-model", f"n4={tiny_models[1]}", "--rank", "none", *common
    )
    assert r.exit_code == 0, r.output
    third = read(gallery_dir / "gallery.json")
    assert [d["initial_rank"] for d in third] == [d["rank"] for d in second]
    assert all("rank" not in d for d in third)
    assert len(read(gallery_dir / "gallery_ranks.json")["records"]["0"]["initial_rank_history"]) == 2

"""`benchmarks/itercomp_world.py`: the side-by-side rows of the IterComp study, measured by the
loop (in-process ``compalign iterate``), the headroom probe and a reference evaluation."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from tests.factories import load_script
from tests.iterate.conftest import iterate_args

bench = load_script("itercomp_world", "benchmarks")
SET_BY_BENCH = {"--workdir": 1, "--eval-per-category": 1, "--eval-seeds": 1}


def loop_options(env: dict) -> list[str]:
    """The tiny loop's options without those the benchmark sets."""
    args = [str(a) for a in iterate_args(env, "unused")[1:]]
    out, i = [], 0
    while i < len(args):
        if args[i] in SET_BY_BENCH:
            i += 1 + SET_BY_BENCH[args[i]]
            continue
        out.append(args[i])
        i += 1
    return out


def write_samples(file, prompts: list[str], cats: list[str], passed: list[bool]) -> None:
    """A headroom sample cache: exact renders of `prompts`, with the verdicts given."""
    from compalign.world import parse_prompt, render, sample_layout, to_uint8

    images = [to_uint8(render(sample_layout(parse_prompt(p), np.random.default_rng(0)), 32)) for p in prompts]
    file.parent.mkdir(parents=True)
    np.savez(
        file, images=np.stack(images), prompts=np.array(prompts), cats=np.array(cats),
        passed=np.array(passed), score=np.ones(len(prompts)),
    )  # fmt: skip


def test_rows_come_from_the_loop_and_agree_with_a_direct_evaluation(env, tmp_path, capsys):
    out = tmp_path / "itercomp.json"
    argv = [
        "--root", str(tmp_path / "root"), "--train-seeds", "0", "--per-category", "1", "--eval-seeds", "0",
        "--no-headroom", "--reference", str(env["base"]), "--json", str(out), "--md", str(tmp_path / "t.md"),
        "--", *loop_options(env), "--no-eval-gallery",
    ]  # fmt: skip
    bench.main(argv)
    first = capsys.readouterr()
    assert "generating and judging" in first.out + first.err
    res = json.loads(out.read_text())
    rows = {r["row"]: r for r in res["rows"]}
    state = json.loads((tmp_path / "root" / "seed0" / "state.json").read_text())
    assert state["iterations"]["1"]["evaluate"]["outputs"]["order"] == ["tinybase", "iter1"]  # no gallery
    assert list(rows) == ["world-web", "iter1", "iter1+reno", "reference"]
    assert res["protocol"]["per_category"] == 1 and res["protocol"]["seeds"] == [0]
    assert res["protocol"]["categories"] == ["color", "spatial", "non_spatial", "single_object"]
    # the base measured by the loop's evaluate stage == the same model evaluated by the benchmark
    assert rows["world-web"]["categories"] == rows["reference"]["categories"]
    assert rows["world-web"]["train_seed"] is None and rows["iter1"]["train_seed"] == 0
    assert set(rows["iter1"]["aspects"]) == {
        "attribute_binding",
        "spatial_relationship",
        "non_spatial_relationship",
    }
    mean = np.mean(list(rows["iter1"]["aspects"].values()))
    assert rows["iter1"]["aspect_mean"] == pytest.approx(mean, abs=0.01)
    assert rows["iter1"]["settings"]["iteration_minutes"] >= 0
    diag = rows["iter1"]["diagnostics"]
    assert set(diag) == set(rows["iter1"]["aspects"])
    assert all(0 <= d["reward_heldout_pair_accuracy"] <= 1 for d in diag.values())
    aim = res["aims"]["iter1 - world-web (mean of the aspects)"]
    assert aim["figure"] == pytest.approx(
        rows["iter1"]["aspect_mean"] - rows["world-web"]["aspect_mean"], abs=0.01
    )
    assert aim["met"] == (aim["figure"] >= 10)
    assert res["aims"]["iter2 - iter1"]["met"] is None  # one iteration: no iter2 row
    assert "| iter1 | 0 |" in (tmp_path / "t.md").read_text()

    # a second run only reads back what was measured (the loop resumes; the reference is cached)
    bench.main(argv)
    again = json.loads(out.read_text())
    assert [r["categories"] for r in again["rows"]] == [r["categories"] for r in res["rows"]]
    second = capsys.readouterr()
    assert "generating and judging" not in second.out + second.err


def test_headroom_finetunes_on_passing_samples_only(env, tmp_path):
    from compalign.world.suites import load_suite

    args = argparse.Namespace(
        root=tmp_path, headroom_categories=["color", "spatial"], headroom_prompts=2, headroom_samples=1,
        headroom_steps=2, headroom_lr=1e-4, headroom_balanced=False, headroom_text_encoder=True,
        protocol={"split": "heldout", "per_category": 1, "seeds": [0]},
    )  # fmt: skip
    cats = ["color", "single_object"]
    cfg, samples_file, out = bench.headroom_setup(args, str(env["base"]), cats, seed=0)
    assert cfg.categories == ["color", "spatial"] and cfg.seed == 0 and cfg.train_text_encoder
    # the sample cache: exact renders of the train prompts, half of them marked failing
    prompts = [p for c in cfg.categories for p in load_suite(c, "train")[:2]]
    write_samples(samples_file, prompts, ["color", "color", "spatial", "spatial"], [True, False, True, False])
    res = bench.headroom(args, str(env["base"]), cats, seed=0)
    assert res["settings"]["passing_samples"] == 2 and res["settings"]["samples"] == 4
    assert set(res["categories"]) == set(cats)
    assert out.is_file() and bench.headroom(args, str(env["base"]), cats, seed=0) == json.loads(
        out.read_text()
    )
    # another seed is another probe (another result file), on the same samples
    assert bench.headroom_setup(args, str(env["base"]), cats, seed=1)[1:] != (samples_file, out)
    assert bench.headroom_setup(args, str(env["base"]), cats, seed=1)[1] == samples_file


def test_options_it_sets_itself_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--root", str(tmp_path), "--", "--workdir", str(tmp_path / "w")])
    assert "set by this command" in capsys.readouterr().err


def test_headroom_only_measures_the_base_and_its_probe_without_a_loop(env, tmp_path, capsys):
    out = tmp_path / "headroom.json"
    argv = [
        "--root", str(tmp_path / "root"), "--train-seeds", "0", "--per-category", "1", "--eval-seeds", "0",
        "--headroom-only", str(env["base"]), "--headroom-categories", "color", "--headroom-prompts", "2",
        "--headroom-samples", "1", "--headroom-steps", "1", "--json", str(out),
    ]  # fmt: skip
    # the tiny base passes nothing: its sample cache holds exact renders, one of them passing
    from compalign.world.suites import load_suite

    ns = argparse.Namespace(
        root=tmp_path / "root", headroom_categories=["color"], headroom_prompts=2, headroom_samples=1,
        headroom_steps=1, headroom_lr=5e-5, headroom_balanced=False, headroom_text_encoder=False,
        protocol={"split": "heldout", "per_category": 1, "seeds": [0]},
    )  # fmt: skip
    samples_file = bench.headroom_setup(ns, str(env["base"]), ["color"], seed=0)[1]
    write_samples(samples_file, load_suite("color", "train")[:2], ["color"] * 2, [True, False])
    bench.main(argv)
    res = json.loads(out.read_text())
    assert [r["row"] for r in res["rows"]] == ["world-web", "headroom"]
    assert not (tmp_path / "root" / "seed0").exists()  # no loop ran
    assert res["rows"][1]["settings"]["samples"] == 2 and res["rows"][1]["settings"]["passing_samples"] == 1
    assert res["aims"]["headroom - world-web"]["figure"] == pytest.approx(
        res["rows"][1]["aspect_mean"] - res["rows"][0]["aspect_mean"], abs=0.01
    )
    assert res["aims"]["iter1 - world-web (mean of the aspects)"]["met"] is None
    with pytest.raises(SystemExit):
        bench.main([*argv, "--", "--iterations", "1"])
    assert "runs no loop" in capsys.readouterr().err

"""Rejection-sampling fine-tuning and the learnability check, on tiny world models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compalign.generators.world.data import make_batch
from compalign.generators.world.generator import WorldGenerator
from compalign.generators.world.rejection_sampling import (
    RejectionSamplingConfig,
    finetune_on_samples,
    passing,
    sample_and_judge,
)
from compalign.generators.world.train import train_world_model
from compalign.world.quality import judge_images
from compalign.world.suites import load_suite
from tests.factories import load_script


def _tiny_generator(make_pipeline) -> WorldGenerator:
    pipe = make_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return WorldGenerator(pipe, name="tiny", device="cpu")


def test_sample_and_judge_judges_train_prompts_and_caches(tmp_path, make_pipeline):
    cfg = RejectionSamplingConfig(
        categories=["colors", "spatial"], prompts_per_category=2, samples_per_prompt=2
    )
    gen = _tiny_generator(make_pipeline)
    cache = tmp_path / "samples.npz"
    s = sample_and_judge(gen, cfg, cache=cache, log=lambda _: None)
    assert s["images"].shape[0] == 8 and s["images"].dtype == np.uint8 and s["images"].shape[-1] == 3
    assert s["prompts"][:4].tolist() == [p for p in load_suite("colors", "train")[:2] for _ in range(2)]
    assert s["cats"].tolist() == ["colors"] * 4 + ["spatial"] * 4
    verdicts = judge_images(s["images"], s["prompts"].tolist())
    assert [tuple(v) for v in zip(s["passed"], s["score"], strict=True)] == verdicts
    mtime = cache.stat().st_mtime_ns
    again = sample_and_judge(gen, cfg, cache=cache)  # read back, not sampled again
    assert cache.stat().st_mtime_ns == mtime and np.array_equal(again["images"], s["images"])
    assert passing({"passed": np.array([False, True, True])}).tolist() == [1, 2]


def test_finetune_on_samples_trains_the_denoiser_on_passing_images(make_pipeline):
    # true renders stand in for a model's passing samples: the evaluator passes them
    batch = make_batch(0, 0, 4, ["spatial"])
    prompts = batch["prompts"]
    images = ((batch["images"] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert all(ok for ok, _ in judge_images(images, prompts))
    pipe = make_pipeline()
    unet0 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    te0 = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    cfg = RejectionSamplingConfig(steps=3, batch_size=2, learning_rate=1e-3, balanced=True)
    losses = finetune_on_samples(
        pipe, images, prompts, cfg, categories=np.array(["spatial"] * 4), log_every=0
    )
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any(not torch.equal(unet0[k], v) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(te0[k], v) for k, v in pipe.text_encoder.state_dict().items())
    with pytest.raises(ValueError, match="no images"):
        finetune_on_samples(pipe, images[:0], [], cfg)
    with pytest.raises(ValueError, match="categories"):
        finetune_on_samples(pipe, images, prompts, cfg)
    with pytest.raises(ValueError, match="steps"):
        RejectionSamplingConfig(steps=0)
    with pytest.raises(KeyError, match="unknown category"):
        RejectionSamplingConfig(categories=["nope"])


def _script():
    return load_script("probe_learnability")


def test_learnability_check_runs_its_three_stages_and_resumes(tmp_path, make_config, capsys):
    final = train_world_model(make_config(tmp_path))
    out = tmp_path / "check"
    argv = [str(out), "--model", str(final), "--check-every", "1", "--forget-max-steps", "2",
            "--recover-steps", "2", "--recover-batch", "2", "--prompts-per-category", "1",
            "--samples-per-prompt", "1", "--per-category", "1", "--eval-seeds", "1",
            "--sample-steps", "2", "--threads", "1"]  # fmt: skip
    report = _script().main(argv)
    cfg = json.loads((out / "forget" / "config.json").read_text())
    assert cfg["captions"] == "no-relations" and cfg["init_from"] == str(final)
    # an untrained model has no relation to lose: the check says so instead of passing
    assert report["forget_steps"] == 2 and [c["step"] for c in report["forget_curve"]] == [1, 2]
    assert report["fall_reached"] is False and report["passed"] is False
    assert set(report["categories"]) == {"base", "forgotten", "recovered"}
    assert report["recovery_samples"]["samples"] == 8  # 8 categories x 1 prompt x 1 seed
    assert "not passed" in (out / "learnability.md").read_text()
    files = sorted((out / "eval").glob("*.json"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert [f.name for f in files] == ["base.json", "forget_1.json", "forget_2.json", "recovered.json"]
    capsys.readouterr()
    assert _script().main(argv)["relation_accuracy"] == report["relation_accuracy"]  # resumed from the cache
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    with pytest.raises(SystemExit):
        _script().main([str(out), "--model", str(tmp_path / "missing")])
    assert "no such folder" in capsys.readouterr().err


def test_learnability_check_on_a_copy_trained_apart(tmp_path, make_config, capsys):
    final = train_world_model(make_config(tmp_path / "m"))
    apart = train_world_model(make_config(tmp_path / "norel", captions="no-relations", seed=1))
    out = tmp_path / "check"
    argv = [str(out), "--model", str(final), "--forgotten", str(apart), "--recover-steps", "2",
            "--recover-batch", "2", "--prompts-per-category", "1", "--samples-per-prompt", "1",
            "--per-category", "1", "--eval-seeds", "1", "--sample-steps", "2", "--threads", "1"]  # fmt: skip
    report = _script().main(argv)
    assert not (out / "forget").exists()  # nothing fine-tuned to forget
    assert report["forgotten_by"] == f"trained apart: {apart}"
    assert report["forget_curve"] == [
        {"step": 4, "relation_accuracy": report["relation_accuracy"]["forgotten"]}
    ]
    assert sorted(f.name for f in (out / "eval").glob("*.json")) == [
        "base.json",
        "forgotten.json",
        "recovered.json",
    ]
    assert "of the copy trained apart" in (out / "learnability.md").read_text()
    with pytest.raises(SystemExit):
        _script().main([str(out), "--model", str(final), "--forgotten", str(tmp_path)])
    assert "not a trained world model" in capsys.readouterr().err

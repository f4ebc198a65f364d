from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compalign.rewards import Reward, WorldCLIPReward, check_inputs
from compalign.rewards.world_clip.evaluate import evaluate_world_clip, format_eval_table
from compalign.rewards.world_clip.model import WorldCLIPArch, WorldCLIPModel, eos_positions
from compalign.rewards.world_clip.negatives import (
    hard_negative_candidates,
    sample_hard_negatives,
)
from compalign.rewards.world_clip.reward import RewardNotTrainedError
from compalign.rewards.world_clip.train import (
    WorldCLIPTrainConfig,
    augment,
    export_world_clip,
    folder_size,
    list_checkpoints,
    train_world_clip,
)
from compalign.world.grammar import parse_prompt
from tests.factories import tiny_world_clip_arch


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory):
    """One tiny scene pool for the session: 2 categories x 32 scenes, shards of 16."""
    return tmp_path_factory.mktemp("clip_pool")


@pytest.fixture(scope="session")
def make_config(pool_dir):
    def make(tmp_path, **kw) -> WorldCLIPTrainConfig:
        base = dict(
            output_dir=str(tmp_path / "run"),
            arch=tiny_world_clip_arch(vision_layers=2, text_layers=2),
            pool_dir=str(pool_dir),
            categories=["colors", "spatial"],
            pool_per_category=32,
            pool_shard_size=16,
            batch_size=16,
            max_steps=20,
            learning_rate=2e-3,
            warmup_steps=2,
            checkpoint_every=10,
            log_every=1,
            eval_per_category=0,
            num_workers=1,
            num_threads=1,
            prefetch=2,
            device="cpu",
            progress=False,
        )
        base.update(kw)
        return WorldCLIPTrainConfig(**base)

    return make


@pytest.fixture(scope="session")
def trained(tmp_path_factory, make_config):
    """A tiny world CLIP trained for 30 steps (the run folder)."""
    run = tmp_path_factory.mktemp("clip_run")
    final = train_world_clip(make_config(run, max_steps=30), resume=False)
    assert final is not None
    return run / "run"


FIXED = [
    "a red circle on the left of a blue square",
    "three green circles",
    "a striped yellow triangle and a small blue cross",
    "a small red circle inside a large blue square and a cyan cross below a green triangle",
    "a circle",
    "a purple square next to an orange rectangle",
]


# ----------------------------------------------------------------------------- hard negatives
@pytest.mark.parametrize("prompt", FIXED)
def test_hard_negatives_parse_and_differ_from_the_truth(prompt):
    truth = parse_prompt(prompt).meaning_key()
    cands = hard_negative_candidates(prompt)
    flat = [n for v in cands.values() for n in v]
    assert flat and len(set(flat)) == len(flat)
    assert len({parse_prompt(n).meaning_key() for n in flat}) == len(flat)  # no two wordings of one
    for n in flat:
        assert parse_prompt(n).meaning_key() != truth
    negs = sample_hard_negatives(prompt, 3, np.random.default_rng(0))
    assert len(negs) == 3 and len(set(negs)) == 3 and set(negs) <= set(flat)
    assert negs == sample_hard_negatives(prompt, 3, np.random.default_rng(0))


def test_hard_negatives_are_never_the_truth_in_another_wording():
    # swapping the colours of two circles next to each other describes the same scene
    c = hard_negative_candidates("a red circle next to a blue circle")
    assert "color_swap" not in c
    flat = {n for v in c.values() for n in v}
    assert "a blue circle next to a red circle" not in flat
    assert "a red circle next to a green circle" in c["color"]


def test_hard_negatives_reverse_relations_and_edit_attributes():
    c = hard_negative_candidates("a red circle on the left of a blue square")
    # the reverse relation is the swapped scene in another wording: kept once, as the swap
    assert c["relation"] == ["a red circle above a blue square", "a red circle below a blue square"]
    assert c["relation_swap"] == ["a blue square on the left of a red circle"]
    assert c["color_swap"] == ["a blue circle on the left of a red square"]
    assert "a green circle on the left of a blue square" in c["color"]
    assert "a red triangle on the left of a blue square" in c["shape"]
    inside = hard_negative_candidates("a small red circle inside a large blue square")
    assert inside["relation_swap"] == ["a large blue square inside a small red circle"]
    # the container keeps a shape that can hold something
    assert all(parse_prompt(p).entities[1].shape in ("circle", "square") for p in inside["shape"][-1:])
    # symmetric relations are not swapped
    assert "relation_swap" not in hard_negative_candidates("a purple square next to an orange rectangle")
    assert set(hard_negative_candidates("three green circles")["count"]) == {
        "two green circles",
        "four green circles",
    }
    assert hard_negative_candidates("a striped yellow triangle")["texture"] == ["a solid yellow triangle"]


# ----------------------------------------------------------------------------- model
def test_text_pooling_picks_the_eos_token():
    model = WorldCLIPModel.from_arch(WorldCLIPArch(text_hidden=32, text_layers=1, text_heads=2), seed=0)
    assert model.clip.config.text_config.eos_token_id == model.eos_id == 2
    prompts = ["a red circle", "a red circle on the left of a blue square"]
    ids, mask = model.token_ids(prompts)
    pos = eos_positions(ids, 2)
    assert pos.tolist() == [4, 11] and (ids[torch.arange(2), pos] == 2).all()
    hidden = model.clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    expect = model.clip.text_projection(hidden[torch.arange(2), pos])
    torch.testing.assert_close(model.encode_tokens(ids, mask), expect)


def test_shipped_architecture_fits_in_3_mb(tmp_path):
    model = WorldCLIPModel.from_arch(seed=0)
    model.save_pretrained(tmp_path / "m", dtype=torch.float16)
    assert folder_size(tmp_path / "m") < 3.0e6


def test_augment_is_deterministic_and_in_range(make_config, tmp_path):
    cfg = make_config(tmp_path, aug_shift_p=1.0, aug_blur_p=1.0, aug_jitter_p=1.0, aug_noise_p=1.0)
    x = torch.rand(4, 3, 32, 32)
    a, b = augment(x, cfg, 3), augment(x, cfg, 3)
    assert torch.equal(a, b) and not torch.equal(a, x) and not torch.equal(a, augment(x, cfg, 4))
    assert a.shape == x.shape and 0 <= a.min() <= a.max() <= 1


# ----------------------------------------------------------------------------- training
def test_training_reduces_the_loss(trained):
    log = [json.loads(ln) for ln in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31))
    first = np.mean([r["loss"] for r in log[:5]])
    last = np.mean([r["loss"] for r in log[-5:]])
    assert last < first - 0.2, (first, last)
    record = json.loads((trained / "final" / "training.json").read_text())
    assert record["steps"] == 30 and record["stopped_by"] == "max_steps"
    assert record["hardware"]["device"] == "cpu" and "torch" in record["versions"]


def test_resume_matches_an_uninterrupted_run(make_config, tmp_path):
    full = train_world_clip(make_config(tmp_path / "a"), resume=False)
    cfg = make_config(tmp_path / "b")
    assert train_world_clip(cfg, resume=False, stop_at_step=10) is None
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == ["step_0000010"]
    resumed = train_world_clip(cfg)
    a, b = WorldCLIPModel.from_pretrained(full), WorldCLIPModel.from_pretrained(resumed)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    steps = [json.loads(ln)["step"] for ln in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    with pytest.raises(ValueError, match="different config"):
        train_world_clip(make_config(tmp_path / "b", learning_rate=1e-2, max_steps=30))


def test_time_limit_finishes_the_run(make_config, tmp_path):
    cfg = make_config(tmp_path, max_steps=100_000, time_limit_s=0.3, checkpoint_every=1000)
    final = train_world_clip(cfg, resume=False)
    record = json.loads((final / "training.json").read_text())
    assert record["stopped_by"] == "time_limit" and 0 < record["steps"] < 100_000
    assert record["max_steps"] == 100_000 and record["train_time_s"] >= 0.3
    assert list_checkpoints(cfg.run_dir)[-1].name == f"step_{record['steps']:07d}"


# ----------------------------------------------------------------------------- reward
def test_reward_round_trip_gradient_and_resize(trained, tmp_path):
    reward = WorldCLIPReward(trained)  # a run folder: its final/
    assert isinstance(reward, Reward) and reward.name == "world-clip"
    images = torch.rand(3, 3, 32, 32)
    prompts = ["a red circle", "a blue square on the left of a green cross", "two yellow triangles"]
    s = reward(images, prompts)
    assert s.shape == (3,) and s.dtype == torch.float32 and (s.abs() <= 1 + 1e-5).all()
    again = WorldCLIPReward(trained / "final")
    assert torch.equal(again(images, prompts), s)
    scaled = WorldCLIPReward(trained, scaled=True)(images, prompts)
    torch.testing.assert_close(scaled, s * reward.model.logit_scale)
    # differentiable in the image, also through the 64 px resize and from fp16 input
    x = torch.rand(3, 3, 64, 64, dtype=torch.float16, requires_grad=True)
    score = reward(x, prompts)
    assert score.dtype == torch.float32
    score.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # fp16 export loads and scores close to the fp32 model
    dest = export_world_clip(trained, tmp_path / "world-clip")
    assert (dest / "model.safetensors").is_file() and (dest / "training.json").is_file()
    torch.testing.assert_close(WorldCLIPReward(dest)(images, prompts), s, atol=2e-2, rtol=0)


def test_cached_prompt_embeddings_do_not_depend_on_the_history():
    """The same images and prompts score bit-identically whichever prompts the reward saw before
    (the cache once held whole-batch encodings, whose last bits depend on the batch)."""
    from compalign.rewards import create_reward
    from compalign.world.suites import load_suite

    prompts = load_suite("spatial", "train")[:5]
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fresh = create_reward("world-clip")(images, prompts)
    seen = create_reward("world-clip")
    seen(images[1:2], prompts[1:2])
    seen(images[3:], prompts[3:])
    assert torch.equal(seen(images, prompts), fresh)


def test_bad_inputs_raise_clear_errors(trained, tmp_path, monkeypatch):
    good = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="4 dimensions"):
        check_inputs(torch.rand(3, 32, 32), ["a", "b"])
    with pytest.raises(ValueError, match="3 channels"):
        check_inputs(torch.rand(2, 1, 32, 32), ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        check_inputs(good, ["a red circle"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_inputs(good * 255, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_inputs(good * 2 - 1, ["a", "b"])
    with pytest.raises(ValueError, match="floating-point"):
        check_inputs((good * 255).to(torch.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="list of strings"):
        check_inputs(good, "a red circle")
    reward = WorldCLIPReward(trained)
    with pytest.raises(ValueError, match="3 channels"):
        reward(torch.rand(2, 4, 32, 32), ["a", "b"])
    import compalign.rewards.world_clip.reward as mod

    monkeypatch.setattr(mod, "weights_root", lambda: tmp_path / "nothing")
    with pytest.raises(RewardNotTrainedError, match="not trained.*train-world-clip"):
        WorldCLIPReward("world-clip")
    with pytest.raises(FileNotFoundError, match="not a world-clip model"):
        WorldCLIPReward(tmp_path)
    with pytest.raises(FileNotFoundError, match="unknown world-clip model"):
        WorldCLIPReward("no-such-model")


# ----------------------------------------------------------------------------- evaluation, CLI
def test_evaluation_reports_per_category(trained):
    report = evaluate_world_clip(trained, n_per_category=3, n_negatives=4, categories=["color", "spatial"])
    assert set(report["categories"]) == {"color", "spatial"}
    for s in report["categories"].values():
        assert s["n"] == 3 and 0 <= s["pairwise_acc"] <= 1 and 0 <= s["top1"] <= 1
    assert report["overall"]["n"] == 6 and "shape" in report["kinds"]
    assert "spatial" in format_eval_table(report)


def test_cli(cli, trained, tmp_path):
    r = cli("reward", "eval-world-clip", trained, "--per-category", "1", "--negatives", "2")
    assert r.exit_code == 0, r.output
    assert "overall" in r.stdout and "position" in r.stdout
    r = cli("reward", "eval-world-clip", tmp_path / "missing")
    assert r.exit_code == 2 and "unknown world-clip model" in r.stderr
    r = cli("reward", "eval-world-clip", trained, "--split", "test")
    assert r.exit_code == 2 and "unknown split" in r.stderr
    r = cli("reward", "train-world-clip", "--seed", "-1", "--output-dir", tmp_path / "x")
    assert r.exit_code == 2 and "--seed" in r.stderr
    r = cli("reward", "train-world-clip", "--batch-size", "0", "--output-dir", tmp_path / "x")
    assert r.exit_code == 2 and "batch_size" in r.stderr

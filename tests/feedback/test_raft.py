"""RAFT (`compalign.feedback.raft`): the learned reward picks each train prompt's best gallery
image; the base learns those images."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from compalign.feedback.config import RaftConfig
from compalign.feedback.raft import select_top_k, train_raft
from compalign.generators import create_generator
from compalign.rewards import registry
from compalign.rewards.base import Reward
from tests.factories import build_gallery, world_prompts


class Brightness(Reward):
    """Mean pixel value: an exact render (objects on black) beats a black image."""

    name = "test-brightness"
    loss_offset = 1.0

    def forward(self, images, prompts):
        return images.mean(dim=(1, 2, 3)).float()


@pytest.fixture(scope="module", autouse=True)
def _brightness():
    registry.register_reward("test-brightness", Brightness, overwrite=True)
    yield
    registry._REGISTRY.pop("test-brightness", None)


def config(tmp_path, base, pool_dir, gallery, **kw) -> RaftConfig:
    d = dict(
        base=str(base), output_dir=str(tmp_path / "run"), galleries=[str(gallery)],
        rewards={"spatial_relationship": "test-brightness"}, max_steps=3, batch_size=2, reg_batch_size=2,
        learning_rate=1e-3, pool_dir=str(pool_dir), pool_per_category=8, pool_shard_size=4, num_threads=1,
        progress=False,
    )  # fmt: skip
    d.update(kw)
    return RaftConfig(**d)


def test_raft_learns_the_rewards_choice_of_train_prompts_only(tmp_path, tiny_base, pool_dir):
    gallery = build_gallery(tmp_path / "gal", world_prompts(n_train=3, n_heldout=1)).root
    final = train_raft(config(tmp_path, tiny_base, pool_dir, gallery), log=lambda *_: None)
    record = json.loads((final / "training.json").read_text())
    sel = record["selection"]["spatial_relationship"]
    # the held-out prompt is never a candidate; the reward picks the exact render of every prompt
    assert (sel["prompts"], sel["candidates"], sel["selected"]) == (3, 9, 3)
    assert sel["selected_by_source"] == {"good": 3} and sel["reward_selected"] > sel["reward_all"]
    # the evaluator's verdicts are recorded (report only): exact renders pass, black images do not
    assert (sel["evaluator_pass_selected"], sel["evaluator_pass_all"]) == (1.0, pytest.approx(1 / 3))
    assert record["mode"] == "raft" and record["captions"] == "exact" and record["steps"] == 3
    before = load_file(str(tiny_base / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(final / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert create_generator(str(final)).training_captions == "exact"  # loads; the chain continues

    more = train_raft(
        config(tmp_path / "b", tiny_base, pool_dir, gallery, samples_per_prompt=2, top_k=2),
        log=lambda *_: None,
    )
    sel = json.loads((more / "training.json").read_text())["selection"]["spatial_relationship"]
    assert (sel["candidates"], sel["selected"]) == (15, 6)  # 3 prompts x (3 gallery images + 2 samples)


def test_select_top_k_per_prompt_and_ties():
    cands = [{"aspect": "a", "prompt": p} for p in ("x", "x", "x", "y", "y")]
    assert select_top_k(cands, torch.tensor([0.1, 0.5, 0.5, 0.0, -1.0]).numpy(), 1) == [1, 3]
    assert select_top_k(cands, torch.tensor([0.1, 0.5, 0.5, 0.0, -1.0]).numpy(), 2) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(rewards={"spatial": "test-brightness"}), "unknown aspect 'spatial'"),
        (dict(reg_captions="alt"), "reg_captions must be one of"),
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, "base", tmp_path, tmp_path, **kw)


def test_a_gallery_without_its_aspects_reward_is_refused(tmp_path, tiny_base, pool_dir):
    gallery = build_gallery(tmp_path / "gal", aspect="attribute_binding").root
    with pytest.raises(ValueError, match="has no reward"):
        train_raft(config(tmp_path, tiny_base, pool_dir, gallery), log=lambda *_: None)


def test_another_scorer_makes_the_selection(tmp_path, tiny_base, pool_dir):
    """Probes replace the reward models' scores (`scripts/probe_raft_oracle.py`): the selection
    follows the scorer given, and the record names it."""
    gallery = build_gallery(tmp_path / "gal", world_prompts(n_train=3, n_heldout=1)).root

    def prefer_bad(config, candidates):
        return [float(c["source"] == "bad") for c in candidates]

    final = train_raft(config(tmp_path, tiny_base, pool_dir, gallery), log=lambda *_: None, scorer=prefer_bad)
    record = json.loads((final / "training.json").read_text())
    assert record["selection"]["spatial_relationship"]["selected_by_source"] == {"bad": 3}
    assert record["scorer"] == "prefer_bad"

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compalign.generators import create_generator
from compalign.generators.world.data import ScenePool, batches, make_batch
from compalign.generators.world.train import (
    export_model,
    latest_checkpoint,
    list_checkpoints,
    lr_factor,
    train_world_model,
)
from compalign.world.grammar import parse_prompt
from compalign.world.suites import is_heldout
from tests.factories import fixed_batch_losses


def test_data_stream_is_deterministic_and_never_held_out():
    a = make_batch(seed=3, step=5, batch_size=6)
    b = make_batch(seed=3, step=5, batch_size=6)
    assert a["prompts"] == b["prompts"] and torch.equal(a["images"], b["images"])
    assert a["images"].shape == (6, 3, 32, 32)
    assert a["images"].min() >= -1 and a["images"].max() <= 1
    assert make_batch(seed=3, step=6, batch_size=6)["prompts"] != a["prompts"]
    assert not any(is_heldout(parse_prompt(p)) for p in a["prompts"])
    c = make_batch(seed=0, step=0, batch_size=8, categories=["colors"], with_images=False)
    assert "images" not in c and set(c["categories"]) == {"colors"}


def test_data_workers_give_the_same_stream():
    inline = batches(seed=1, batch_size=2, start_step=3)
    worker = batches(seed=1, batch_size=2, start_step=3, num_workers=1)
    for _ in range(2):
        x, y = next(inline), next(worker)
        assert x["step"] == y["step"] and x["prompts"] == y["prompts"]
        assert torch.equal(x["images"], y["images"])


def test_scene_pool_builds_once_and_is_deterministic(tmp_path):
    pool = ScenePool(tmp_path, ["colors", "position"], per_category=6, shard_size=4, data_seed=1)
    assert len(pool.shards()) == 4 and len(pool.missing()) == 4
    assert pool.build(progress=False) > 0
    assert pool.missing() == [] and pool.build(progress=False) == 0.0
    assert not list(tmp_path.rglob("*.lock"))
    other = ScenePool(tmp_path / "b", ["colors", "position"], per_category=6, shard_size=4, data_seed=1)
    other.build(workers=2, progress=False)
    a, b = pool.batch(seed=0, step=3, batch_size=5), other.batch(seed=0, step=3, batch_size=5)
    assert a["prompts"] == b["prompts"] and torch.equal(a["images"], b["images"])
    assert a["images"].shape == (5, 3, 32, 32) and -1 <= a["images"].min() <= a["images"].max() <= 1
    assert set(a["categories"]) <= {"colors", "position"}
    assert not any(is_heldout(parse_prompt(p)) for p in pool.load()["position"][1])
    assert pool.batch(seed=0, step=4, batch_size=5)["prompts"] != a["prompts"]


def test_scene_pool_key_follows_the_split(monkeypatch, tmp_path):
    from compalign.generators.world import data

    now = ScenePool(tmp_path, ["colors"], per_category=4).dir
    assert now.parent.name == data.world_fingerprint()
    assert {"grammar.py", "suites.py"} <= set(data.WORLD_SOURCES)
    monkeypatch.setattr(data, "SUITE_VERSION", "v1")  # a pool built under suite v1's split
    assert ScenePool(tmp_path, ["colors"], per_category=4).dir != now


def test_scene_pool_shares_work_with_other_builders(tmp_path):
    import os
    import threading
    import time

    from compalign.generators.world.data import _build_shard

    pool = ScenePool(tmp_path, ["colors"], per_category=8, shard_size=4)
    (c0, k0, n0, p0), (c1, k1, n1, p1) = pool.shards()
    p0.parent.mkdir(parents=True)
    p0.with_suffix(".lock").touch()  # "another run" is building shard 0
    stale = p1.with_suffix(".lock")
    stale.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # shard 1's builder died long ago

    def other_run():
        time.sleep(0.5)
        _build_shard(str(p0), c0, k0, n0, 0)
        p0.with_suffix(".lock").unlink()

    t = threading.Thread(target=other_run)
    t.start()
    pool.build(progress=False)
    t.join()
    assert pool.missing() == [] and not list(tmp_path.rglob("*.lock"))
    assert len(pool.load()["colors"][1]) == 8


def test_stream_training_runs(tmp_path, make_config):
    config = make_config(tmp_path, data_source="stream", max_steps=2, checkpoint_every=5)
    out = train_world_model(config, resume=False)
    assert json.loads((out / "training.json").read_text())["data"] == {"source": "stream"}


def test_loss_decreases_on_a_fixed_batch(tmp_path, make_config, make_pipeline):
    config = make_config(tmp_path, cond_dropout=0.0)
    losses = fixed_batch_losses(config, make_pipeline(), make_batch(seed=0, step=0, batch_size=8))
    assert losses[-1] < 0.7 * losses[0], losses


def test_lr_schedule(tmp_path, make_config):
    c = make_config(tmp_path, max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(c, 0) == 0.1 and lr_factor(c, 9) == 1.0
    assert abs(lr_factor(c, 100) - 0.1) < 1e-9 and 0.1 < lr_factor(c, 50) < 1.0


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, make_config):
    full = make_config(tmp_path / "a")
    out = train_world_model(full, resume=False)
    assert out is not None and (out / "training.json").is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 4 and record["hardware"]["device"] == "cpu" and record["wall_time_s"] > 0

    part = make_config(tmp_path / "b")
    assert train_world_model(part, resume=False, stop_at_step=3) is None  # "interrupted" after step 3
    assert latest_checkpoint(part.run_dir).name == "step_0000003"
    assert [p.name for p in list_checkpoints(part.run_dir)] == ["step_0000002", "step_0000003"]
    out_b = train_world_model(part)  # resumes at step 3
    assert out_b is not None
    wa, wb = _weights(full.run_dir), _weights(part.run_dir)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    sessions = json.loads((out_b / "training.json").read_text())["sessions"]
    assert [s["from_step"] for s in sessions] == [0, 3]
    steps = [json.loads(x)["step"] for x in (part.run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_distill_one_step_and_export(tmp_path, make_config, tiny_saved):
    config = make_config(
        tmp_path,
        name="tiny-onestep",
        mode="distill",
        teacher=str(tiny_saved),
        num_pairs=6,
        pair_shard_size=4,
        max_steps=2,
        batch_size=3,
        teacher_steps=2,
    )
    out = train_world_model(config, resume=False)
    assert len(list((config.run_dir / "pairs").glob("shard_*.pt"))) == 2
    gen = create_generator(out)
    assert gen.differentiable and gen.settings()["num_inference_steps"] == 1
    assert json.loads((out / "training.json").read_text())["teacher"] == str(tiny_saved)
    dest = export_model(config.run_dir, "tiny-onestep", dest_root=tmp_path / "weights")
    assert dest.name == "tiny-onestep" and (dest / "training.json").is_file()
    st = (dest / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert st < (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size * 0.6  # fp16
    a = gen.generate(["a red circle"], seeds=[1])
    b = create_generator(dest).generate(["a red circle"], seeds=[1])
    assert np.abs((a - b).numpy()).max() < 0.02


def test_distill_pairs_take_prompts_from_the_scene_pool(tmp_path, make_config, tiny_saved):
    kw = dict(mode="distill", teacher=str(tiny_saved), num_pairs=5, pair_shard_size=4)
    kw.update(max_steps=1, batch_size=2, teacher_steps=2, pair_prompts="pool")
    config = make_config(tmp_path, **kw)
    out = train_world_model(config, resume=False)
    shards = sorted((config.run_dir / "pairs").glob("shard_*.pt"))
    prompts = [p for s in shards for p in torch.load(s, weights_only=False)["prompts"]]
    pool = ScenePool(config.pool_root, config.categories, config.pool_per_category, config.pool_shard_size)
    assert len(prompts) == 5 and set(prompts) <= {p for c in pool.load().values() for p in c[1]}
    assert prompts[:4] == pool.batch(config.seed, 0, 4, with_images=False)["prompts"]
    assert json.loads((out / "training.json").read_text())["data"]["source"] == "pool"
    with pytest.raises(ValueError, match="pair_prompts"):
        make_config(tmp_path, **{**kw, "pair_prompts": "grammar"})


def test_time_limit_finishes_the_run_at_the_step_reached(tmp_path, make_config):
    config = make_config(tmp_path, max_steps=50, lr_schedule="constant", time_limit_s=1e-9)
    out = train_world_model(config, resume=False)
    assert out is not None  # finished (not "interrupted") although max_steps was not reached
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 1 and record["config"]["max_steps"] == 1
    assert record["stopped_by_time_limit"]["planned_max_steps"] == 50
    # with a constant schedule the stopped run equals the run with max_steps = the step reached
    same = train_world_model(make_config(tmp_path / "b", max_steps=1, lr_schedule="constant"), resume=False)
    wa, wb = _weights(config.run_dir), _weights(same.parent)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_web_captions_reach_training(tmp_path, make_config, monkeypatch):
    import compalign.generators.world.train as world_train
    from compalign.world.grammar import parse_prompt

    seen: dict[str, list[str]] = {"exact": [], "web": []}
    inner = world_train.diffusion_loss

    for captions in seen:

        def spy(config, model, pipe, sched, batch, *args, _out=seen[captions]):
            _out.extend(batch["prompts"])
            return inner(config, model, pipe, sched, batch, *args)

        monkeypatch.setattr(world_train, "diffusion_loss", spy)
        c = make_config(tmp_path / captions, max_steps=2, checkpoint_every=5, captions=captions)
        train_world_model(c, resume=False)
    assert len(seen["web"]) == len(seen["exact"]) > 0
    assert seen["web"] != seen["exact"]
    for p in seen["web"]:
        parse_prompt(p)  # web captions stay inside the grammar


def test_run_started_before_a_config_field_existed_resumes(tmp_path, make_config):
    part = make_config(tmp_path)
    assert train_world_model(part, resume=False, stop_at_step=3) is None
    saved = json.loads((part.run_dir / "config.json").read_text())
    del saved["captions"]  # as written before the field existed
    (part.run_dir / "config.json").write_text(json.dumps(saved))
    assert train_world_model(part) is not None

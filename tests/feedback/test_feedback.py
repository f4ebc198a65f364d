"""Feedback learning (ReFL) on a tiny world pipeline and a tiny random SD pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from compalign.feedback.config import FeedbackConfig, stop_indices
from compalign.feedback.models import add_lora, clean_prediction, merge_lora
from compalign.feedback.train import train_feedback
from compalign.generators import create_generator
from compalign.generators.world.train import latest_checkpoint, list_checkpoints
from tests.factories import Redness

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow cross"]
SEEDS = [11, 12, 13, 14]


def redness_of(folder_or_name, steps: int = 4) -> float:
    """The mean `Redness` of a model's images of the fixed prompts and seeds."""
    images = create_generator(str(folder_or_name)).generate(PROMPTS, seeds=SEEDS, num_inference_steps=steps)
    return float(Redness()(images, PROMPTS).mean())


def images_of(folder_or_name, steps: int = 4) -> torch.Tensor:
    return create_generator(str(folder_or_name)).generate(PROMPTS, seeds=SEEDS, num_inference_steps=steps)


def make_config(tmp_path, base, pool_dir, **kw) -> FeedbackConfig:
    d = dict(
        name="tiny-feedback",
        base=str(base),
        output_dir=str(tmp_path / "run"),
        rewards={"test-redness": 1.0},
        categories=["colors", "spatial"],
        total_steps=4,
        stop_range=[0.5, 1.0],
        reg_type="none",
        pool_dir=str(pool_dir),
        pool_per_category=8,
        pool_shard_size=4,
        max_steps=4,
        batch_size=4,
        learning_rate=1e-3,
        checkpoint_every=2,
        num_threads=1,
        device="cpu",
        progress=False,
    )
    d.update(kw)
    return FeedbackConfig(**d)


def _unet_weights(final):
    from safetensors.torch import load_file

    return load_file(str(final / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base, pool_dir):
    """Training runs shared by several tests, made on first use: {key: final folder}."""
    made = {}
    settings = {
        "plain": dict(reg_type="none", max_steps=12),
        "distance": dict(reg_type="distance", reg_weight=30.0, max_steps=12),
    }

    def get(key: str):
        if key not in made:
            root = tmp_path_factory.mktemp(key)
            made[key] = train_feedback(make_config(root, tiny_base, pool_dir, **settings[key]), resume=False)
        return made[key]

    return get


# ------------------------------------------------------------------------------------- config
def test_stop_range_maps_to_late_indices():
    assert stop_indices([0.75, 1.0], 40) == (30, 39)  # IterComp: [30, 39] of 40
    assert stop_indices([0.75, 1.0], 25) == (19, 24)
    assert stop_indices([0.75, 1.0], 1) == (0, 0)
    assert stop_indices([30, 39], 40) == (30, 39)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(rewards={"no-such-reward": 1.0}), "unknown reward 'no-such-reward'"),
        (dict(rewards={"test-redness": 0.0}), "every reward weight is 0"),
        (dict(stop_range=[0.9, 0.5]), "stop_range fractions"),
        (dict(stop_range=[0.5, 1.5]), "stop_range fractions"),
        (dict(stop_range=[5, 2]), "stop_range indices"),
        (dict(stop_range=[0.5]), "two numbers"),
        (dict(stop_range=[2, 7], total_steps=4), "reaches past the last index 3"),
        (dict(reg_type="l2"), "reg_type"),
        (dict(categories=["nope"]), "unknown categories"),
        (dict(aspects=["nope"]), "unknown aspects"),
        (dict(prompts_file="p.txt", categories=["colors"]), "not both"),
        (dict(train_unet=False), "nothing trains"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_config(tmp_path, "base", tmp_path, **kw)


def test_denoising_regulariser_needs_a_world_model(tmp_path, sd_base):
    config = make_config(tmp_path, f"sd:{sd_base}", tmp_path, reg_type="denoising")
    with pytest.raises(ValueError, match="only world models"):
        train_feedback(config, resume=False)


def test_prompts_come_from_train_splits(tmp_path):
    from compalign.world.suites import load_suite

    c = make_config(tmp_path, "base", tmp_path, categories=None, aspects=["spatial_relationship"])
    assert set(c.world_categories()) == {"spatial", "position"}
    assert set(c.prompt_list()) == set(load_suite("spatial", "train")) | set(load_suite("position", "train"))
    f = tmp_path / "prompts.txt"
    f.write_text("# comment\na red circle\n\na blue square\n")
    assert make_config(tmp_path, "base", tmp_path, categories=None, prompts_file=str(f)).prompt_list() == [
        "a red circle",
        "a blue square",
    ]


# ------------------------------------------------------------------------------------- maths
@pytest.mark.parametrize(
    ("cls", "kind"),
    [("DDIMScheduler", "v_prediction"), ("EulerDiscreteScheduler", "epsilon"),
     ("EulerDiscreteScheduler", "v_prediction"), ("DDPMScheduler", "epsilon")],
)  # fmt: skip
def test_clean_prediction_matches_the_scheduler(cls, kind):
    import diffusers

    sched = getattr(diffusers, cls)(prediction_type=kind, timestep_spacing="trailing")
    sched.set_timesteps(8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps[:6]):
        out = torch.randn(x.shape, generator=g)
        sched.scale_model_input(x, t)
        mine = clean_prediction(sched, out, x, t, i)
        step = sched.step(out, t, x, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(mine, step.pred_original_sample, atol=1e-5), (i, t)
        x = step.prev_sample


def test_merged_lora_equals_the_adapted_model():
    from tests.factories import tiny_pipeline

    unet = tiny_pipeline().unet
    add_lora(unet, 4, 8, ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"])
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    x, t, text = torch.randn(2, 12, 16, 16), torch.tensor(500), torch.randn(2, 32, 32)
    kw = dict(class_labels=text.mean(1))
    with torch.no_grad():
        before = unet(x, t, text, **kw).sample
        assert merge_lora(unet) > 0
        after = unet(x, t, text, **kw).sample
    assert not any("lora" in n for n, _ in unet.named_parameters())
    assert torch.allclose(before, after, atol=1e-5)


# ------------------------------------------------------------------------------------- training
def test_feedback_raises_the_reward(runs, tiny_base):
    final = runs("plain")
    before, after = redness_of(tiny_base), redness_of(final)
    assert after > before + 0.2, (before, after)
    record = json.loads((final / "training.json").read_text())
    assert record["steps"] == 12 and record["base_kind"] == "world" and record["mode"] == "feedback"
    assert record["settings"]["stop_indices"] == [2, 3] and record["settings"]["reg_type"] == "none"
    first_last = record["reward_first_last"]["test-redness"]
    assert first_last["last"] > first_last["first"]
    rows = [json.loads(x) for x in (final.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all("reward/test-redness" in r and "reg" in r and "loss" in r for r in rows)
    assert all(2 <= s <= 3 for r in rows for s in r["stop_index"])
    assert (final.parent / "curves.png").stat().st_size > 1000


def test_distance_regulariser_keeps_the_model_closer_to_base(runs, tiny_base):
    base = images_of(tiny_base)
    drift_plain = float((images_of(runs("plain")) - base).pow(2).mean())
    drift_reg = float((images_of(runs("distance")) - base).pow(2).mean())
    assert drift_reg < 0.5 * drift_plain, (drift_reg, drift_plain)
    rows = [json.loads(x) for x in (runs("distance").parent / "log.jsonl").read_text().splitlines()]
    assert rows[0]["reg"] == 0.0 and max(r["reg"] for r in rows[1:]) > 0  # step 1: still the base


def test_denoising_regulariser_and_time_limit(tmp_path, tiny_base, pool_dir):
    config = make_config(tmp_path, tiny_base, pool_dir, reg_type="denoising", max_steps=50, time_limit_s=1e-9)
    final = train_feedback(config, resume=False)
    record = json.loads((final / "training.json").read_text())
    assert record["steps"] == 1 and record["stopped_by_time_limit"]["planned_max_steps"] == 50
    assert record["regulariser_data"]["scenes"] == 16
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert row["reg"] > 0 and row["loss"] == pytest.approx(row["reward_loss"] + row["reg"], rel=1e-5)


def test_denoising_regulariser_keeps_the_captions_the_base_learnt_from(tmp_path, tiny_base, pool_dir):
    """A base trained on web-like captions is regularised on web-like captions (its record says
    so), not on exact prompts; its fine-tuned copy records them for the next iteration."""
    import shutil

    from compalign.generators.world.generator import RECORD_FILE

    web = tmp_path / "web-base"
    shutil.copytree(tiny_base, web)
    (web / RECORD_FILE).write_text(json.dumps({"config": {"name": "tiny-web", "captions": "web"}}))
    assert create_generator(str(web)).training_captions == "web"

    def first_reg(base, name, **kw) -> tuple[float, dict]:
        config = make_config(tmp_path / name, base, pool_dir, reg_type="denoising", max_steps=1, **kw)
        final = train_feedback(config, resume=False)
        row = json.loads((tmp_path / name / "run" / "log.jsonl").read_text().splitlines()[0])
        return row["reg"], json.loads((final / RECORD_FILE).read_text())

    reg_web, record = first_reg(web, "a")
    assert record["settings"]["reg_captions"] == "web" and record["captions"] == "web"
    assert create_generator(str(tmp_path / "a" / "run" / "final")).training_captions == "web"  # the chain
    reg_exact, record = first_reg(web, "b", reg_captions="exact")  # the same draws, exact prompts
    assert record["captions"] == "exact" and reg_exact != pytest.approx(reg_web, rel=1e-4)
    _, record = first_reg(tiny_base, "c")  # a base without captions in its record: exact
    assert record["settings"]["reg_captions"] == "exact"
    with pytest.raises(ValueError, match="reg_captions must be one of"):
        make_config(tmp_path, tiny_base, pool_dir, reg_captions="alt-text")


def test_lora_trains_adapters_only_and_saves_a_merged_pipeline(tmp_path, tiny_base, pool_dir):
    config = make_config(
        tmp_path, tiny_base, pool_dir, lora_rank=4, reg_type="distance", max_steps=6, learning_rate=1e-2
    )
    final = train_feedback(config, resume=False)
    state = torch.load(latest_checkpoint(config.run_dir) / "state.pt", weights_only=False)
    assert state["trainable"] and all(".lora_A." in k or ".lora_B." in k for k in state["trainable"])
    record = json.loads((final / "training.json").read_text())
    assert record["trained"]["lora"]["layers"] == record["trained"]["lora"]["merged"] > 0
    assert record["trained"]["parameters"] == sum(v.numel() for v in state["trainable"].values())
    merged, base = _unet_weights(final), _unet_weights(tiny_base)
    assert merged.keys() == base.keys()  # plain layers, no adapter weights
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all(k.endswith(".weight") for k in changed)  # only adapted layers moved
    assert not any("norm" in k or "time_embedding" in k for k in changed)
    gen = create_generator(final)  # loads like any world model
    assert gen.generate(PROMPTS[:1], seeds=[0], num_inference_steps=2).shape == (1, 3, 32, 32)
    assert redness_of(final) > redness_of(tiny_base)


def _all_tensors(final) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file of a final pipeline folder."""
    from safetensors.torch import load_file

    files = sorted(final.rglob("*.safetensors"))
    assert files
    return {f"{f.relative_to(final)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def test_resume_equals_the_uninterrupted_run(tmp_path, tiny_base, pool_dir):
    """Interrupted after step 3 and resumed: every tensor of the result equals the uninterrupted
    run's, bit for bit. The world CLIP reward caches prompt embeddings; with three prompts they
    repeat, so the resumed run (empty cache) encodes them in other company than the uninterrupted
    one did, which changed the last bits of the weights while the cache encoded whole batches."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere left of a green cube\ntwo yellow cylinders\n")
    kw = dict(
        reg_type="denoising",
        ema_decay=0.9,
        grad_accum=2,
        batch_size=2,
        warmup_steps=2,
        rewards={"test-redness": 1.0, "world-clip": 1.0},
        prompts_file=str(prompts),
        categories=None,
        max_steps=5,
    )
    full = train_feedback(make_config(tmp_path / "a", tiny_base, pool_dir, **kw), resume=False)
    part = make_config(tmp_path / "b", tiny_base, pool_dir, **kw)
    assert train_feedback(part, resume=False, stop_at_step=3) is None
    assert [p.name for p in list_checkpoints(part.run_dir)] == ["step_0000002", "step_0000003"]
    resumed = train_feedback(part)
    wa, wb = _all_tensors(full), _all_tensors(resumed)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"
    base = _unet_weights(tiny_base)
    assert any(not torch.equal(base[k], _unet_weights(full)[k]) for k in base)  # it trained
    steps = [json.loads(x)["step"] for x in (part.run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    sessions = json.loads((resumed / "training.json").read_text())["sessions"]
    assert [s["from_step"] for s in sessions] == [0, 3]
    with pytest.raises(ValueError, match="different config"):
        train_feedback(make_config(tmp_path / "b", tiny_base, pool_dir, **{**kw, "reg_weight": 2.0}))


def test_tiny_sd_pipeline_through_the_real_loading_path(tmp_path, sd_base, pool_dir):
    config = make_config(
        tmp_path,
        f"sd:{sd_base}",
        pool_dir,
        max_steps=2,
        batch_size=2,
        lora_rank=2,
        reg_type="auto",
        guidance_scale=2.0,
    )
    final = train_feedback(config, resume=False)
    record = json.loads((final / "training.json").read_text())
    assert record["base_kind"] == "diffusers" and record["settings"]["reg_type"] == "distance"
    assert record["settings"]["reward_scale"] == 1e-3 and record["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    gen = create_generator(f"sd:{final}", device="cpu")
    assert gen.generate(["a red circle"], seeds=[0], num_inference_steps=2).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    "kw",
    [
        dict(mixed_precision="bf16", reg_type="distance", sampler="dpmsolver"),
        dict(
            lora_rank=2,
            train_text_encoder=True,
            sampler="euler",
            gradient_checkpointing=True,
            reg_type="distance",
        ),
        dict(train_unet=False, train_text_encoder=True, guidance_scale=1.0, stop_range=[0, 3], ema_decay=0.5),
    ],
    ids=["bf16-dpmsolver", "lora-text-encoder-euler-checkpointing", "text-encoder-only-no-guidance"],
)
def test_training_options_run(tmp_path, tiny_base, pool_dir, kw):
    final = train_feedback(make_config(tmp_path, tiny_base, pool_dir, max_steps=2, **kw), resume=False)
    record = json.loads((final / "training.json").read_text())
    assert record["steps"] == 2 and record["trained"]["parts"] == (
        ["unet", "text_encoder"] if kw.get("train_text_encoder") and kw.get("train_unet", True) else
        ["text_encoder"] if kw.get("train_text_encoder") else ["unet"]
    )  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    create_generator(final)


def test_a_reward_above_its_cap_gives_no_loss(tmp_path, tiny_base, pool_dir):
    config = make_config(tmp_path, tiny_base, pool_dir, max_steps=1, reward_caps={"test-redness": -1.0})
    final = train_feedback(config, resume=False)
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert row["reward_loss"] == 0.0 and row["grad_norm"] == 0.0
    wa, wb = _unet_weights(final), _unet_weights(tiny_base)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


FEEDBACK_TRAIN = (
    "import json, sys\n"
    "from compalign.feedback.config import FeedbackConfig\n"
    "from compalign.feedback.train import train_feedback\n"
    "train_feedback(FeedbackConfig(**json.loads(sys.argv[1])))"
)


@pytest.mark.slow  # three processes: ~30 s on 2 cores
def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_base):
    """`train_feedback` in its own process, killed (SIGKILL) after its third step at an arbitrary
    moment, then run again: every tensor of the result equals an uninterrupted run's."""
    from tests.killing import kill_when, run_python

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere left of a green cube\ntwo yellow cylinders\n")
    kw = dict(
        name="kill", base=str(tiny_base), rewards={"world-clip": 1.0}, prompts_file=str(prompts),
        total_steps=4, stop_range=[0.5, 1.0], reg_type="none", max_steps=8, batch_size=2,
        learning_rate=1e-3, checkpoint_every=1, keep_checkpoints=2, num_threads=1, device="cpu",
        progress=False,
    )  # fmt: skip
    config = lambda out: json.dumps({**kw, "output_dir": str(tmp_path / out)})  # noqa: E731

    def last_step(run) -> int:
        ckpts = list_checkpoints(run)
        return int(ckpts[-1].name.split("_")[-1]) if ckpts else 0

    run_python(["-c", FEEDBACK_TRAIN, config("full")])
    killed = tmp_path / "killed"
    kill_when(["-c", FEEDBACK_TRAIN, config("killed")], lambda: last_step(killed) >= 3)
    assert not (killed / "final").exists() and 3 <= last_step(killed) < 8
    run_python(["-c", FEEDBACK_TRAIN, config("killed")])
    wa, wb = _all_tensors(tmp_path / "full" / "final"), _all_tensors(killed / "final")
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"
    sessions = json.loads((killed / "final" / "training.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["from_step"] >= 3


def test_lora_reaches_both_encoders_of_a_dual_text_encoder(tmp_path, pool_dir):
    """A base with the dual CLIP + T5 encoder (the world's IterComp base): LoRA on the text encoder
    changes both encoders' weights, and the result loads and samples as a dual-encoder model."""
    from safetensors.torch import load_file

    from tests.factories import tiny_pipeline

    base = tmp_path / "dual-base"
    tiny_pipeline(text_encoder="clip+t5").save_pretrained(base)
    config = make_config(tmp_path, base, pool_dir, max_steps=2, lora_rank=2, train_text_encoder=True)
    final = train_feedback(config, resume=False)
    before, after = (load_file(str(next((f / "text_encoder").glob("*.safetensors")))) for f in (base, final))
    assert set(before) == set(after)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"clip", "t5"}, changed
    gen = create_generator(str(final))
    assert type(gen.pipe.text_encoder).__name__ == "DualTextEncoder"
    assert gen.generate(PROMPTS[:1], seeds=[0], num_inference_steps=2).shape == (1, 3, 32, 32)

"""Composition reward models (``compalign.rewards.composition``) on a synthetic world pairs file.

The pairs file is rendered here: for world-suite prompts of one aspect, a correct render of the
prompt ("better") against a render of a corrupted scene that contradicts it ("worse"), train
prompts in split ``train`` and held-out prompts in split ``heldout``. Backbones are tiny random
models (a small `WorldCLIPModel`, and the tiny BLIP / CLIP checkpoints of the real-reward tests).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from compalign.rewards.base import Reward
from compalign.rewards.composition.backbones import FusionHead, freeze_plan
from compalign.rewards.composition.data import PairSet, PairsFileError, read_pairs
from compalign.rewards.composition.evaluate import evaluate_reward_on_pairs, spearman
from compalign.rewards.composition.model import SHIPPED, CompositionRewardModel, resolve_model_dir
from compalign.rewards.composition.synthetic import make_world_pairs
from compalign.rewards.composition.train import (
    RewardTrainConfig,
    bt_loss,
    evaluate_pair_set,
    export_reward_model,
    pair_accuracy,
    train_reward_model,
)
from compalign.rewards.real.clip_score import CLIPScoreReward
from compalign.rewards.real.image_reward import ImageRewardReward
from compalign.rewards.registry import create_reward, reward_class
from compalign.rewards.world_clip.reward import RewardNotTrainedError
from tests.factories import LONG_PROMPT, tiny_world_clip

ASPECT = "spatial_relationship"
N_TRAIN, N_HELDOUT = 24, 8
PROMPTS = ["a red circle to the left of a blue square", "a green triangle above a yellow cross"]


def make_config(pairs, out, **kw) -> RewardTrainConfig:
    base = dict(
        pairs=str(pairs),
        aspect=ASPECT,
        output_dir=str(out),
        epochs=3,
        batch_size=8,
        learning_rate=3e-3,
        head_learning_rate=3e-3,
        warmup_ratio=0.0,
        freeze_ratio=0.5,
        log_every=1,
        checkpoint_every=2,
        device="cpu",
        num_threads=1,
        progress=False,
    )
    base.update(kw)
    return RewardTrainConfig(**base)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return make_world_pairs(tmp_path_factory.mktemp("pairs"), ASPECT, n_train=N_TRAIN, n_heldout=N_HELDOUT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_file):
    """One training run (tiny world CLIP, freeze ratio 0.5); records which pairs each PairSet got."""
    from compalign.rewards.composition import train as train_mod

    made = []

    class SpyPairSet(PairSet):
        def __init__(self, pairs, *a, **k):
            made.append(sorted({p.split for p in pairs}))
            super().__init__(pairs, *a, **k)

    out = tmp_path_factory.mktemp("run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "PairSet", SpyPairSet)
        final = train_reward_model(make_config(pairs_file, out), tiny_world_clip(0), resume=False)
    return final, made


def _pairset(pairs_file, split):
    return PairSet(read_pairs(pairs_file, aspect=ASPECT, split=split), 32)


# ----------------------------------------------------------------------------- pairs file


def _write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _absolute_records(pairs_file):
    recs = [json.loads(ln) for ln in pairs_file.read_text().splitlines()]
    for r in recs:
        r["better"] = str(pairs_file.parent / r["better"])
        r["worse"] = str(pairs_file.parent / r["worse"])
    return recs


def test_pairs_file_reading_and_errors(pairs_file, tmp_path, cli):
    pairs = read_pairs(pairs_file)
    assert len(pairs) == N_TRAIN + N_HELDOUT
    assert {p.split for p in pairs} == {"train", "heldout"} and {p.aspect for p in pairs} == {ASPECT}
    assert len(read_pairs(pairs_file, split="heldout")) == N_HELDOUT
    assert all(p.better.is_file() and p.worse.is_file() for p in pairs)
    # the split is by prompt: no held-out prompt is a training prompt
    assert not {p.prompt for p in pairs if p.split == "train"} & {
        p.prompt for p in pairs if p.split == "heldout"
    }

    recs = _absolute_records(pairs_file)[:4]
    cases = [
        ([recs[0], {k: v for k, v in recs[1].items() if k != "better"}], r"line 2: field 'better': missing"),
        ([{**recs[0], "worse": str(tmp_path / "nope.png")}], r"line 1: field 'worse': image not found"),
        (
            [recs[0], recs[1], {**recs[2], "aspect": "color"}],
            r"line 3: field 'aspect': unknown aspect 'color'",
        ),
        ([recs[0], "{not json"], r"line 2: invalid JSON"),
        ([{**recs[0], "index": "3"}], r"line 1: field 'index': expected int"),
        ([{**recs[0], "split": "valid"}], r"line 1: field 'split': unknown split 'valid'"),
        (
            [recs[0], {**recs[1], "prompt": recs[0]["prompt"], "split": "heldout"}],
            r"line 2: field 'split'.*by prompt",
        ),
        ([{**recs[0], "worse": recs[0]["better"]}], r"line 1: field 'worse': same image"),
        ([], r"no pairs"),
    ]
    for n, (lines, message) in enumerate(cases):
        bad = _write_lines(tmp_path / f"bad{n}.jsonl", lines)
        with pytest.raises(PairsFileError, match=message):
            read_pairs(bad)
    with pytest.raises(PairsFileError, match="no pairs with aspect attribute_binding"):
        read_pairs(pairs_file, aspect="attribute_binding")
    with pytest.raises(PairsFileError, match="unknown aspect"):
        read_pairs(pairs_file, aspect="colour")

    # the command line: one line on stderr naming the line and the field, exit code 2, nothing trained
    bad = tmp_path / "bad0.jsonl"
    out = tmp_path / "run"
    r = cli("reward", "train", "--pairs", bad, "--aspect", "spatial", "--output-dir", out, "--no-progress")
    assert r.exit_code == 2, r.output
    assert "line 2: field 'better': missing" in r.stderr and not (out / "checkpoints").exists()
    r = cli("reward", "train", "--pairs", pairs_file, "--aspect", "colour", "--output-dir", out)
    assert r.exit_code == 2 and "unknown aspect" in r.stderr


def test_refused_reward_train_leaves_nothing(pairs_file, tmp_path, cli):
    """A non-image pair, a NaN learning rate, an unknown backbone and a prompt outside the world
    grammar (world backbones) are one-line errors, and no run folder is made."""
    import shutil

    wc = tiny_world_clip(0).save_pretrained(tmp_path / "wc")
    recs = _absolute_records(pairs_file)
    not_image = tmp_path / "not_image.png"
    not_image.write_text("this is text")
    bad_image = _write_lines(
        tmp_path / "bad_image.jsonl", [recs[0], {**recs[1], "worse": str(not_image)}, *recs[2:]]
    )
    elephant = {**recs[1], "prompt": "a red elephant above a blue square"}
    grammar = _write_lines(tmp_path / "grammar.jsonl", [recs[0], elephant, *recs[2:]])
    out = tmp_path / "deep" / "run"
    base = ["reward", "train", "--aspect", "spatial", "--output-dir", out, "--device", "cpu", "--no-progress"]
    cases = [
        (["--pairs", bad_image, "--backbone", f"world-clip:{wc}"], ["not_image.png", "cannot read image"]),
        (["--pairs", pairs_file, "--lr", "nan"], ["learning_rate must be a finite number, got nan"]),
        (["--pairs", pairs_file, "--head-lr", "inf"], ["head_learning_rate must be a finite number"]),
        (["--pairs", pairs_file, "--backbone", "nope"], ["unknown backbone 'nope'", "world-clip, clip:PATH"]),
        (
            ["--pairs", grammar, "--backbone", f"world-clip:{wc}"],
            ["grammar.jsonl line 2", "outside the world grammar", "'elephant'"],
        ),
    ]
    for extra, needles in cases:
        r = cli(*base, *extra)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.exit_code == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.output
        for needle in needles:
            assert needle in r.stderr, (needle, r.stderr)
        assert not (tmp_path / "deep").exists(), extra
    # an existing run folder is left as it was
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    r = cli(*base, "--pairs", bad_image, "--backbone", f"world-clip:{wc}")
    assert r.exit_code == 2 and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    shutil.rmtree(tmp_path / "deep")


REWARD_TRAIN = (
    "import json, sys\n"
    "from compalign.rewards.composition.train import RewardTrainConfig, train_reward_model\n"
    "train_reward_model(RewardTrainConfig(**json.loads(sys.argv[1])))"
)


@pytest.mark.slow  # three processes: ~30 s on 2 cores
def test_kill_9_then_resume_gives_the_uninterrupted_model(pairs_file, tmp_path):
    """`train_reward_model` in its own process, killed (SIGKILL) after its third checkpoint at an
    arbitrary moment, then run again: the final model equals an uninterrupted run's, bit for bit."""
    from compalign.rewards.world_clip.train import list_checkpoints
    from tests.killing import kill_when, run_python

    def last_step(run) -> int:
        ckpts = list_checkpoints(run)
        return int(ckpts[-1].name.split("_")[-1]) if ckpts else 0

    wc = tiny_world_clip(0).save_pretrained(tmp_path / "wc")
    kw = dict(
        pairs=str(pairs_file), aspect=ASPECT, backbone=f"world-clip:{wc}", epochs=3, batch_size=4,
        learning_rate=3e-3, head_learning_rate=3e-3, freeze_ratio=0.5, checkpoint_every=1, log_every=1,
        device="cpu", num_threads=1, progress=False,
    )  # fmt: skip
    config = lambda out: json.dumps({**kw, "output_dir": str(tmp_path / out)})  # noqa: E731
    run_python(["-c", REWARD_TRAIN, config("full")])
    killed = tmp_path / "killed"
    kill_when(["-c", REWARD_TRAIN, config("killed")], lambda: last_step(killed) >= 3)
    assert not (killed / "final").exists() and list_checkpoints(killed)
    run_python(["-c", REWARD_TRAIN, config("killed")])
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(killed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((p / "final" / "training.json").read_text()) for p in (tmp_path / "full", killed))
    assert ra["selection"] == rb["selection"] and ra["steps"] == rb["steps"] == 3 * (N_TRAIN // 4)
    assert len(rb["sessions"]) == 2


def test_pair_metrics():
    b, w = torch.tensor([2.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.0, 0.0])
    assert pair_accuracy(b, w) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    torch.testing.assert_close(bt_loss(b, w, margin=0.5), -torch.nn.functional.logsigmoid(b - w - 0.5))


# ----------------------------------------------------------------------------- training


def test_training_run(trained, pairs_file):
    final, made = trained
    run = final.parent
    record = json.loads((final / "training.json").read_text())
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if r["event"] == "train"]
    evals = [r for r in log if r["event"] == "eval"]

    # held-out pairs are evaluated every epoch, the training pairs never are (and never mixed)
    assert made == [["train"], ["heldout"]]
    assert record["train_pairs"] == N_TRAIN and record["heldout_pairs"] == N_HELDOUT
    assert len(evals) == 3 and [e["step"] for e in evals] == [3, 6, 9]
    assert all(e["heldout_pairs"] == N_HELDOUT and e["heldout_prompts"] == N_HELDOUT for e in evals)
    # the chosen model is the best held-out epoch (accuracy, then loss), and its accuracy is the one
    # measured independently on the held-out pairs
    best = max(evals, key=lambda e: (e["heldout_accuracy"], -e["heldout_loss"]))
    assert record["selection"]["step"] == best["step"]
    model = CompositionRewardModel(final)
    check = evaluate_pair_set(model, _pairset(pairs_file, "heldout"), 64)
    assert check["accuracy"] == pytest.approx(best["heldout_accuracy"])
    assert check["loss"] == pytest.approx(best["heldout_loss"], abs=1e-5)
    a, b = load_file(str(final / "model.safetensors")), load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the loss goes down: on the training pairs, the last step's weights against the initial ones
    train_set = _pairset(pairs_file, "train")
    initial = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT)
    last_ckpt = sorted((run / "checkpoints").iterdir())[-1]
    assert last_ckpt.name == "step_0000009"
    last = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT)
    last.load_state_dict(torch.load(last_ckpt / "state.pt", weights_only=False)["model"])
    before, after = evaluate_pair_set(initial, train_set, 64), evaluate_pair_set(last, train_set, 64)
    assert after["loss"] < before["loss"] - 0.03, (before, after)
    losses = [r["loss"] for r in train_lines]
    assert len(losses) == 9 and np.mean(losses[-3:]) < np.mean(losses[:3])

    # normalisation measured on the model's own training images: scores ~ (0, 1) there
    norm = model.config["normalization"]
    assert norm["items"] == 2 * N_TRAIN and norm["pairs"] == N_TRAIN
    items = train_set.items()
    with torch.no_grad():
        x = torch.from_numpy(train_set.images[[i for i, _ in items]]).permute(0, 3, 1, 2).float() / 255
        s = model(x, [p for _, p in items])
    assert abs(float(s.mean())) < 1e-4 and float(s.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert model.score_std != 1.0 and model.score_mean != 0.0

    # artefacts: plot, config, no temporary folders left
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["aspect"] == ASPECT
    assert not [p for p in run.rglob(".tmp-*")]
    assert record["pairs_per_s"] > 0 and record["stopped_by"] == "epochs"


def test_freeze_ratio_freezes_the_right_layers(trained):
    def trainable(model, ratio):
        model.freeze(ratio)
        return {n for n, p in model.named_parameters() if p.requires_grad}

    m = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT)
    names = {n for n, _ in m.named_parameters()}
    vis, txt = "backbone.model.clip.vision_model.", "backbone.model.clip.text_model."
    head = {n for n in names if n.startswith("head.")}

    # IterComp's fix_rate 0.7: vision 4 layers -> 2 frozen, text 3 layers -> 2 frozen, embeddings frozen
    assert freeze_plan(m.backbone, 0.7) == {
        "vision": {"layers": 4, "frozen_layers": 2, "embeddings_frozen": True},
        "text": {"layers": 3, "frozen_layers": 2, "embeddings_frozen": True},
    }
    on = trainable(m, 0.7)
    frozen_prefixes = (
        vis + "embeddings.",
        vis + "pre_layrnorm.",
        vis + "encoder.layers.0.",
        vis + "encoder.layers.1.",
        txt + "embeddings.",
        txt + "encoder.layers.0.",
        txt + "encoder.layers.1.",
        "backbone.model.clip.logit_scale",
    )
    assert on == {n for n in names if not n.startswith(frozen_prefixes)}
    assert head <= on
    for n in (vis + "encoder.layers.2.mlp.fc1.weight", txt + "encoder.layers.2.mlp.fc1.weight"):
        assert n in on
    for n in (vis + "post_layernorm.weight", txt + "final_layer_norm.weight"):
        assert n in on
    for n in ("backbone.model.clip.visual_projection.weight", "backbone.model.clip.text_projection.weight"):
        assert n in on
    # 0: everything but the unused logit scale; 1: the head only
    assert trainable(m, 0.0) == names - {"backbone.model.clip.logit_scale"}
    assert trainable(m, 1.0) == head
    with pytest.raises(ValueError, match="freeze_ratio"):
        m.freeze(1.5)

    # the training run (ratio 0.5: vision 2 of 4, text 1 of 3 frozen) left frozen weights untouched
    final, _ = trained
    after = CompositionRewardModel(final).state_dict()
    before = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT).state_dict()
    m.freeze(0.5)
    for n, p in m.named_parameters():
        changed = not torch.equal(before[n], after[n])
        if not p.requires_grad:
            assert not changed, n
    moved = [n for n, p in m.named_parameters() if p.requires_grad and not torch.equal(before[n], after[n])]
    assert any(n.startswith(vis + "encoder.layers.3.") for n in moved)
    assert not any(n.startswith(vis + "encoder.layers.1.") for n in moved)
    assert any(n.startswith(txt + "encoder.layers.1.") for n in moved)
    assert not any(n.startswith(txt + "encoder.layers.0.") for n in moved)


def test_resume_equals_uninterrupted(pairs_file, tmp_path):
    kw = dict(epochs=2, augment=True, freeze_ratio=0.7, seed=3)
    full = train_reward_model(make_config(pairs_file, tmp_path / "a", **kw), tiny_world_clip(1), resume=False)
    part_cfg = make_config(pairs_file, tmp_path / "b", **kw)
    assert train_reward_model(part_cfg, tiny_world_clip(1), resume=False, stop_at_step=4) is None
    assert not (tmp_path / "b" / "final").exists()
    # the resumed run gets a freshly initialised module: the checkpoint restores everything
    resumed = train_reward_model(part_cfg, tiny_world_clip(7), resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def lines(run):
        drop = {"pairs_per_s", "wall_time_s"}
        return [
            {k: v for k, v in json.loads(ln).items() if k not in drop}
            for ln in (run / "log.jsonl").read_text().splitlines()
        ]

    assert lines(tmp_path / "a") == lines(tmp_path / "b")
    ra, rb = (json.loads((p / "training.json").read_text()) for p in (full, resumed))
    assert ra["selection"] == rb["selection"] and ra["normalization"]["mean"] == rb["normalization"]["mean"]
    assert [s["from_step"] for s in rb["sessions"]] == [0, 4]
    # resuming with a different config is refused
    with pytest.raises(ValueError, match="different config"):
        train_reward_model(
            make_config(pairs_file, tmp_path / "b", **{**kw, "margin": 0.5}), tiny_world_clip(1)
        )


def test_accumulation_checkpointing_precision_and_time_limit(pairs_file, tmp_path):
    """Micro-batches and activation checkpointing change memory, not maths; bf16 autocast runs on the
    CPU; a time limit ends the run normally, with the held-out accuracy measured where it stopped."""

    def run(name, **kw):
        final = train_reward_model(
            make_config(pairs_file, tmp_path / name, **{"epochs": 1, **kw}), tiny_world_clip(0), resume=False
        )
        log = [json.loads(ln) for ln in (final.parent / "log.jsonl").read_text().splitlines()]
        return json.loads((final / "training.json").read_text()), [r.get("loss") for r in log]

    _, base = run("base")
    _, losses = run("accum", grad_accum_steps=2, gradient_checkpointing=True)
    assert losses == pytest.approx(base, abs=1e-5)
    rec, losses = run("bf16", mixed_precision="bf16")
    assert all(np.isfinite(v) for v in losses if v is not None) and rec["config"]["mixed_precision"] == "bf16"
    rec, _ = run("limited", epochs=1000, time_limit_s=0.05)
    assert rec["stopped_by"] == "time_limit" and rec["steps"] < rec["total_steps"]
    assert rec["evals"][-1]["step"] == rec["steps"] and rec["selection"]["step"] <= rec["steps"]


def test_two_processes_match_one(pairs_file, tmp_path):
    """accelerate's DDP over 2 CPU processes (gloo): each process takes half of every batch; the
    losses equal the single-process run's (the gradient is the whole batch's either way)."""
    from accelerate import debug_launcher

    kw = dict(epochs=1, freeze_ratio=0.0)
    debug_launcher(_ddp_run, args=(str(pairs_file), str(tmp_path / "ddp"), kw), num_processes=2)
    one = train_reward_model(
        make_config(pairs_file, tmp_path / "one", **kw), tiny_world_clip(0), resume=False
    )
    two = tmp_path / "ddp" / "final"
    rec = json.loads((two / "training.json").read_text())
    assert rec["processes"] == 2 and rec["sessions"][0]["processes"] == 2
    log1, log2 = (
        [json.loads(ln) for ln in (p.parent / "log.jsonl").read_text().splitlines()] for p in (one, two)
    )
    assert [r["event"] for r in log1] == [r["event"] for r in log2]
    for r1, r2 in zip(log1, log2, strict=True):
        key = "loss" if r1["event"] == "train" else "heldout_loss"
        assert r1[key] == pytest.approx(r2[key], abs=1e-4)
    assert json.loads((one / "training.json").read_text())["selection"]["step"] == rec["selection"]["step"]


def _ddp_run(pairs, out, kw):
    torch.set_num_threads(1)
    train_reward_model(make_config(pairs, out, **kw), tiny_world_clip(0), resume=False)


# ----------------------------------------------------------------------------- the model as a reward


def test_save_load_registry_and_gradient(trained, tmp_path):
    final, _ = trained
    x = torch.rand(2, 3, 32, 32)
    model = CompositionRewardModel(final)
    assert model.frozen and not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.aspect == ASPECT and model.name == "composition-spatial"
    with torch.no_grad():
        ref = model(x, PROMPTS)
    assert ref.dtype == torch.float32 and ref.shape == (2,)

    # save / load: identical scores; a run folder and the registry find the same model
    model.save_pretrained(tmp_path / "copy")
    for other in (
        CompositionRewardModel(tmp_path / "copy"),
        CompositionRewardModel(str(final.parent)),
        CompositionRewardModel.from_pretrained(final),
        create_reward(f"composition:{final}", device="cpu"),
    ):
        with torch.no_grad():
            assert torch.equal(other(x, PROMPTS), ref)
    assert reward_class("composition") is CompositionRewardModel
    with torch.no_grad():  # bf16 weights: scores stay float32 and close
        half = create_reward(f"composition:{final}", dtype="bf16")(x, PROMPTS)
    assert half.dtype == torch.float32 and torch.allclose(half, ref, atol=0.3)
    assert isinstance(model, Reward) and (model.loss_offset, model.default_weight) == (2.0, 0.1)
    torch.testing.assert_close(model.loss(x, PROMPTS), 2.0 - ref)
    assert CompositionRewardModel.from_pretrained(final).training is False
    trainable = CompositionRewardModel.from_pretrained(final)
    trainable.train()
    assert trainable.training and any(p.requires_grad for p in trainable.parameters())

    # the gradient reaches the image, at the native size and through the differentiable resize
    for size in (32, 48):
        img = torch.rand(2, 3, size, size, requires_grad=True)
        model(img, PROMPTS).sum().backward()
        assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0

    # export: fp16 in a weights folder, loadable by name from that folder
    dest = export_reward_model(final.parent, "test-spatial", dest_root=tmp_path / "weights")
    with torch.no_grad():
        torch.testing.assert_close(CompositionRewardModel(dest)(x, PROMPTS), ref, atol=0.05, rtol=0.02)
    assert json.loads((dest / "training.json").read_text())["exported"]["dtype"] == "float16"
    with pytest.raises(ValueError, match="attribute_binding model"):
        export_reward_model(final, "itercomp-attribute", dest_root=tmp_path / "weights")

    # shipped names: a clear message while untrained; bad inputs
    assert set(SHIPPED) == {"itercomp-attribute", "itercomp-spatial", "itercomp-nonspatial"}
    for name in SHIPPED:
        try:
            resolve_model_dir(name)
        except RewardNotTrainedError as e:
            assert "--export" in str(e) and SHIPPED[name] in str(e)
    with pytest.raises(FileNotFoundError, match="unknown composition reward"):
        CompositionRewardModel("no-such-model")
    with pytest.raises(ValueError, match="4 dimensions"):
        model(torch.rand(3, 32, 32), PROMPTS[:1])
    with pytest.raises(ValueError, match="unknown aspect"):
        CompositionRewardModel(tiny_world_clip(0), aspect="colour")


def test_untrained_fusion_head_is_the_clip_score():
    """A new dual-encoder model scores logit_scale * cos(image, prompt): the backbone's own ranking."""
    from compalign.rewards.world_clip.reward import WorldCLIPReward

    clip = tiny_world_clip(2)
    model = CompositionRewardModel(clip, aspect="attribute_binding")
    assert isinstance(model.head, FusionHead)
    for size in (32, 48):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            ref = WorldCLIPReward(clip, scaled=True)(x, PROMPTS)
            torch.testing.assert_close(model(x, PROMPTS), ref, atol=1e-4, rtol=1e-4)


def test_linear_fusion_head(tmp_path):
    """head_hidden=0: no MLP; it starts at the CLIP score, trains its linear term, saves and loads."""
    from compalign.rewards.world_clip.reward import WorldCLIPReward

    clip = tiny_world_clip(2)
    model = CompositionRewardModel(clip, aspect="spatial_relationship", head_hidden=0, freeze_ratio=1.0)
    assert model.head.mlp is None and model.head.config()["hidden"] == 0
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "head.linear.weight",
        "head.linear.bias",
    }
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, PROMPTS), WorldCLIPReward(clip, scaled=True)(x, PROMPTS), atol=1e-4, rtol=1e-4
        )
        model.head.linear.weight.add_(0.01 * torch.randn_like(model.head.linear.weight))
    model.save_pretrained(tmp_path / "lin")
    loaded = CompositionRewardModel(tmp_path / "lin")
    assert loaded.head.mlp is None
    with torch.no_grad():
        assert torch.equal(loaded(x, PROMPTS), model(x, PROMPTS))


def test_fusion_head_without_image_block(tmp_path):
    """image_block=False: the head never sees the image-only block (changing it changes nothing),
    starts at the CLIP score, and saves / loads with its config."""
    from compalign.rewards.world_clip.reward import WorldCLIPReward

    clip = tiny_world_clip(2)
    model = CompositionRewardModel(clip, aspect="non_spatial_relationship", head_image_block=False)
    d = model.head.embed_dim
    assert model.head.config()["image_block"] is False
    assert model.head.linear.in_features == 2 * d
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, PROMPTS), WorldCLIPReward(clip, scaled=True)(x, PROMPTS), atol=1e-4, rtol=1e-4
        )
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
        feats = model.backbone.features(x, PROMPTS)
        moved = feats.clone()
        moved[:, :d] = torch.randn_like(moved[:, :d])  # the image-only block
        torch.testing.assert_close(model.head(moved), model.head(feats))
        full = FusionHead(d, 8)  # the default head does read that block (the check can fail)
        for p in full.parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(full(moved), full(feats))
    model.save_pretrained(tmp_path / "noimg")
    loaded = CompositionRewardModel(tmp_path / "noimg")
    assert loaded.head.image_block is False
    with torch.no_grad():
        assert torch.equal(loaded(x, PROMPTS), model(x, PROMPTS))


def test_blip_backbone(ir_dir, pairs_file, tmp_path):
    """ImageReward's BLIP: the new model (ImageReward's MLP head, loaded from the checkpoint) scores
    exactly as ImageReward's raw score; freezing, gradient, save / load, one training epoch."""
    model = CompositionRewardModel(f"blip:{ir_dir}", aspect=ASPECT, freeze_ratio=0.5)
    assert model.config["head_pretrained"] and model.config["backbone"]["kind"] == "blip"
    assert freeze_plan(model.backbone, 0.7) == {
        "vision": {"layers": 2, "frozen_layers": 1, "embeddings_frozen": True},
        "text": {"layers": 2, "frozen_layers": 1, "embeddings_frozen": True},
    }
    on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.vision.encoder.layers.1.mlp.fc1.weight" in on
    assert "backbone.vision.encoder.layers.0.mlp.fc1.weight" not in on
    assert "backbone.text.encoder.layer.0.attention.self.query.weight" not in on
    assert "backbone.text.encoder.layer.1.crossattention.self.query.weight" in on
    ir = ImageRewardReward(ir_dir)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, PROMPTS), ir.raw_scores(x, PROMPTS), atol=1e-5, rtol=1e-5)
    img = torch.rand(2, 3, 40, 40, requires_grad=True)
    model(img, PROMPTS).sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "blip-model")
    loaded = CompositionRewardModel(tmp_path / "blip-model")
    with torch.no_grad():
        assert torch.equal(loaded(x, PROMPTS), model(x, PROMPTS))

    final = train_reward_model(
        make_config(
            pairs_file, tmp_path / "run", backbone=f"blip:{ir_dir}", epochs=1, head_learning_rate=None
        )
    )
    rec = json.loads((final / "training.json").read_text())
    assert rec["learning_rates"]["head"] == rec["learning_rates"]["backbone"]  # IterComp: one rate
    assert rec["backbone"]["kind"] == "blip" and len(rec["evals"]) == 1
    assert rec["prompts_truncated"] == 0  # world prompts fit BLIP's 35 tokens


def test_clip_backbone(clip_dir, tmp_path):
    """A transformers CLIP: the new model scores as CLIPScoreReward; gradient, freezing, save / load."""
    model = CompositionRewardModel(f"clip:{clip_dir}", aspect="non_spatial_relationship", freeze_ratio=0.5)
    assert freeze_plan(model.backbone, 0.5)["vision"] == {
        "layers": 2,
        "frozen_layers": 1,
        "embeddings_frozen": True,
    }
    on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.model.vision_model.encoder.layers.1.mlp.fc1.weight" in on
    assert "backbone.model.vision_model.encoder.layers.0.mlp.fc1.weight" not in on
    assert "backbone.model.logit_scale" not in on
    assert model.backbone.count_truncated([LONG_PROMPT, "a red cube", LONG_PROMPT]) == 1
    x = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, PROMPTS), CLIPScoreReward(clip_dir)(x, PROMPTS), atol=1e-4, rtol=1e-4
        )
    img = x.clone().requires_grad_(True)
    model(img, PROMPTS).sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "clip-model")
    loaded = create_reward(f"composition:{tmp_path / 'clip-model'}")
    assert loaded.aspect == "non_spatial_relationship" and loaded.name == "composition-nonspatial"
    with torch.no_grad():
        assert torch.equal(loaded(x, PROMPTS), model(x, PROMPTS))


# ----------------------------------------------------------------------------- command line


def test_cli_train_export_and_eval(cli, pairs_file, tmp_path, monkeypatch):
    import compalign.rewards.composition.model as model_mod
    import compalign.rewards.composition.train as train_mod

    wc = tiny_world_clip(0).save_pretrained(tmp_path / "wc")
    out = tmp_path / "run"
    for mod in (model_mod, train_mod):  # where the export writes and where the reward looks
        monkeypatch.setattr(mod, "weights_root", lambda: tmp_path / "weights")
    args = ["reward", "train", "--pairs", pairs_file, "--aspect", "spatial", "--backbone", f"world-clip:{wc}"]
    args += ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--freeze-ratio", "0.7", "--margin", "0.1"]
    args += ["--output-dir", out, "--device", "cpu", "--no-progress", "--export", "itercomp-spatial"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "held-out pair accuracy" in r.stdout
    assert (tmp_path / "weights" / "itercomp-spatial" / "model.safetensors").is_file()
    reward = create_reward("composition:itercomp-spatial")
    assert reward.aspect == ASPECT and reward.config["freeze_ratio"] == 0.7

    r = cli("reward", "eval", out, "--pairs", pairs_file, "--split", "all", "--out", tmp_path / "report.json")
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.stdout and "spearman" in r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pairs"] == N_TRAIN + N_HELDOUT and report["images"] == 2 * (N_TRAIN + N_HELDOUT)
    assert report["world"] and -1.0 <= report["spearman_vs_evaluator"] <= 1.0
    # the correct renders satisfy their prompts, the corrupted ones do not (the evaluator's view)
    assert report["evaluator_mean_score"] < 1.0

    r = cli("reward", "eval", "itercomp-spatial", "--pairs", pairs_file)
    assert r.exit_code == 0 and "split heldout" in r.stdout
    r = cli("reward", "eval", out, "--pairs", pairs_file, "--split", "valid")
    assert r.exit_code == 2 and "unknown split" in r.stderr
    r = cli("reward", "eval", tmp_path / "nothing", "--pairs", pairs_file)
    assert r.exit_code == 2
    # a backbone: its zero-shot score (the untrained head scores the backbone's CLIP cosine)
    r = cli("reward", "eval", f"world-clip:{wc}", "--pairs", pairs_file, "--split", "all")
    assert r.exit_code == 2 and "give --aspect" in r.stderr
    zero_args = ["--aspect", "spatial", "--pairs", pairs_file, "--split", "all", "-o", tmp_path / "zero.json"]
    r = cli("reward", "eval", f"world-clip:{wc}", *zero_args)
    assert r.exit_code == 0, r.output
    zero = json.loads((tmp_path / "zero.json").read_text())
    untrained = CompositionRewardModel(f"world-clip:{wc}", aspect=ASPECT, frozen=True)
    expect = evaluate_reward_on_pairs(untrained, pairs_file, split=None)
    assert zero["accuracy"] == pytest.approx(expect["accuracy"]) and zero["pairs"] == report["pairs"]
    # the contrastive term's options: bad values and backbones are one-line errors
    bad = ["reward", "train", "--pairs", pairs_file, "--aspect", "spatial", "--output-dir", tmp_path / "bad"]
    r = cli(*bad, "--contrastive-weight", "-1")
    assert r.exit_code == 2 and "contrastive_weight must be >= 0" in r.stderr
    r = cli(*bad, "--contrastive-weight", "1", "--contrastive-category", "nope")
    assert r.exit_code == 2 and "unknown contrastive_categories" in r.stderr
    r = cli(*bad, "--backbone", f"world-blip:{wc}", "--contrastive-weight", "1", "--device", "cpu")
    assert r.exit_code == 2 and "needs a world-clip backbone" in r.stderr


def test_spearman_and_world_report(trained, pairs_file):
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    final, _ = trained
    report = evaluate_reward_on_pairs(CompositionRewardModel(final), pairs_file, split="heldout")
    assert report["pairs"] == N_HELDOUT and report["split"] == "heldout"
    assert report["by_models"] == [
        {
            "better_model": "world-true",
            "worse_model": "world-wrong",
            "pairs": N_HELDOUT,
            "accuracy": report["accuracy"],
        }
    ]
    # every corrupted render fails a clause its correct render passes, so every held-out pair is
    # decided by the evaluator, oriented as the pairs file says: the two accuracies agree
    assert report["evaluator_decided_pairs"] == N_HELDOUT
    assert report["evaluator_decided_accuracy"] == pytest.approx(report["accuracy"])


def test_world_blip_backbone(tmp_path):
    """Cross-attention backbone: starts at the world-CLIP score, differentiable, saves/loads, and a
    saved world-blip model is a starting point (`world-blip:FOLDER`) with its head."""
    from compalign.rewards.composition.backbones import WorldBlipBackbone, create_backbone
    from compalign.rewards.world_clip.reward import WorldCLIPReward

    clip = tiny_world_clip(3)
    model = CompositionRewardModel(WorldBlipBackbone(clip, fusion={"heads": 2}), aspect=ASPECT)
    assert model.backbone.kind == "world-blip" and model.head.extra == 32
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the grounded block's head weights start at zero: the world-CLIP score
        clip_score = WorldCLIPReward(clip, scaled=True)(x, PROMPTS)
        torch.testing.assert_close(model(x, PROMPTS), clip_score, atol=1e-4, rtol=1e-4)
        model.head.mlp[-1].weight.normal_()  # as after training: the head reads the grounded block
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(img, PROMPTS).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert model.backbone.fusion.layers[0].multihead_attn.in_proj_weight.grad.abs().sum() > 0

    model.save_pretrained(tmp_path / "blip")
    loaded = CompositionRewardModel(tmp_path / "blip")
    with torch.no_grad():
        ref = model.eval()(x, PROMPTS)
        torch.testing.assert_close(loaded(x, PROMPTS), ref)
    cfg = json.loads((tmp_path / "blip" / "composition_reward.json").read_text())
    assert cfg["backbone"]["kind"] == "world-blip" and cfg["backbone"]["config"]["fusion"]["heads"] == 2

    # a saved world-blip model as a start: same backbone and head, so the same scores
    bb = create_backbone(f"world-blip:{tmp_path / 'blip'}")
    assert isinstance(bb, WorldBlipBackbone) and bb.head_is_pretrained
    again = CompositionRewardModel(bb, aspect=ASPECT)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x, PROMPTS), ref)
    with pytest.raises(ValueError, match="brings its trained head"):  # not silently the saved head
        CompositionRewardModel(bb, aspect=ASPECT, head_image_block=False)


@pytest.mark.parametrize(
    "name", ["itercomp-attribute", "itercomp-spatial", "itercomp-nonspatial", "itercomp-spatial-r4"]
)
def test_shipped_models_follow_the_reward_contract(name):
    """The shipped reward models load by name offline and score like any reward: one float per
    image, differentiable in the image, deterministic."""
    model = create_reward(f"composition:{name}", device="cpu")
    assert model.aspect == SHIPPED.get(name, "spatial_relationship")
    img = torch.rand(3, 3, 32, 32, requires_grad=True)
    prompts = [*PROMPTS, "a small red square inside a large blue circle"]
    s = model(img, prompts)
    assert s.shape == (3,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    s.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(model(img.detach(), prompts), s.detach())
        # the prompt matters: another prompt scores the same images differently
        assert not torch.allclose(model(img.detach(), prompts[::-1]), s.detach())


def test_config_diff_counts_missing_fields_as_defaults():
    """A run started before a config field existed resumes (the field counts as its default);
    a real change of that field is still refused."""
    from compalign.rewards.composition.train import RewardTrainConfig, reward_config_diff

    new = RewardTrainConfig(pairs="p.jsonl").to_dict()
    old = {k: v for k, v in new.items() if k != "head_image_block"}
    assert reward_config_diff(old, new) == []
    assert reward_config_diff(old, {**new, "head_image_block": False}) == ["head_image_block"]
    assert reward_config_diff(new, {**new, "margin": 0.5}) == ["margin"]


# ----------------------------------------------------------------------------- contrastive term


def test_contrastive_scores_match_the_reward_and_loss_masks_equal_scenes():
    """The batched score matrix is the reward's own score of every (image, prompt) combination;
    the loss masks scenes of equal meaning and is low when each prompt's image wins."""
    from compalign.rewards.composition.train import contrastive_loss, contrastive_scores

    torch.manual_seed(0)
    model = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT, head_hidden=16)
    with torch.no_grad():  # a head that is not the plain CLIP score
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(3, 3, 32, 32)
    prompts = PROMPTS + ["a cyan cross below a purple circle"]
    negs = [
        f"a {c} square above a {d} circle"
        for c, d in [("red", "blue"), ("green", "red"), ("blue", "green")]
        for _ in range(2)
    ]
    with torch.no_grad():
        s_all, s_neg = contrastive_scores(model, x, prompts, negs)
        assert s_all.shape == (3, 3) and s_neg.shape == (3, 2)
        no_negs = contrastive_scores(model, x, prompts, [])  # contrastive_negatives 0
        # the same scores; batch composition may move the last bits of a matmul on some CPUs
        assert torch.allclose(no_negs[0], s_all, atol=1e-5) and no_negs[1].shape == (3, 0)
        for i in range(3):
            row = model.raw_scores(x[i : i + 1].expand(3, -1, -1, -1), prompts)
            assert torch.allclose(s_all[i], row, atol=1e-5)
            assert torch.allclose(
                s_neg[i],
                model.raw_scores(x[i : i + 1].expand(2, -1, -1, -1), negs[2 * i : 2 * i + 2]),
                atol=1e-5,
            )
    good = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    bad = good.roll(1, dims=1)
    keys = torch.tensor([0, 1, 2])
    low, high = (
        contrastive_loss(good, torch.zeros(3, 1), keys),
        contrastive_loss(bad, torch.zeros(3, 1), keys),
    )
    assert low["loss"] < 0.01 < 5 < high["loss"] and low["accuracy"] == 1 and high["accuracy"] == 0
    # images 0 and 2 show the same scene: neither is the other's negative
    masked = contrastive_loss(
        torch.tensor([[9.0, 0.0, 9.0], [0.0, 9.0, 0.0], [9.0, 0.0, 9.0]]),
        torch.zeros(3, 0),
        torch.tensor([0, 1, 0]),
    )
    assert masked["loss"] < 0.01 and masked["accuracy"] == 1


def test_training_with_contrastive_term(pairs_file, tmp_path):
    """The term is logged, recorded and plotted, resumes exactly, and lowers the contrastive loss on
    renders of the pool (against the same run without it); non-world-clip backbones are refused."""
    from compalign.rewards.composition.train import _ContrastiveBatches, contrastive_loss, contrastive_scores

    pool = tmp_path / "pool"
    kw = dict(
        epochs=2,
        freeze_ratio=0.0,
        contrastive_weight=10.0,
        contrastive_batch_size=8,
        contrastive_pool_per_category=16,
        pool_dir=str(pool),
        seed=2,
    )
    full = train_reward_model(make_config(pairs_file, tmp_path / "a", **kw), tiny_world_clip(1), resume=False)
    rec = json.loads((full / "training.json").read_text())
    assert (
        rec["contrastive"]["categories"] == ["spatial", "position"] and rec["contrastive"]["weight"] == 10.0
    )
    log = [json.loads(ln) for ln in (full.parent / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if r["event"] == "train"]
    assert all(
        np.isfinite(r["contrastive_loss"]) and 0 <= r["contrastive_accuracy"] <= 1 for r in train_lines
    )
    assert (full.parent / "curves.png").stat().st_size > 0
    # interrupted + resumed == uninterrupted
    cfg_b = make_config(pairs_file, tmp_path / "b", **kw)
    assert train_reward_model(cfg_b, tiny_world_clip(1), resume=False, stop_at_step=3) is None
    resumed = train_reward_model(cfg_b, tiny_world_clip(5), resume=True)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the term does what it says: lower contrastive loss on pool renders than without it
    plain = train_reward_model(
        make_config(pairs_file, tmp_path / "c", **{**kw, "contrastive_weight": 0.0}),
        tiny_world_clip(1),
        resume=False,
    )
    assert json.loads((plain / "training.json").read_text())["contrastive"] is None
    cfg = make_config(pairs_file, tmp_path / "a", **kw)

    def held_loss(folder):
        m = CompositionRewardModel.from_pretrained(folder)
        batches = _ContrastiveBatches(cfg, m, rank=9, main=True)
        with torch.no_grad():
            vals = [
                contrastive_loss(
                    *contrastive_scores(
                        m, (cb := batches(s, "cpu"))["pixels"], cb["prompts"], cb["negatives"]
                    ),
                    cb["keys"],
                )["loss"]
                for s in range(4)
            ]
        return float(torch.stack(vals).mean())

    assert held_loss(full) < held_loss(plain) - 0.02  # identical runs if the term were not applied
    # only the world CLIP has this objective
    other = type("Model", (), {"backbone": type("Backbone", (), {"kind": "clip"})()})()
    with pytest.raises(ValueError, match="world-clip backbone"):
        _ContrastiveBatches(cfg, other, rank=0, main=True)
    for bad in (
        dict(contrastive_weight=-1.0),
        dict(contrastive_batch_size=1),
        dict(contrastive_categories=["nope"]),
    ):
        with pytest.raises(ValueError):
            make_config(pairs_file, tmp_path / "x", **bad)


def test_contrastive_term_keeps_two_processes_in_sync(pairs_file, tmp_path):
    """Under accelerate's DDP (2 CPU processes, each with its own pairs and its own renders) the
    contrastive term's gradient is all-reduced with the Bradley-Terry one: after two steps both
    processes hold the same weights, and they moved."""
    from accelerate import debug_launcher

    debug_launcher(_ddp_contrastive_run, args=(str(pairs_file), str(tmp_path)), num_processes=2)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.manual_seed(0)
    init = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sum(not torch.equal(a[k], init[k]) for k in a) > len(a) // 2


def _ddp_contrastive_run(pairs, out):
    from accelerate import PartialState

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CompositionRewardModel(tiny_world_clip(0), aspect=ASPECT)
    kw = dict(epochs=1, freeze_ratio=0.0, contrastive_weight=1.0, contrastive_batch_size=8)
    kw |= dict(contrastive_pool_per_category=16, pool_dir=f"{out}/pool")
    train_reward_model(make_config(pairs, f"{out}/run", **kw), model, resume=False, stop_at_step=2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, f"{out}/rank{PartialState().process_index}.pt")

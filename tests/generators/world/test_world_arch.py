"""The world-model denoiser candidates: UNet, UNet with coordinate channels, DiT."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from compalign.generators import create_generator
from compalign.generators.world.config import create_preset, list_presets
from compalign.generators.world.dit import WorldDiT
from compalign.generators.world.generator import load_pipeline
from compalign.generators.world.models import WorldArch, build_text_encoder, build_unet, count_parameters
from compalign.generators.world.pipeline import coordinate_channels
from compalign.generators.world.train import checkpoint_pipeline, list_checkpoints, train_world_model
from tests.factories import load_script

CANDIDATES = {
    "unet": {},
    "unet-coord": dict(coord_channels=True),
    "unet-coord-attn16": dict(coord_channels=True, attention_levels=(True, True)),
    "dit": dict(denoiser="dit", dit_width=32, dit_depth=2, dit_head_dim=16),
    "dit-patch2": dict(denoiser="dit", dit_width=32, dit_depth=1, dit_head_dim=16, dit_patch_size=2),
    "dit-no-pooled": dict(denoiser="dit", dit_width=32, dit_depth=1, dit_head_dim=16, pooled_text=False),
}
PROMPTS = ["a red circle to the left of a blue square", "a green triangle"]


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Random non-zero weights everywhere (zero-initialised layers would hide load mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_candidate_saves_loads_and_generates(name, tmp_path, make_pipeline):
    pipe = make_pipeline(seed=1, **CANDIDATES[name])
    _randomize(pipe.unet)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = pipe.denoise(noise, PROMPTS)
    assert before.shape == (2, 3, 32, 32) and 0 <= before.min() <= before.max() <= 1
    pipe.save_pretrained(tmp_path / "pipe")
    cfg = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert cfg["_class_name"] == type(pipe.unet).__name__
    loaded = load_pipeline(tmp_path / "pipe")
    assert type(loaded.unet) is type(pipe.unet)
    assert torch.equal(loaded.denoise(noise, PROMPTS), before)
    # the prompt reaches the image
    assert not torch.equal(pipe.denoise(noise, PROMPTS[::-1]), before)


@pytest.mark.parametrize("name", ["unet-coord", "dit"])
def test_candidate_trains_and_generates_through_the_generator(name, tmp_path, make_config):
    from compalign.generators.world.models import WorldArch as Arch
    from tests.factories import TINY_ARCH

    config = make_config(tmp_path, arch=Arch(**{**TINY_ARCH, **CANDIDATES[name]}), max_steps=2)
    final = train_world_model(config)
    assert final is not None
    record = json.loads((final / "training.json").read_text())
    assert record["steps"] == 2 and record["config"]["arch"]["denoiser"] == Arch(**CANDIDATES[name]).denoiser
    log = [json.loads(line) for line in (config.run_dir / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    gen = create_generator(str(config.run_dir), device="cpu")
    images = gen.generate(PROMPTS, seeds=[0, 1])
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert torch.equal(images, gen.generate(PROMPTS, seeds=[0, 1]))
    # the last checkpoint's EMA pipeline is the exported one; the raw weights differ from it
    pipe, step = checkpoint_pipeline(list_checkpoints(config.run_dir)[-1])
    assert step == 2
    final_state, ema_state = load_pipeline(final).unet.state_dict(), pipe.unet.state_dict()
    assert all(torch.equal(final_state[k], ema_state[k]) for k in final_state)
    raw = checkpoint_pipeline(list_checkpoints(config.run_dir)[-1], ema=False)[0].unet.state_dict()
    assert any(not torch.equal(raw[k], ema_state[k]) for k in raw)
    if name != "dit":
        return
    # a fresh process loads the saved WorldDiT by its config alone
    code = (
        "import sys, torch; from compalign.generators import create_generator; "
        "g = create_generator(sys.argv[1], device='cpu'); "
        "print(type(g.pipe.unet).__name__, g.pipe.unet.config.in_channels)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(final)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [type(gen.pipe.unet).__name__, str(gen.pipe.unet.config.in_channels)]


def test_coordinate_channels_point_right_and_down():
    c = coordinate_channels(torch.zeros(3, 12, 4, 8))
    assert c.shape == (3, 2, 4, 8)
    x, y = c[0, 0], c[0, 1]
    assert torch.all(x[:, 1:] > x[:, :-1]) and torch.all(x[1:] == x[:-1])  # x grows to the right
    assert torch.all(y[1:] > y[:-1]) and torch.all(y[:, 1:] == y[:, :-1])  # y grows downwards
    assert torch.allclose(x.mean(), torch.tensor(0.0)) and -1 < x.min() and x.max() < 1


def test_coord_unet_gets_the_coordinates(make_pipeline):
    pipe = make_pipeline(seed=2, coord_channels=True)
    _randomize(pipe.unet, seed=3)
    assert pipe.unet.config.in_channels == 14 and pipe.unet.config.out_channels == 12
    x = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(4))
    text, mask = pipe.encode_prompt(PROMPTS)
    w = mask.unsqueeze(-1).float()
    pooled = (text * w).sum(1) / w.sum(1)
    t = torch.tensor(500)

    def unet(inp):
        return pipe.unet(inp, t, text, class_labels=pooled, encoder_attention_mask=mask).sample

    with torch.no_grad():
        out = pipe.predict(x, t, text, mask)
        assert torch.allclose(out, unet(torch.cat([x, coordinate_channels(x)], dim=1)), atol=1e-6)
        assert not torch.allclose(out, unet(torch.cat([x, torch.zeros_like(x[:, :2])], dim=1)), atol=1e-4)
        with pytest.raises(ValueError, match="channels"):
            pipe.predict(x[:, :11], t, text, mask)


def test_dit_is_not_translation_equivariant_and_checks_its_inputs():
    torch.manual_seed(0)
    dit = WorldDiT(sample_size=8, in_channels=12, out_channels=12, width=32, depth=1, attention_head_dim=16,
                   cross_attention_dim=16, projection_class_embeddings_input_dim=16)  # fmt: skip
    _randomize(dit)
    x = torch.randn(1, 12, 8, 8)
    text, mask = torch.randn(1, 5, 16), torch.ones(1, 5)
    with torch.no_grad():
        out = dit(x, 10, text, class_labels=text.mean(1), encoder_attention_mask=mask).sample
        shifted = dit(
            x.roll(2, dims=3), 10, text, class_labels=text.mean(1), encoder_attention_mask=mask
        ).sample
        batch_t = dit(
            x, torch.tensor([10]), text, class_labels=text.mean(1), encoder_attention_mask=mask
        ).sample
    assert out.shape == x.shape and torch.equal(out, batch_t)
    # 2-D position embeddings: moving the content does not just move the output
    assert not torch.allclose(shifted, out.roll(2, dims=3), atol=1e-4)
    dit.enable_gradient_checkpointing()
    x.requires_grad_(True)
    again = dit(x, 10, text, class_labels=text.mean(1), encoder_attention_mask=mask).sample
    again.square().mean().backward()
    assert (
        torch.allclose(again, out, atol=1e-6) and x.grad is not None and dit.proj_out.weight.grad is not None
    )
    with pytest.raises(ValueError, match="class_labels"):
        dit(x, 10, text)
    with pytest.raises(ValueError, match="attention_head_dim"):
        WorldDiT(width=30, attention_head_dim=16)


def test_bad_denoiser_arch():
    with pytest.raises(ValueError, match="denoiser"):
        WorldArch(denoiser="mlp")
    with pytest.raises(ValueError, match="coord_channels"):
        WorldArch(denoiser="dit", coord_channels=True)
    with pytest.raises(ValueError, match="dit_width"):
        WorldArch(denoiser="dit", dit_width=100, dit_head_dim=32)
    with pytest.raises(ValueError, match="dit_patch_size 3"):
        WorldArch(denoiser="dit", dit_patch_size=3)


def test_dit_patch_size_sets_the_tokens():
    """`dit_patch_size` 2 makes 64 tokens of the 16x16 folded grid; the output keeps its shape."""
    arch = dict(denoiser="dit", dit_width=32, dit_depth=1, dit_head_dim=16)
    one, two = build_unet(WorldArch(**arch)), build_unet(WorldArch(**arch, dit_patch_size=2))
    assert one.pos_embed.pos_embed.shape[1] == 256 and two.pos_embed.pos_embed.shape[1] == 64
    x, text = torch.randn(2, 12, 16, 16), torch.randn(2, 5, 64)
    with torch.no_grad():
        assert two(x, 10, text, class_labels=text.mean(1)).sample.shape == x.shape


def test_ab_presets_share_everything_but_the_architecture():
    names = [n for n in list_presets() if n.startswith("world-ab-")]
    arms = {"world-ab-unet", "world-ab-coord", "world-ab-dit", "world-ab-dit4", "world-ab-coordt5"}
    assert arms <= set(names)
    base = create_preset("world-base").arch
    base_params = count_parameters(build_unet(base)) + count_parameters(build_text_encoder(base))
    configs = {n: create_preset(n) for n in names}
    same = ("seed", "data_seed", "categories", "batch_size", "learning_rate", "lr_schedule", "warmup_steps",
            "min_lr_ratio", "pool_per_category", "init_from", "ema_decay", "cond_dropout")  # fmt: skip
    ref = configs["world-ab-unet"]
    for name, c in configs.items():
        assert c.init_from is None and c.mode == "diffusion", name
        assert all(getattr(c, f) == getattr(ref, f) for f in same), name
        assert c.keep_checkpoints * c.checkpoint_every >= c.max_steps, name  # every checkpoint stays
        n = count_parameters(build_unet(c.arch)) + count_parameters(build_text_encoder(c.arch))
        assert abs(n / base_params - 1) < 0.06, (name, n, base_params)
    assert configs["world-ab-dit"].arch.denoiser == "dit" and configs["world-ab-coord"].arch.coord_channels


def _ab_script():
    return load_script("ab_world_arch")


def test_ab_script_evaluates_every_checkpoint_once_and_plots(tmp_path, make_config, capsys):
    ab = _ab_script()
    root = tmp_path / "ab"
    config = make_config(
        tmp_path, output_dir=str(root / "unet"), max_steps=3, checkpoint_every=1, keep_checkpoints=5
    )
    train_world_model(config)
    ev = ["evaluate", "--root", str(root), "--arms", "unet", "--categories", "single_object", "position",
          "--per-category", "2", "-n", "1", "--sample-steps", "2"]  # fmt: skip
    ab.main([*ev, "--every", "2"])  # the 2nd checkpoint and the last step
    files = sorted((root / "eval").rglob("step_*.json"))
    assert [f.name for f in files] == ["step_0000002.json", "step_0000003.json"]
    r = json.loads(files[1].read_text())
    assert r["arm"] == "unet" and r["step"] == 3 and r["sample_steps"] == 2 and r["max_steps"] == 3
    assert set(r["categories"]) == {"single_object", "position"} and r["categories"]["position"]["n"] == 2
    assert "spatial_relationship" in r["aspects"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    ab.main(ev)  # only the missing checkpoint is evaluated
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert capsys.readouterr().out.startswith("unet step 1:")
    ab.main(["plot", "--root", str(root), "--arms", "unet", "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 1000
    table = (tmp_path / "curves.md").read_text().splitlines()
    assert [row.split("|")[2].strip() for row in table[2:]] == ["1", "2", "3"]
    ab.main(
        ["plot", "--root", str(root), "--arms", "unet", "--metric", "score", "--out", str(tmp_path / "s.png")]
    )
    scores = (tmp_path / "s.md").read_text().splitlines()
    last = json.loads(files[1].read_text())  # step 3: spatial_relationship is position alone here
    assert float(scores[4].split("|")[4]) == pytest.approx(
        100 * last["categories"]["position"]["score"], abs=0.051
    )
    assert float(table[4].split("|")[4]) == pytest.approx(
        100 * last["categories"]["position"]["accuracy"], abs=0.051
    )
    position = last["categories"]["position"]
    assert 0 <= position["objects"] <= 1 and "objects" not in last["categories"]["single_object"]
    ab.main(["table", "--root", str(root), "--arms", "unet", "--out", str(tmp_path / "t.md")])
    rows = (tmp_path / "t.md").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("| arm | step | images seen | single_object")
    cells = [c.strip() for c in rows[4].split("|")[1:-1]]
    assert cells[:3] == ["unet", "3", "0k"] and cells[-3] == ""  # no spatial category evaluated
    assert cells[-2].startswith(f"{100 * position['objects']:.0f} / ")
    # results kept elsewhere (e.g. a committed results folder) are read through --eval-root
    capsys.readouterr()
    ab.main(
        ["table", "--root", str(tmp_path / "nowhere"), "--eval-root", str(root / "eval"), "--arms", "unet"]
    )
    assert capsys.readouterr().out.splitlines() == rows
    # other settings are kept apart under a tag; --at-steps picks checkpoints
    ab.main([*ev[:-2], "--sample-steps", "3", "--tag", "final", "--at-steps", "3"])
    tagged = sorted((root / "eval").glob("*-final/unet/step_*.json"))
    assert [f.name for f in tagged] == ["step_0000003.json"]
    assert json.loads(tagged[0].read_text())["sample_steps"] == 3
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # the untagged results are untouched
    ab.main(
        ["plot", "--root", str(root), "--arms", "unet", "--tag", "final", "--out", str(tmp_path / "f.png")]
    )
    assert [row.split("|")[2].strip() for row in (tmp_path / "f.md").read_text().splitlines()[2:]] == ["3"]
    ab.main(["plot", "--root", str(root), "--arms", "unet", "--metric", "relation_given_objects",
             "--out", str(tmp_path / "r.png")])  # fmt: skip
    cell = (tmp_path / "r.md").read_text().splitlines()[4].split("|")[4].strip()
    given = position["relation_given_objects"]
    assert cell == ("" if given is None else f"{100 * given:.1f}")


def test_ab_script_budget_gives_equal_time(tmp_path, capsys):
    """--budget-minutes turns each arm's measured time per step into its steps (and checkpoints)."""
    import argparse

    ab = _ab_script()
    args = argparse.Namespace(root=tmp_path, budget_minutes=10.0, seed=0, pool_dir=None)
    with pytest.raises(SystemExit):
        ab.train_command(args, "unet")
    assert "bench.json" in capsys.readouterr().err
    arms = {"unet": {"s_per_step": 0.6}, "dit4": {"s_per_step": 0.75}}
    (tmp_path / "bench.json").write_text(json.dumps({"arms": arms}))
    cmd = ab.train_command(args, "unet")
    assert cmd[cmd.index("max_steps=1000") - 1] == "--set" and "checkpoint_every=100" in cmd
    assert "max_steps=800" in ab.train_command(args, "dit4")
    with pytest.raises(SystemExit):
        ab.train_command(args, "coord")
    assert "'coord'" in capsys.readouterr().err


def test_ab_script_rejects_bad_input(tmp_path, capsys):
    ab = _ab_script()
    for argv, word in (
        (["plot", "--arms", "nope"], "world-ab-nope"),
        (["evaluate", "--categories", "colour"], "'colour'"),
        (["plot", "--root", str(tmp_path)], "no evaluation results"),
    ):
        with pytest.raises(SystemExit) as e:
            ab.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and word in err and len(err.splitlines()) == 1
    # an arm is an A/B arm's name, or any preset's run under --root
    assert (ab.preset("unet"), ab.preset("world-web")) == ("world-ab-unet", "world-web")


@pytest.mark.parametrize("name", ["unet-coord", "dit"])
def test_candidate_loss_decreases_on_a_fixed_batch(name, tmp_path, make_config, make_pipeline):
    from compalign.generators.world.data import make_batch
    from tests.factories import fixed_batch_losses

    config = make_config(tmp_path, cond_dropout=0.0)
    pipe = make_pipeline(**CANDIDATES[name])
    losses = fixed_batch_losses(config, pipe, make_batch(seed=0, step=0, batch_size=8, categories=["colors"]))
    assert losses[-1] < 0.7 * losses[0], losses
    # the denoiser reads the timestep
    x, (text, mask) = torch.randn(2, 12, 16, 16), pipe.encode_prompt(PROMPTS)
    with torch.no_grad():
        assert not torch.allclose(
            pipe.predict(x, torch.tensor(100), text, mask), pipe.predict(x, torch.tensor(900), text, mask)
        )


def test_bound_fits_the_joined_curve_of_a_model(tmp_path, capsys):
    """Two runs of one model (the second continues the first: offset), acc = 10 + 5 ln(step)."""
    import math

    ab = _ab_script()
    key = ab.evaluator_key()
    for root, arm, steps, offset in (
        (tmp_path / "a", "unet", (1000, 2000), 0),
        (tmp_path / "b", "v2", (1000,), 2000),
    ):
        folder = root / "eval" / key / arm
        folder.mkdir(parents=True)
        for s in steps:
            acc = (10 + 5 * math.log(s + offset)) / 100
            (folder / f"step_{s:07d}.json").write_text(
                json.dumps({"step": s, "categories": {"spatial": {"accuracy": acc}}})
            )
    curves = [f"{tmp_path / 'a'}:unet", f"{tmp_path / 'b'}:v2+2000"]
    ab.main(["bound", "--curve", *curves, "--targets", "spatial=60", "--from-step", "500",
             "--budget-steps", "8000", "--out", str(tmp_path / "b.md")])  # fmt: skip
    row = (tmp_path / "b.md").read_text().splitlines()[2].split("|")
    assert (
        row[1].strip() == "spatial"
        and row[2].strip() == "3"
        and row[3].strip() == f"{10 + 5 * math.log(3000):.1f} at 3000"
    )
    assert float(row[4]) == pytest.approx(5 * math.log(2), abs=0.05)  # points per doubling
    assert float(row[5]) == pytest.approx(10 + 5 * math.log(8000), abs=0.05)
    assert int(row[7]) == pytest.approx(math.exp(10), rel=1e-3)  # 60 = 10 + 5 ln(step)
    with pytest.raises(SystemExit):
        ab.main(["bound", "--curve", "nocolon", "--budget-steps", "10"])
    assert "expected ROOT:ARM" in capsys.readouterr().err

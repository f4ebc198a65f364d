from __future__ import annotations

import json
import shutil

import pytest
import torch

from compalign.generators import ModelNotTrainedError, create_generator, list_generators, register_generator
from compalign.generators.base import Generator, noise_for_seeds
from compalign.generators.generate import generate_images, read_prompts
from compalign.generators.world.generator import WorldGenerator

PROMPTS = ["a red circle", "a blue square on the left of a green triangle"]


def test_save_load_round_trip_offline(tmp_path, monkeypatch, make_pipeline):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = make_pipeline()
    pipe.save_pretrained(tmp_path / "m")
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "m" / sub).is_dir()
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "WorldPipeline" and index["default_steps"] == 3
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    gen = WorldGenerator.from_pretrained(tmp_path / "m")
    noise = noise_for_seeds([1, 2], (3, 32, 32))
    a = pipe.denoise(noise, PROMPTS)
    b = gen.generate(PROMPTS, noise=noise)
    assert torch.equal(a, b)


def test_generation_deterministic_and_batch_independent(tiny_saved):
    gen = create_generator(tiny_saved)
    assert isinstance(gen, Generator) and not gen.differentiable
    assert gen.noise_shape(2) == (2, 3, 32, 32)
    a = gen.generate(PROMPTS, seeds=[5, 6])
    b = gen.generate(PROMPTS, seeds=[5, 6])
    assert a.shape == (2, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    alone = gen.generate(PROMPTS[1:], seeds=[6])
    assert torch.allclose(alone[0], a[1], atol=1e-5)
    assert not torch.allclose(gen.generate(PROMPTS, seeds=[7, 8]), a)
    assert torch.equal(gen.sample_noise(2, seed=5).cpu(), noise_for_seeds([5, 6], (3, 32, 32)))


def test_generate_from_noise_reaches_the_noise(make_pipeline):
    gen = WorldGenerator(make_pipeline(steps=1), name="tiny-onestep")
    assert gen.differentiable
    noise = gen.sample_noise(2, seed=0).requires_grad_(True)
    images = gen.generate_from_noise(noise, PROMPTS, guidance_scale=1.0)
    assert images.shape == (2, 3, 32, 32) and images.requires_grad
    images.mean().backward()
    assert noise.grad is not None and noise.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.pipe.unet.parameters())  # weights frozen


def test_steps_make_a_multi_step_model_differentiable(tiny_saved):
    full = create_generator(tiny_saved)  # 3 steps
    two = create_generator(tiny_saved, steps=2)
    assert not full.differentiable and two.differentiable
    assert two.settings()["num_inference_steps"] == 2 and full.settings()["num_inference_steps"] == 3
    # `steps` is the default of both paths: plain generation equals the pipeline at 2 steps
    noise = noise_for_seeds([1, 2], (3, 32, 32))
    assert torch.equal(
        two.generate(PROMPTS, noise=noise), full.generate(PROMPTS, noise=noise, num_inference_steps=2)
    )
    assert not torch.allclose(two.generate(PROMPTS, noise=noise), full.generate(PROMPTS, noise=noise))
    z = noise.clone().requires_grad_(True)
    images = two.generate_from_noise(z, PROMPTS)
    images.mean().backward()  # through both steps (and classifier-free guidance)
    assert z.grad is not None and z.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(images, two.generate(PROMPTS, noise=noise), atol=1e-5)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps of world model"):
            create_generator(tiny_saved, steps=bad)


def test_registry(tiny_saved):
    names = list_generators()
    assert {"world-base", "world-onestep", "world-twostep"} <= set(names)
    with pytest.raises(ModelNotTrainedError) as e:  # a preset whose weights are not shipped
        create_generator("world-onestep-phase5")
    assert "compalign world train --preset world-onestep-phase5" in str(e.value)
    with pytest.raises(KeyError):
        create_generator("no-such-model")
    register_generator(
        "tinytest", lambda rest, device=None, dtype=None: create_generator(rest, device=device)
    )
    assert create_generator(f"tinytest:{tiny_saved}").name == tiny_saved.name
    assert "tinytest:" in list_generators()


def test_generate_images_writes_files(tiny_saved, tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na red circle\n\na blue square\n")
    prompts = read_prompts(tmp_path / "p.txt")
    assert prompts == ["a red circle", "a blue square"]
    m = generate_images(prompts, model=str(tiny_saved), seeds=[0, 1, 2], out_dir=tmp_path / "o")
    assert len(m["images"]) == 6 and m["grid"] == "grid.png"
    from PIL import Image

    assert Image.open(tmp_path / "o" / "p001_s2.png").size == (32, 32)
    grid = Image.open(tmp_path / "o" / "grid.png")
    # 3 seeds x 2 prompts of 128-px tiles, each with its label (prompt, seed) under it
    assert grid.size[0] >= 3 * 128 and grid.size[1] >= 2 * 128
    assert grid.size[0] < 4 * 128 + 200 and grid.size[1] < 3 * 128 + 200
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["images"][4]["seed"] == 1


def test_shipped_weights_fit_the_budget_and_load():
    from compalign.generators import shipped_models
    from compalign.generators.registry import weights_root
    from compalign.generators.world.train import folder_size

    root = weights_root()
    assert (folder_size(root) if root.is_dir() else 0) <= 40e6  # the package's budget for world weights
    for name in shipped_models():
        assert (root / name / "training.json").is_file(), f"{name} has no training record"


def test_world_quality_command_at_other_steps(tiny_saved, tmp_path):
    from typer.testing import CliRunner

    from compalign.cli import app
    from compalign.world.quality import evaluate_generator

    args = ["world", "quality", str(tiny_saved), "-c", "single_object", "-c", "spatial",
            "--per-category", "2", "-n", "1", "--no-progress"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--steps", "2", "--json", str(tmp_path / "q.json")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "q.json").read_text())["results"][0]
    want = evaluate_generator(
        create_generator(tiny_saved, steps=2), ["single_object", "spatial"], 2, [0], progress=False
    )
    assert [x["score"] for x in got["records"]] == [x["score"] for x in want["records"]]
    assert json.loads((tmp_path / "q.json").read_text())["spread"] is None  # one model: no spread
    r = CliRunner().invoke(app, [*args[:2], str(tiny_saved), *args[2:]])  # the same model twice
    assert r.exit_code == 2 and "two models are named" in r.output
    for run in ("run-a", "run-b"):  # two runs' final/ folders: the table names the runs
        shutil.copytree(tiny_saved, tmp_path / run / "final")
    finals = [str(tmp_path / run / "final") for run in ("run-a", "run-b")]
    r = CliRunner().invoke(app, [*args[:2], *finals, *args[3:], "--json", str(tmp_path / "q3.json")])
    assert r.exit_code == 0 and "best in every aspect: run-a, run-b" in r.output, r.output
    got = json.loads((tmp_path / "q3.json").read_text())
    assert [x["model"] for x in got["results"]] == ["run-a", "run-b"]
    assert got["spread"]["aspects"]["spatial_relationship"]["span"] == 0.0  # the same weights twice
    r = CliRunner().invoke(app, [*args, "--steps", "0"])
    assert r.exit_code == 2 and "--steps must be >= 1" in r.output

"""`reno:` generator: a differentiable base + ReNO as a gallery model (IterComp's gallery expansion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from compalign.generators import create_generator
from compalign.generators.world.generator import WorldGenerator
from compalign.noise_optimization.generator import ReNOGenerator, parse_reno_spec
from compalign.noise_optimization.reno import ReNOConfig, WeightedReward, optimize_noise
from tests.factories import Redness, tiny_pipeline


@pytest.fixture(scope="module")
def onestep():
    return WorldGenerator(tiny_pipeline(seed=1, steps=1), name="tiny-onestep", device="cpu")


@pytest.fixture(scope="module")
def onestep_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("reno_gen") / "tiny-onestep"
    tiny_pipeline(seed=1, steps=1).save_pretrained(path)
    return path


def test_parse_spec():
    spec = "world-onestep,composition:/a/b=0.3,world-clip=1,iterations=7,lr=2"
    base, rewards, settings = parse_reno_spec(spec)
    assert base == "world-onestep"
    assert rewards == ["composition:/a/b=0.3", "world-clip=1"]
    assert settings == {"iterations": 7, "lr": 2.0}
    for bad, msg in [
        ("world-onestep", "at least one reward"),
        (",world-clip=1", "no base given"),
        ("world-onestep,world-clip=1,iterations=many", "iterations='many' is not a int"),
        ("world-onestep,,world-clip=1", "empty item"),
        ("world-onestep,world-clip=1,iterations=0", "iterations must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_reno_spec(bad)


def test_images_are_renos_best_images(onestep):
    cfg = ReNOConfig(iterations=6, lr=2.0, progress=False)
    rewards = [WeightedReward("redness", Redness())]
    gen = ReNOGenerator(onestep, rewards, cfg)
    prompts = ["a red circle", "a blue square"]
    images = gen.generate(prompts, seeds=[3, 4])
    ref = optimize_noise(onestep, prompts, rewards, [3, 4], cfg)
    assert torch.equal(images, ref.best_images)  # same seed, same image
    plain = onestep.generate(prompts, seeds=[3, 4])
    assert (Redness()(images, prompts) > Redness()(plain, prompts)).all()  # ReNO raised the reward
    assert gen.settings()["reno"]["rewards"] == {"redness": 1.0} and gen.resolution == onestep.resolution
    with pytest.raises(ValueError, match="starts from seeds"):
        gen.generate(prompts, noise=torch.zeros(2, *onestep.noise_shape(1)[1:]))
    multistep = WorldGenerator(tiny_pipeline(seed=1, steps=4), name="tiny-multi", device="cpu")
    with pytest.raises(ValueError, match="one- or two-step"):
        ReNOGenerator(multistep, rewards, cfg)


def test_create_generator_and_gallery_expand(cli, onestep_dir, tmp_path):
    spec = f"reno:{onestep_dir},world-clip=1,iterations=2"
    gen = create_generator(spec, device="cpu")
    assert isinstance(gen, ReNOGenerator) and gen.config.iterations == 2
    assert [r.name for r in gen.rewards] == ["world-clip"]
    # a gallery of one model, expanded with the ReNO model, ranked by the exact evaluator
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square on the left of a green triangle\n")
    g = tmp_path / "gal"
    r = cli("gallery", "generate", "-o", g, "-m", str(onestep_dir), "--aspect", "spatial_relationship",
            "--prompts", prompts, "--seed", "5", "--device", "cpu")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = cli("gallery", "expand", g, "--add-model", f"reno1={spec}", "--rank", "auto", "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads((g / "gallery.json").read_text())
    assert [d["image_reno1"] for d in data] == ["images/reno1/00000.png", "images/reno1/00001.png"]
    assert all(sorted(d["rank"]) == [1, 2] or sorted(d["rank"]) == [1, 1] for d in data)
    ref = gen.generate([data[1]["prompt"]], seeds=[6])  # record i has seed 5 + i
    from compalign.generators.generate import to_uint8

    assert np.array_equal(np.asarray(Image.open(g / "images/reno1/00001.png")), to_uint8(ref)[0])
    # a bad spec is refused before anything is rendered
    r = cli("gallery", "expand", g, "--add-model", f"reno2=reno:{onestep_dir}")
    assert r.exit_code == 2 and "at least one reward" in r.stderr
    r = cli("gallery", "expand", g, "--add-model", f"reno2=reno:{onestep_dir},world-clip=1,optimizer=rmsprop")
    assert r.exit_code == 2 and "optimizer must be one of" in r.stderr
    r = cli("gallery", "expand", g, "--add-model", "reno2=reno:no-such-model,world-clip=1")
    assert r.exit_code == 2 and "unknown model" in r.stderr

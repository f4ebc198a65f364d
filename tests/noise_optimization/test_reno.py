"""ReNO optimizer, tasks, runner and CLI on a tiny one-step world generator (CPU, seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compalign.generators.world.generator import WorldGenerator
from compalign.noise_optimization.reno import ReNOConfig, WeightedReward, chi_regularizer, optimize_noise
from compalign.noise_optimization.runner import INITIAL_DIR, run_task
from compalign.noise_optimization.tasks import TaskError, build_task
from compalign.rewards.base import Reward
from tests.generators.conftest import tiny_pipeline


class Redness(Reward):
    """A differentiable test reward: mean red minus mean green/blue (higher = redder image)."""

    name = "redness"
    loss_offset = 1.0

    def forward(self, images, prompts):
        return (images[:, 0] - 0.5 * (images[:, 1] + images[:, 2])).mean(dim=(1, 2)).float()


@pytest.fixture(scope="module")
def onestep():
    torch.manual_seed(0)
    return WorldGenerator(tiny_pipeline(seed=1, steps=1), name="tiny-onestep", device="cpu")


def redness(weight=1.0, optimize=True):
    return WeightedReward("redness", Redness(), weight, optimize)


def test_chi_regularizer_is_minimal_at_the_typical_norm():
    d = 48
    z = torch.randn(1, d)
    z = z / z.norm()
    vals = [float(chi_regularizer(z * r)) for r in (2.0, math.sqrt(d - 1), 12.0)]
    assert vals[1] < vals[0] and vals[1] < vals[2]
    # its formula: 0.5 r^2 - (d - 1) log r
    r = 3.0
    assert abs(float(chi_regularizer(z * r)) - (0.5 * r * r - (d - 1) * math.log(r))) < 1e-4


def test_reno_raises_the_reward_and_keeps_the_best(onestep):
    cfg = ReNOConfig(iterations=8, lr=2.0, progress=False)
    res = optimize_noise(onestep, ["a red circle", "a blue square"], [redness()], [0, 1], cfg)
    losses = [h["loss"] for h in res.history]
    for b in range(2):
        traj = [lo[b] for lo in losses]
        assert res.best_loss[b] == pytest.approx(min(traj))
        assert res.best_iteration[b] == traj.index(min(traj))
        assert res.best_loss[b] < res.initial_loss[b]  # optimisation helped
    # best image is the image at the best iteration
    assert res.best_images.shape == res.initial_images.shape == (2, 3, 32, 32)
    score = Redness()(res.best_images, ["", ""])
    assert torch.allclose(score, torch.tensor(res.reward_at_best("redness")), atol=1e-2)


def test_batched_equals_one_at_a_time(onestep):
    cfg = ReNOConfig(iterations=4, lr=1.0, progress=False)
    both = optimize_noise(onestep, ["a red circle", "a green cross"], [redness()], [3, 4], cfg)
    alone = optimize_noise(onestep, ["a green cross"], [redness()], [4], cfg)
    assert both.history[-1]["loss"][1] == pytest.approx(alone.history[-1]["loss"][0], abs=1e-4)


def test_benchmark_reward_is_logged_but_not_optimised(onestep):
    cfg = ReNOConfig(iterations=3, lr=1.0, progress=False)
    with pytest.raises(ValueError, match="no reward to optimise"):
        optimize_noise(onestep, ["a red circle"], [redness(optimize=False)], [0], cfg)
    zero = WeightedReward("zero", Redness(), 0.0)
    with pytest.raises(ValueError, match="no reward"):
        optimize_noise(onestep, ["a red circle"], [zero], [0], cfg)

    class Blueness(Redness):
        def forward(self, images, prompts):
            return images[:, 2].mean(dim=(1, 2)).float()

    res = optimize_noise(
        onestep, ["a red circle"], [redness(), WeightedReward("blue", Blueness(), 1.0, False)], [0], cfg
    )
    assert len(res.history[-1]["rewards"]["blue"]) == 1
    # the objective is the optimised reward only
    assert res.history[0]["loss"][0] == pytest.approx(1.0 - res.history[0]["rewards"]["redness"][0], abs=1e-5)


def test_best_of_n_and_none(onestep):
    cfg = ReNOConfig(iterations=5, search="best-of-n", progress=False)
    res = optimize_noise(onestep, ["a red circle"], [redness()], [0], cfg)
    assert len(res.history) == 5 and res.best_loss[0] == pytest.approx(min(h["loss"][0] for h in res.history))
    base = optimize_noise(
        onestep, ["a red circle"], [redness()], [0], ReNOConfig(search="none", progress=False)
    )
    assert len(base.history) == 1 and base.initial_loss == res.initial_loss


def test_early_stop_and_clipping(onestep):
    cfg = ReNOConfig(iterations=20, lr=0.5, early_stop_loss=10.0, progress=False)  # any loss is below 10
    res = optimize_noise(onestep, ["a red circle"], [redness()], [0], cfg)
    assert res.iterations_run == [1] and len(res.history) == 1
    # lr 1, clip 1e-3: the noise moves by at most ~1e-3 per step (SGD momentum aside)
    tiny = ReNOConfig(iterations=2, lr=1.0, momentum=0.0, grad_clip=1e-3, reg_weight=0.0, progress=False)
    r2 = optimize_noise(onestep, ["a red circle"], [redness()], [0], tiny)
    assert abs(r2.history[1]["loss"][0] - r2.history[0]["loss"][0]) < 0.05
    # the pre-clip gradient norm is recorded on every iteration followed by a step (not the last)
    assert "grad_norm" not in r2.history[-1] and r2.history[0]["grad_norm"][0] > 1e-3


def test_recorded_grad_norm_is_the_noise_gradient(onestep):
    """history's grad_norm equals the norm of d(total loss)/d(noise) at the initial noise."""
    from compalign.generators.base import noise_for_seeds
    from compalign.noise_optimization.reno import chi_regularizer

    cfg = ReNOConfig(iterations=2, reg_weight=0.01, progress=False)
    res = optimize_noise(onestep, ["a red circle", "a blue square"], [redness()], [0, 1], cfg)
    prompts = ["a red circle", "a blue square"]
    noise = noise_for_seeds([0, 1], onestep.noise_shape(1)[1:]).float().requires_grad_(True)
    images = onestep.generate_from_noise(noise.to(onestep.dtype), prompts).float()
    r = redness()
    total = (r.weight * (r.offset - r.reward(images, prompts)) + 0.01 * chi_regularizer(noise)).sum()
    (grad,) = torch.autograd.grad(total, noise)
    expected = grad.flatten(1).norm(dim=1).tolist()
    assert res.history[0]["grad_norm"] == pytest.approx(expected, rel=1e-4)


def test_not_differentiable_generator_is_refused():
    multi = WorldGenerator(tiny_pipeline(seed=1, steps=10), name="tiny-multi", device="cpu")
    with pytest.raises(ValueError, match="not differentiable"):
        optimize_noise(multi, ["a red circle"], [redness()], [0], ReNOConfig(iterations=2, progress=False))
    # best-of-n only needs forward passes... but generate_from_noise of a multi-step model works too
    res = optimize_noise(
        multi,
        ["a red circle"],
        [redness()],
        [0],
        ReNOConfig(iterations=2, search="best-of-n", progress=False),
    )
    assert len(res.history) == 2


def test_tasks_and_bad_input(tmp_path):
    items = build_task("prompt", ["a red circle", "a blue square"], [0, 1])
    assert len(items) == 4 and items[0].out.endswith("seed0000.png")
    (tmp_path / "p.txt").write_text("# comment\na red circle\n\na blue square\n")
    assert [i.prompt for i in build_task("file", str(tmp_path / "p.txt"), [0])] == [
        "a red circle",
        "a blue square",
    ]
    assert len(build_task("suite", "color", [0], limit=3)) == 3
    (tmp_path / "meta.jsonl").write_text('{"prompt": "a red circle", "tag": "single_object"}\n')
    ge = build_task("geneval", str(tmp_path / "meta.jsonl"), [0, 1])
    assert [i.out for i in ge] == ["00000/samples/0000.png", "00000/samples/0001.png"]
    (tmp_path / "parti.tsv").write_text("Prompt\tCategory\tChallenge\tNote\na cat\tAnimals\tSimple\t\n")
    assert build_task("parti", str(tmp_path / "parti.tsv"), [0])[0].meta["category"] == "Animals"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:2"):
        build_task("geneval", str(tmp_path / "bad.jsonl"), [0])
    (tmp_path / "bad.tsv").write_text("Text\nfoo\n")
    with pytest.raises(TaskError, match="'Prompt' column"):
        build_task("parti", str(tmp_path / "bad.tsv"), [0])
    with pytest.raises(TaskError, match="does not exist"):
        build_task("file", str(tmp_path / "missing.txt"), [0])
    with pytest.raises(TaskError, match="unknown category"):
        build_task("suite", "nope", [0])


def test_runner_writes_results_and_resumes(tmp_path, onestep):
    (tmp_path / "meta.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square"}\n')
    items = build_task("geneval", str(tmp_path / "meta.jsonl"), [0, 1])
    out = tmp_path / "out"
    cfg = ReNOConfig(iterations=3, lr=1.0, progress=False)
    summary = run_task(
        onestep, [redness()], items, out, cfg, batch_size=3, save_iterations=True, progress=False
    )
    assert (
        len(summary["items"]) == 4
        and summary["mean"]["redness"]["best"] >= summary["mean"]["redness"]["initial"]
    )
    for name in ("results.json", "rewards.png", "before_after.png", "00000/metadata.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "00001" / "samples" / "0001.png").is_file()
    assert (out / INITIAL_DIR / "00001" / "samples" / "0001.png").is_file()
    assert len(list((out / "00000" / "samples" / "0000.iters").glob("*.png"))) == 3
    log = json.loads((out / "00000" / "samples" / "0000.json").read_text())
    assert len(log["rewards"]["redness"]) == 3 and log["prompt"] == "a red circle"
    # resume: a finished run does no work again (a deleted item is redone alone)
    (out / "00001" / "samples" / "0001.png").unlink()
    calls = []
    orig = onestep.generate_from_noise

    def counting(noise, prompts, **kw):
        calls.append(len(prompts))
        return orig(noise, prompts, **kw)

    onestep.generate_from_noise = counting
    try:
        run_task(onestep, [redness()], items, out, cfg, progress=False)
    finally:
        del onestep.generate_from_noise
    assert calls == [1, 1, 1]


def test_cli_reno_end_to_end(tmp_path, onestep):
    from typer.testing import CliRunner

    from compalign.cli import app

    onestep.pipe.save_pretrained(tmp_path / "gen")
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["reno", "a red circle", "--model", str(tmp_path / "gen"), "--reward", "world-clip=0",
         "--out", str(tmp_path / "o"), "--iterations", "2", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 2 and "no reward to optimise" in res.output
    res = runner.invoke(app, ["reno", "--model", str(tmp_path / "gen"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "exactly one of" in res.output
    res = runner.invoke(app, ["reno", "x", "--reward", "world-clip=abc", "--model", str(tmp_path / "gen")])
    assert res.exit_code == 2 and "not a number" in res.output

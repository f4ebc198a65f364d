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
from tests.factories import Redness, tiny_pipeline


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
    assert len(list((out / "_iters" / "00000" / "samples" / "0000").glob("*.png"))) == 3
    assert sorted(p.name for p in (out / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]
    log = json.loads((out / "_logs" / "00000" / "samples" / "0000.json").read_text())
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


@pytest.fixture(scope="module")
def onestep_dir(tmp_path_factory, onestep):
    path = tmp_path_factory.mktemp("onestep") / "gen"
    onestep.pipe.save_pretrained(path)
    return path


def reno_cli(*args):
    from typer.testing import CliRunner

    from compalign.cli import app

    return CliRunner().invoke(app, ["reno", *[str(a) for a in args]])


def test_cli_reno_writes_manifests_that_world_eval_reads(tmp_path, onestep_dir):
    import stat

    from typer.testing import CliRunner

    from compalign.cli import app

    out = tmp_path / "r"
    args = ["a red circle", "a blue square above a green cross", "--model", onestep_dir, "--iterations", "2"]
    res = reno_cli(*args, "--out", out, "--no-progress", "--batch-size", "1")
    assert res.exit_code == 0, res.output
    for folder in (out, out / INITIAL_DIR):
        m = json.loads((folder / "manifest.json").read_text())
        assert [e["prompt"] for e in m["images"]] == ["a red circle", "a blue square above a green cross"]
        assert all((folder / e["file"]).is_file() for e in m["images"])
        r = CliRunner().invoke(app, ["world", "eval", str(folder)])
        assert r.exit_code == 0, r.output
        assert json.loads((folder / "eval.json").read_text())["overall"]["n"] == 2
    results = json.loads((out / "results.json").read_text())
    run = results["run"]
    assert run["gradient_checkpointing"] == "auto" and run["dtype"] == "float32" and run["compile"] is False
    assert (run["height"], run["width"]) == (32, 32) and run["generator"]["checkpointed"] == []
    # the exact evaluator judged every image, before and after; the grid shows it
    assert results["evaluation"]["n"] == 2 and all("passed" in x for x in results["items"])
    assert stat.S_IMODE((out / "before_after.png").stat().st_mode) == 0o666 & ~_umask()
    # the same command again resumes (nothing to do); other settings are refused in one line
    assert reno_cli(*args, "--out", out, "--no-progress").exit_code == 0
    for extra, needle in (
        (["--iterations", "3"], "config.iterations: 2 -> 3"),
        (["--reward", "world-clip=2"], "rewards"),
        (["--seed", "5"], "images[0]"),
    ):
        r = reno_cli(*args[:-2], *(extra if extra[0] == "--iterations" else ["--iterations", "2", *extra]),
                     "--out", out, "--no-progress")  # fmt: skip
        assert r.exit_code == 2 and needle in r.output and "--overwrite" in r.output, r.output
    r = reno_cli(*args[:-2], "--iterations", "3", "--out", out, "--no-progress", "--overwrite")
    assert r.exit_code == 0, r.output
    assert {x["iterations_run"] for x in json.loads((out / "results.json").read_text())["items"]} == {3}


def test_cli_reno_steps_optimise_a_multi_step_world_model(tmp_path):
    from tests.factories import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "multi")  # 3 DDIM steps: not differentiable as it is
    args = ["a red circle", "--model", tmp_path / "multi", "--iterations", "2", "--no-progress"]
    r = reno_cli(*args, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "not differentiable" in r.output, r.output
    r = reno_cli(*args, "--steps", "2", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["run"]["generator"]["num_inference_steps"] == 2
    assert [x["iterations_run"] for x in results["items"]] == [2]
    r = reno_cli(*args, "--steps", "0", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "--steps must be >= 1" in r.output and not (tmp_path / "c").exists()


def _umask() -> int:
    from compalign.io import current_umask

    return current_umask()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--limit", "0"], "--limit must be >= 1"),
        (["--limit", "-2"], "--limit must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--dtype", "fp8"], "--dtype"),
        (["--gradient-checkpointing", "sometimes"], "--gradient-checkpointing"),
        (["--height", "64"], "renders at 32 px"),
        (["--offload", "model"], "--offload is for diffusers"),
    ],
)
def test_cli_reno_bad_options_write_nothing(tmp_path, onestep_dir, extra, needle):
    out = tmp_path / "o"
    r = reno_cli("a red circle", "--model", onestep_dir, "--out", out, *extra)
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


@pytest.mark.parametrize(
    "prompt, needle",
    [
        ("a purple dog", "'dog'"),
        ("a red circle \U0001f600", "\U0001f600"),
        ("x" * 100_000, "outside the world"),
    ],
)
def test_cli_reno_world_model_refuses_prompts_outside_the_grammar(tmp_path, onestep_dir, prompt, needle):
    out = tmp_path / "o"
    r = reno_cli(prompt, "--model", onestep_dir, "--out", out)
    assert r.exit_code == 2 and needle in r.output and len(r.output) < 1000, r.output[:300]
    assert not out.exists()


def test_cli_reno_out_is_a_file_or_unwritable(tmp_path, onestep_dir):
    import os

    (tmp_path / "f").write_text("x")
    for out, needle in ((tmp_path / "f", "existing file"), (tmp_path / "f" / "sub", "not a folder")):
        r = reno_cli("a red circle", "--model", onestep_dir, "--out", out)
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        r = reno_cli("a red circle", "--model", onestep_dir, "--out", ro / "o")
        assert r.exit_code == 2 and "cannot write" in r.output


def test_cli_reno_t2i_compbench_layout(tmp_path, onestep_dir):
    pf = tmp_path / "color_val.txt"
    pf.write_text("a red circle\na blue square\n")
    out = tmp_path / "t"
    r = reno_cli("--t2i-compbench", pf, "--num-seeds", "2", "--model", onestep_dir, "--iterations", "1",
                 "--out", out, "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (out / "samples").iterdir())
    # only images in samples/, named <prompt>_<k>; the evaluation scripts sort by k and cut at "_"
    assert names == [f"a blue square_{k:06d}.png" for k in (2, 3)] + [
        f"a red circle_{k:06d}.png" for k in (0, 1)
    ]
    order = sorted(names, key=lambda x: int(x.split("_")[-1].split(".")[0]))
    assert [n.split("_")[0] for n in order] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert (out / "manifest.json").is_file()
    bad = tmp_path / "bad_val.txt"
    bad.write_text("a red_circle\n")
    r = reno_cli("--t2i-compbench", bad, "--model", onestep_dir, "--out", tmp_path / "b")
    assert r.exit_code == 2 and "'_'" in r.output


def test_progress_counts_iterations_times_images(tmp_path, onestep, capsys, monkeypatch):
    import tqdm.auto

    from compalign.noise_optimization import runner

    class EveryUpdate(tqdm.auto.tqdm):  # draws every update, however fast
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "mininterval": 0, "miniters": 1})

    monkeypatch.setattr(runner, "tqdm", EveryUpdate)
    items = build_task("prompt", ["a red circle", "a blue square", "a green cross"], [0])
    cfg = ReNOConfig(iterations=3, lr=1.0)
    run_task(onestep, [redness()], items, tmp_path / "p", cfg, batch_size=2, progress=True)
    err = capsys.readouterr().err
    # a batch of 2, then a batch of 1: the bar moves every iteration, not once a batch
    assert all(f"{n}/9" in err for n in (2, 4, 6, 7, 8, 9)), err


def test_plan_checkpointing_takes_the_largest_saver_first():
    from compalign.noise_optimization.memory import plan_checkpointing

    per_image = {"denoiser": 100, "vae": 300, "other": 50}  # 450 bytes an image, 1800 for 4
    assert plan_checkpointing(per_image, 4, 10_000, ["denoiser", "vae"]) == []
    assert plan_checkpointing(per_image, 4, 2000, ["denoiser", "vae"]) == ["vae"]  # 1800 > 1200
    assert plan_checkpointing(per_image, 4, 1000, ["denoiser", "vae"]) == ["vae", "denoiser"]
    assert plan_checkpointing(per_image, 4, None, ["denoiser", "vae"]) == []  # unknown: off


def test_auto_checkpointing_follows_free_memory_and_keeps_the_maths(onestep):
    from compalign.noise_optimization.memory import resolve_auto, saved_bytes

    noise = onestep.sample_noise(2, seed=0).float()
    prompts = ["a red circle", "a blue square"]
    per_image = saved_bytes(onestep, [redness()], prompts[:1], noise[:1])
    assert per_image["denoiser"] > 0 and set(per_image) == {"denoiser", "other"}
    onestep.set_gradient_checkpointing("auto")
    try:
        assert resolve_auto(onestep, [redness()], prompts, noise, free=10**15) == []
        assert resolve_auto(onestep, [redness()], prompts, noise, free=1) == ["denoiser"]
        assert onestep.checkpointed == ("denoiser",) and onestep.pipe.unet.is_gradient_checkpointing
        cfg = ReNOConfig(iterations=3, lr=1.0, progress=False)
        runs = {}
        for mode in ("on", "off"):
            onestep.set_gradient_checkpointing(mode)
            runs[mode] = optimize_noise(onestep, prompts, [redness()], [0, 1], cfg)
        assert runs["on"].checkpointed == ["denoiser"] and runs["off"].checkpointed == []
        assert runs["on"].history[-1]["loss"] == pytest.approx(runs["off"].history[-1]["loss"], abs=1e-5)
    finally:
        onestep.set_gradient_checkpointing("off")


def test_compiled_generator_and_reward_give_the_same_run():
    """`--compile`: torch.compile of the generator's modules and the rewards (dynamo; the eager
    backend here, to stay fast) changes nothing in the maths."""
    gen = WorldGenerator(tiny_pipeline(seed=1, steps=1), name="tiny-compiled", device="cpu")
    cfg = ReNOConfig(iterations=2, lr=1.0, progress=False)
    plain = optimize_noise(gen, ["a red circle"], [redness()], [0], cfg)
    gen.compile(backend="eager")
    reward = redness()
    reward.reward.compile(backend="eager")
    compiled = optimize_noise(gen, ["a red circle"], [reward], [0], cfg)
    assert gen.compiled and compiled.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], abs=1e-6)

from __future__ import annotations

import json

from typer.testing import CliRunner

from compalign.generators.cli import app
from tests.factories import tiny_arch_options

TINY = [
    *tiny_arch_options(),
    "--set",
    "batch_size=2",
    "--set",
    "warmup_steps=1",
    "--set",
    "pool_per_category=4",
    "--set",
    "pool_shard_size=4",
    "--set",
    'categories=["colors"]',
]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_then_generate(tmp_path):
    r = run(
        "world",
        "train",
        "--preset",
        "world-short",
        "-o",
        tmp_path / "run",
        "--max-steps",
        2,
        "--workers",
        0,
        "--threads",
        1,
        "--no-progress",
        *TINY,
    )
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "run" / "final" / "training.json").read_text())
    assert record["preset"] == "world-short" and record["steps"] == 2
    assert record["config"]["arch"]["sample_steps"] == 10  # the preset's sampler is kept
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    r = run(
        "generate",
        "a green cross",
        "--prompts",
        tmp_path / "p.txt",
        "-m",
        tmp_path / "run",
        "-s",
        3,
        "-n",
        2,
        "--steps",
        2,
        "-o",
        tmp_path / "out",
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [e["seed"] for e in manifest["images"]] == [3, 4] * 3
    assert manifest["settings"]["num_inference_steps"] == 2
    assert (tmp_path / "out" / "grid.png").is_file()


def test_bad_input(tmp_path):
    r = run("world", "train", "--preset", "world-nope")
    assert r.exit_code == 2 and "unknown preset" in r.output
    r = run("world", "train", "--preset", "world-base", "--set", "nonsense=1", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "unknown config fields" in r.output
    r = run("generate", "-m", "world-base")
    assert r.exit_code == 2 and "no prompts" in r.output
    r = run("generate", "a red circle", "-m", "no-such-model", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "unknown generator" in r.output
    # a diffusers model from a folder that is not there: one line before diffusers tries the hub
    for source in ("/nonexistent/x", "./nope", "~/nope/x", "a/b/c"):
        r = run("generate", "a red circle", "-m", f"sd:{source}", "-o", tmp_path / "o")
        assert r.exit_code == 2 and f"folder {source} does not exist" in r.output, r.output
        assert "Traceback" not in r.output and r.output.count("error:") == 1
    assert not (tmp_path / "o").exists()


def test_listings():
    r = run("world", "presets")
    assert r.exit_code == 0 and "world-onestep" in r.output
    r = run("world", "models", "--json")
    assert r.exit_code == 0
    assert {"world-base", "world-onestep"} <= {m["name"] for m in json.loads(r.output)}


def main_cli(*args):
    from compalign.cli import app as main_app

    return CliRunner().invoke(main_app, [str(a) for a in args])


def test_generate_writes_what_world_eval_reads_and_a_labelled_grid(tmp_path, tiny_saved):
    import stat

    from compalign.io import current_umask

    out = tmp_path / "g"
    args = ["generate", "a red circle", "a blue square", "-m", tiny_saved, "-n", 2, "--steps", 1]
    r = run(*args, "-o", out)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 1 and manifest["run"]["dtype"] == "float32"
    assert (manifest["run"]["height"], manifest["run"]["width"]) == (32, 32)
    r = main_cli("world", "eval", out)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "eval.json").read_text())["overall"]["n"] == 4
    assert stat.S_IMODE((out / "grid.png").stat().st_mode) == 0o666 & ~current_umask()
    # the grid is labelled: far wider than the 2 x 2 bare 32 px images it used to hold
    from PIL import Image

    assert Image.open(out / "grid.png").size[1] > 2 * 4 * 32 + 40
    assert run(*args, "-o", out).exit_code == 0  # same settings: done again in place
    r = run("generate", "a green cross", "-m", tiny_saved, "-o", out)
    assert r.exit_code == 2 and "other settings" in r.output and "--overwrite" in r.output
    assert json.loads((out / "manifest.json").read_text())["images"][0]["prompt"] == "a red circle"
    r = run("generate", "a green cross", "-m", tiny_saved, "-o", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.png")) == ["p000_s0.png"]


def test_generate_refuses_what_a_world_model_cannot_do(tmp_path, tiny_saved):
    out = tmp_path / "o"
    for extra, needle in (
        (["a purple dog"], "'dog'"),
        (["a red circle \U0001f600"], "\U0001f600"),
        (["a red circle", "--height", "64"], "renders at 32 px"),
        (["a red circle", "--steps", "0"], "--steps"),
        (["a red circle", "--dtype", "int8"], "--dtype"),
    ):
        r = run("generate", *extra, "-m", tiny_saved, "-o", out)
        assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not out.exists()
    (tmp_path / "file").write_text("x")
    r = run("generate", "a red circle", "-m", tiny_saved, "-o", tmp_path / "file")
    assert r.exit_code == 2 and "existing file" in r.output


def test_generate_memory_and_size_options_reach_a_diffusers_model(tmp_path):
    from tests.factories import build_sd

    sd = tmp_path / "tiny-sd"
    build_sd().save_pretrained(sd)
    out = tmp_path / "g"
    size = ["--height", 48, "--width", 64]
    r = run("generate", "a red cube", "-m", f"sd-turbo:{sd}", "--dtype", "bf16", *size, "--offload", "model",
            "-n", 2, "-o", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"] == {
        "device": "cpu", "dtype": "bfloat16", "offload": "model", "height": 48, "width": 64, "compile": False,
    }  # fmt: skip
    assert manifest["settings"]["height"] == 48 and manifest["settings"]["width"] == 64
    from PIL import Image

    assert Image.open(out / manifest["images"][0]["file"]).size == (64, 48)
    r = run("generate", "a red cube", "-m", f"sd-turbo:{sd}", "--height", 51, "-o", tmp_path / "bad")
    assert r.exit_code == 2 and "multiples of" in r.output and not (tmp_path / "bad").exists()

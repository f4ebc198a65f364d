"""`compalign gallery generate`: format, settings, resume, kill -9, sharding over two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compalign.gallery.format import load_gallery
from compalign.gallery.generate import default_model_name, parse_model
from tests.factories import read

PROMPTS = [
    "a red circle above a blue square",
    "a green triangle",
    "a small yellow cross next to a cyan circle",
]


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("# test prompts\n" + "\n".join(prompts) + "\n")
    return path


def test_generate_resume_and_format(cli, tiny_models, tmp_path):
    a, b = tiny_models
    out = tmp_path / "g"
    prompts = write_prompts(tmp_path / "p.txt")
    args = ["gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={a}", f"b={b}"]
    args += ["--prompts", prompts, "--out", out, "--seed", "5", "--steps", "2", "--batch-size", "2"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    data = read(out / "gallery.json")
    assert [d["index"] for d in data] == [0, 1, 2]
    assert data[1] == {
        "index": 1,
        "prompt": PROMPTS[1],
        "image_a": "images/a/00001.png",
        "image_b": "images/b/00001.png",
    }
    meta = read(out / "gallery_meta.json")
    assert meta["aspect"] == "attribute_binding" and [m["name"] for m in meta["models"]] == ["a", "b"]
    assert meta["seeds"] == {"0": 5, "1": 6, "2": 7} and meta["settings"]["steps"] == 2
    assert meta["models"][0]["resolution"] == 32 and meta["complete"] is True
    g = load_gallery(out)
    img = np.asarray(Image.open(out / "images/a/00000.png"))
    assert img.shape == (32, 32, 3)
    # the same seed per record for every model, and the image of a record does not depend on the batch
    from compalign.generators import create_generator
    from compalign.generators.generate import to_uint8

    gen = create_generator(a, device="cpu")
    ref = to_uint8(gen.generate([PROMPTS[2]], seeds=[7], num_inference_steps=2))[0]
    assert np.array_equal(np.asarray(Image.open(out / "images/a/00002.png")), ref)
    # resume: nothing to do, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    (out / "images/b/00001.png").unlink()
    r = cli(*args)
    assert r.exit_code == 0, r.output
    for p, t in mtimes.items():
        if p.name != "00001.png" or p.parent.name != "b":
            assert p.stat().st_mtime_ns == t, p
    assert (out / "images/b/00001.png").is_file()
    assert len(g.records) == 3
    # other settings in the same folder are refused, nothing changed
    before = (out / "gallery_meta.json").read_bytes()
    r = cli(*[x if x != "5" else "6" for x in args])
    assert r.exit_code == 2 and "other seed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "gallery_meta.json").read_bytes() == before


def test_generate_from_suites_and_bad_models(cli, tiny_models, tmp_path):
    a, _ = tiny_models
    out = tmp_path / "g"
    r = cli("gallery", "generate", "--aspect", "spatial_relationship", "--models", a, "--per-category", "1")
    assert r.exit_code == 2  # --out missing (click usage error)
    r = cli("gallery", "generate", "--aspect", "spatial", "--models", a, "--out", out)
    assert r.exit_code == 2 and "unknown aspect" in r.stderr
    r = cli(
        "gallery", "generate", "--aspect", "spatial_relationship", "--models", "no-such-model", "--out", out
    )
    assert r.exit_code == 2 and "unknown model 'no-such-model'" in r.stderr and not out.exists()
    r = cli(
        "gallery",
        "generate",
        "--aspect",
        "spatial_relationship",
        "--models",
        f"x={a}",
        f"x={a}",
        "--out",
        out,
    )
    assert r.exit_code == 2 and "given twice" in r.stderr and not out.exists()
    r = cli(
        "gallery", "generate", "--aspect", "spatial_relationship", "--models", a,
        "--per-category", "1", "--steps", "1", "--resolution", "24", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    data = read(out / "gallery.json")
    from compalign.world.suites import load_suite

    assert [d["prompt"] for d in data] == [
        load_suite("spatial", "train")[0],
        load_suite("position", "train")[0],
    ]
    assert Image.open(out / data[0][f"image_{a.name}"]).size == (24, 24)  # resized to --resolution
    meta = read(out / "gallery_meta.json")
    assert meta["categories"] == {"0": "spatial", "1": "position"}


def test_model_names():
    assert parse_model("world-base").name == "world-base"
    assert parse_model("sd:/x/tiny-sd/").name == "sd-tiny-sd"
    assert parse_model("mine=sd:/x/y").name == "mine" and parse_model("mine=sd:/x/y").spec == "sd:/x/y"
    assert default_model_name("sd-turbo:") == "sd-turbo"
    assert default_model_name("/runs/world base/final") == "world-base"  # a run's final/: the run


def test_generate_with_a_diffusers_pipeline(cli, tiny_models, tmp_path):
    """A multi-step diffusers pipeline (tiny random SD) beside a world model, by prefix:path."""
    pytest.importorskip("diffusers")
    from tests.factories import build_sd

    sd = tmp_path / "tiny-sd"
    build_sd().save_pretrained(sd)
    out = tmp_path / "g"
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS[:2])
    r = cli(
        "gallery", "generate", "--aspect", "attribute_binding", "--models", f"sd:{sd}", f"w={tiny_models[0]}",
        "--prompts", prompts, "--resolution", "32", "--steps", "2", "--guidance", "1.5", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    g = load_gallery(out)
    assert g.models == ["sd-tiny-sd", "w"]
    assert Image.open(out / "images/sd-tiny-sd/00001.png").size == (32, 32)
    assert g.meta["models"][0]["settings"]["height"] == 32


@pytest.mark.slow  # two processes (~10 s CPU); resume in process: test_generate_resume_and_format
@pytest.mark.timeout(120)
def test_kill_9_loses_nothing(cli, tiny_models, tmp_path):
    a, b = tiny_models
    out = tmp_path / "g"
    prompts = write_prompts(tmp_path / "p.txt", ["a red circle above a blue square" for _ in range(40)])
    args = ["gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={a}", f"b={b}"]
    args += ["--prompts", prompts, "--out", out, "--batch-size", "1", "--steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "compalign.cli", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 90
        listed = 0
        while time.time() < deadline and proc.poll() is None:
            try:
                listed = sum(k.startswith("image_") for d in read(out / "gallery.json") for k in d)
            except (FileNotFoundError, ValueError):
                listed = 0
            if listed >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    data = read(out / "gallery.json")  # a complete, valid manifest
    listed = [(d["index"], k) for d in data for k in d if k.startswith("image_")]
    assert 3 <= len(listed) < 80
    written = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    for d in data:
        for k, v in d.items():
            if k.startswith("image_"):
                assert Image.open(out / v).size == (32, 32)
    r = cli(*args, "--no-progress")
    assert r.exit_code == 0, r.output
    g = load_gallery(out)
    assert len(g.records) == 40 and all(len(x.images) == 2 for x in g.records)
    for p, t in written.items():
        assert p.stat().st_mtime_ns == t, f"{p} was rewritten"
    assert not list((out / "images").rglob("*.tmp"))
    # the resumed gallery is the uninterrupted one: each image is its record's seed's render
    from compalign.generators import create_generator
    from compalign.generators.generate import to_uint8

    for name, path in (("a", a), ("b", b)):
        gen = create_generator(path, device="cpu")
        for i in (0, 20, 39):
            ref = to_uint8(gen.generate([g.record(i).prompt], seeds=[i], num_inference_steps=3))[0]
            assert np.array_equal(np.asarray(Image.open(out / f"images/{name}/{i:05d}.png")), ref), (name, i)


def _sharded_worker(out: str, models: list[str], prompts: list[str], log: str):
    """Runs in each of the two forked processes."""
    from accelerate.state import PartialState

    import compalign.io as cio

    PartialState._reset_state()  # the parent may have set up a one-process state before the fork
    state = PartialState(cpu=True)
    save = cio.atomic_save_image

    def logged(path, image, format=None):
        with open(f"{log}.{state.process_index}", "a") as f:
            f.write(f"{Path(path).parent.name}/{Path(path).name}\n")
        return save(path, image, format)

    cio.atomic_save_image = logged
    from compalign.gallery.generate import generate_gallery

    generate_gallery(out, "attribute_binding", models, prompts, seed=1, steps=1, batch_size=2, device="cpu")


@pytest.mark.slow  # forked workers can deadlock in OpenMP after earlier tests started torch threads
@pytest.mark.timeout(180)
def test_two_processes_one_merged_manifest(tiny_models, tmp_path):
    from accelerate import debug_launcher

    a, b = tiny_models
    out = tmp_path / "g"
    prompts = PROMPTS + ["a purple square", "a blue circle below a red triangle"]
    debug_launcher(_sharded_worker, args=(str(out), [f"a={a}", f"b={b}"], prompts, str(tmp_path / "log")))
    g = load_gallery(out)
    assert [r.index for r in g.records] == list(range(5))
    assert all(r.models == ["a", "b"] for r in g.records)
    shares = {p: sorted((tmp_path / f"log.{p}").read_text().split()) for p in (0, 1)}
    for p in (0, 1):  # process p rendered exactly the records i with i % 2 == p, for both models
        want = sorted(f"{m}/{i:05d}.png" for m in "ab" for i in range(5) if i % 2 == p)
        assert shares[p] == want
    assert g.meta["complete"] is True


@pytest.mark.slow  # three processes (~16 s CPU)
@pytest.mark.timeout(300)
def test_torchrun_two_processes_cli(tiny_models, tmp_path):
    """The real launcher: `torchrun --nproc_per_node 2 -m compalign.cli gallery generate ...` on CPU
    (accelerate's own `launch --cpu` needs MPI for several CPU processes)."""
    import shutil as sh

    torchrun = sh.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    a, b = tiny_models
    out = tmp_path / "g"
    prompts = write_prompts(tmp_path / "p.txt")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "compalign.cli"]
    cmd += ["gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={a}", f"b={b}"]
    cmd += ["--prompts", str(prompts), "--out", str(out), "--steps", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # a hung run: end torchrun and its workers (their own process group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    g = load_gallery(out)
    assert len(g.records) == 3 and g.models == ["a", "b"] and g.meta["complete"]
    assert stderr.count("gallery of 3 records") == 1  # only the main process reports


def test_generate_dtype_and_offload_options(cli, tiny_models, tmp_path):
    """--dtype reaches every model and is part of the settings a resume must match; --offload
    reaches diffusers models (a no-op on the CPU); bad values are one line."""
    pytest.importorskip("diffusers")
    from tests.factories import build_sd

    sd = tmp_path / "tiny-sd"
    build_sd().save_pretrained(sd)
    out = tmp_path / "g"
    prompts = write_prompts(tmp_path / "p.txt", PROMPTS[:1])
    models = ["--models", f"sd:{sd}", f"w={tiny_models[0]}"]
    args = ["gallery", "generate", "--aspect", "attribute_binding", *models,
            "--prompts", prompts, "--resolution", "32", "--steps", "1", "--out", out]  # fmt: skip
    r = cli(*args, "--dtype", "bf16", "--offload", "model")
    assert r.exit_code == 0, r.output
    meta = read(out / "gallery_meta.json")
    assert meta["settings"]["dtype"] == "bf16"
    assert (
        meta["models"][0]["settings"]["dtype"] == "bfloat16"
        and meta["models"][0]["settings"]["offload"] == "model"
    )
    r = cli(*args, "--dtype", "fp32")
    assert r.exit_code == 2 and "settings" in r.output
    for bad, needle in ((["--dtype", "fp8"], "--dtype"), (["--offload", "disk"], "--offload")):
        r = cli(*args[:-1], tmp_path / "new", *bad)
        assert r.exit_code == 2 and needle in r.output and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "prompt,needle",
    [
        ("a red elephant", "'elephant'"),
        ("a red circle \U0001f600", "'\U0001f600'"),
        ("a red circle " + "above a blue square " * 5000, "'above'"),
    ],
    ids=["outside-the-grammar", "emoji", "100-kB"],
)
def test_world_models_refuse_prompts_outside_the_grammar(cli, tiny_models, tmp_path, prompt, needle):
    prompts = write_prompts(tmp_path / "p.txt", [PROMPTS[0], prompt])
    out = tmp_path / "g"
    r = cli(
        "gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={tiny_models[0]}",
        "--prompts", prompts, "--out", out,
    )  # fmt: skip
    assert r.exit_code == 2 and not out.exists(), r.output
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and len(line) < 700
    assert "prompt 2" in line and "outside the world grammar" in line and needle in line


def test_bad_settings_and_out_folders_write_nothing(cli, tiny_models, tmp_path):
    prompts = write_prompts(tmp_path / "p.txt")
    base = ["gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={tiny_models[0]}"]
    base += ["--prompts", prompts]
    cases = [
        (["--steps", "0", "--out", tmp_path / "g"], "--steps must be >= 1"),
        (["--steps", "-3", "--out", tmp_path / "g"], "--steps must be >= 1"),
        (["--guidance", "nan", "--out", tmp_path / "g"], "--guidance must be a finite number"),
        (["--batch-size", "0", "--out", tmp_path / "g"], "--batch-size must be >= 1"),
        (["--out", prompts], "is an existing file"),
        (["--out", prompts / "g"], "is a file, not a folder"),
    ]
    for extra, needle in cases:
        r = cli(*base, *extra)
        assert r.exit_code == 2 and needle in r.stderr, (extra, r.output)
        assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]
    assert prompts.read_text().startswith("# test prompts")


def test_read_only_out_folder_is_refused(cli, tiny_models, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permission bits do not bind this user (root)")
        r = cli(
            "gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={tiny_models[0]}",
            "--prompts", write_prompts(tmp_path / "p.txt"), "--out", locked / "g",
        )  # fmt: skip
        assert r.exit_code == 2 and "cannot write in" in r.stderr and not (locked / "g").exists()
    finally:
        locked.chmod(0o755)


def test_meta_records_the_steps_and_guidance_used(cli, tiny_models, tmp_path):
    """Each model's settings in gallery_meta.json are those its images were rendered with."""
    out = tmp_path / "g"
    r = cli(
        "gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={tiny_models[0]}",
        "--prompts", write_prompts(tmp_path / "p.txt", PROMPTS[:1]), "--out", out, "--steps", "1",
        "--guidance", "1.5",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = read(out / "gallery_meta.json")
    from compalign.generators import create_generator

    assert create_generator(tiny_models[0]).settings()["num_inference_steps"] != 1  # not the default
    used = meta["models"][0]["settings"]
    assert used["num_inference_steps"] == 1 and used["guidance_scale"] == 1.5
    assert meta["settings"]["steps"] == 1
    # and the defaults when not given
    r = cli(
        "gallery", "generate", "--aspect", "attribute_binding", "--models", f"a={tiny_models[0]}",
        "--prompts", write_prompts(tmp_path / "p.txt", PROMPTS[:1]), "--out", tmp_path / "d",
    )  # fmt: skip
    default = create_generator(tiny_models[0]).settings()
    assert (
        read(tmp_path / "d" / "gallery_meta.json")["models"][0]["settings"]["num_inference_steps"]
        == (default["num_inference_steps"])
    )

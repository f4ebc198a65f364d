"""Bad input ends with one clear line on stderr, exit code 2, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compalign.io import atomic_save_image, atomic_write_json, atomic_write_text
from compalign.world.io import ManifestError, validate_dir


def assert_bad_input(r, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, (n, err)
    return err


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def write_manifest(d: Path, m: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(m))


def test_missing_image(cli, image_dir):
    victim = manifest(image_dir)["images"][2]["file"]
    (image_dir / victim).unlink()
    err = assert_bad_input(cli("world", "eval", image_dir), victim, "not found")
    assert "images[2]" in err
    assert not (image_dir / "eval.json").exists()


def test_invalid_json_names_manifest(cli, image_dir):
    path = image_dir / "manifest.json"
    path.write_text('{"version": 1, "resolution": 32,\n "images": [ {"file": "x.png",} ]}')
    assert_bad_input(cli("world", "eval", image_dir), str(path), "invalid JSON", "line 2")
    assert not (image_dir / "eval.json").exists()


def test_missing_manifest(cli, tmp_path):
    assert_bad_input(cli("world", "eval", tmp_path), str(tmp_path / "manifest.json"))
    assert_bad_input(cli("world", "eval", tmp_path / "nope"), "nope")


def test_wrong_size_image(cli, image_dir):
    victim = manifest(image_dir)["images"][4]["file"]
    Image.new("RGB", (64, 48)).save(image_dir / victim)
    assert_bad_input(cli("world", "eval", image_dir), victim, "32x32", "64x48")
    assert not (image_dir / "eval.json").exists()


def test_not_rgb_image(cli, image_dir):
    victim = manifest(image_dir)["images"][0]["file"]
    Image.new("L", (32, 32)).save(image_dir / victim)
    assert_bad_input(cli("world", "eval", image_dir), victim, "RGB", "'L'")


def test_not_an_image(cli, image_dir):
    victim = manifest(image_dir)["images"][0]["file"]
    (image_dir / victim).write_bytes(b"not a png")
    assert_bad_input(cli("world", "eval", image_dir), victim, "cannot read image")


@pytest.mark.parametrize("field", ["prompt", "file"])
def test_entry_missing_field(cli, image_dir, field):
    m = manifest(image_dir)
    del m["images"][1][field]
    write_manifest(image_dir, m)
    assert_bad_input(cli("world", "eval", image_dir), "images[1]", f"'{field}'", "manifest.json")
    assert not (image_dir / "eval.json").exists()


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda m: m.pop("resolution"), ["'resolution'"]),
        (lambda m: m.update(resolution="32"), ["'resolution'"]),
        (lambda m: m.update(version=2), ["'version'"]),
        (lambda m: m.update(images=[]), ["'images'", "empty"]),
        (lambda m: m["images"][0].update(file="/etc/passwd"), ["images[0]", "relative"]),
        (lambda m: m["images"][0].update(file="../x.png"), ["images[0]", "relative"]),
        (lambda m: m["images"][3].update(seed="zero"), ["images[3]", "'seed'"]),
        (lambda m: m["images"][3].update(category=5), ["images[3]", "'category'"]),
    ],
)
def test_bad_manifest_fields(cli, image_dir, change, needles):
    m = manifest(image_dir)
    change(m)
    write_manifest(image_dir, m)
    assert_bad_input(cli("world", "eval", image_dir), *needles)


def test_prompt_outside_grammar(cli, image_dir):
    m = manifest(image_dir)
    m["images"][5]["prompt"] = "a red hexagon"
    write_manifest(image_dir, m)
    assert_bad_input(cli("world", "eval", image_dir), "'hexagon'", "images[5]")
    assert not (image_dir / "eval.json").exists()


def test_failed_eval_keeps_previous_report(cli, image_dir, tmp_path):
    custom = tmp_path / "custom.json"
    assert cli("world", "eval", image_dir).exit_code == 0
    assert cli("world", "eval", image_dir, "--out", custom).exit_code == 0
    before = (image_dir / "eval.json").read_bytes(), custom.read_bytes()
    (image_dir / manifest(image_dir)["images"][0]["file"]).unlink()
    assert_bad_input(cli("world", "eval", image_dir))
    assert_bad_input(cli("world", "eval", image_dir, "--out", custom))
    assert ((image_dir / "eval.json").read_bytes(), custom.read_bytes()) == before


def test_render_bad_prompt_writes_nothing(cli, tmp_path):
    out = tmp_path / "out"
    bad = "a red circle beside a square"
    r = cli("world", "render", "--prompt", "a red circle", "--prompt", bad, "--out", out)
    assert_bad_input(r, "'beside'", "a red circle beside a square")
    assert not out.exists()


def test_render_impossible_prompt_writes_nothing(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("world", "render", "--prompt", "a large circle inside a small square", "--out", out)
    assert_bad_input(r, "a large circle inside a small square", "no layout")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["world", "render", "--category", "colour"], ["'colour'"]),
        (["world", "render", "--category", "color", "--split", "test"], ["'test'"]),
        (["world", "render", "--category", "color", "--res", "8"], ["--res"]),
        (["world", "render", "--category", "color", "--seed", "-1"], ["--seed"]),
        (["world", "render", "--category", "color", "--seeds", "0"], ["--seeds"]),
        (["world", "render"], ["nothing to render"]),
        (["world", "render", "--prompts", "missing.txt"], ["missing.txt"]),
        (["world", "prompts"], ["--category"]),
        (["world", "prompts", "--category", "colour"], ["'colour'"]),
    ],
)
def test_bad_options(cli, tmp_path, args, needles):
    out = tmp_path / "out"
    assert_bad_input(cli(*args, "--out", out) if args[1] == "render" else cli(*args), *needles)
    assert not out.exists()


def test_output_paths_of_the_wrong_kind(cli, image_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    r = cli("world", "render", "--category", "color", "--limit", "1", "--out", a_file)
    assert_bad_input(r, str(a_file), "folder")
    assert a_file.read_text() == "keep"
    assert_bad_input(cli("world", "eval", image_dir, "--out", tmp_path), str(tmp_path), "file name")
    assert not (image_dir / "eval.json").exists()


def test_validate_dir_raises_manifest_error(image_dir):
    assert len(validate_dir(image_dir).images) == 6
    (image_dir / "manifest.json").write_text("[]")
    with pytest.raises(ManifestError, match="manifest.json"):
        validate_dir(image_dir)
    assert issubclass(ManifestError, ValueError)


def test_atomic_writes_keep_old_file_on_failure(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"x": float("nan")})  # not valid JSON
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert json.loads(p.read_text()) == {"x": 1}
    atomic_write_text(tmp_path / "sub" / "t.txt", "hello")
    assert (tmp_path / "sub" / "t.txt").read_text() == "hello"
    img = tmp_path / "i.png"
    atomic_save_image(img, np.full((8, 8, 3), 0.5, np.float32))
    with pytest.raises(ValueError):
        atomic_save_image(img, np.zeros((8, 8), np.float32))
    with Image.open(img) as im:
        assert im.size == (8, 8) and im.getpixel((0, 0)) == (128, 128, 128)
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == ["a.json", "i.png", "t.txt"]

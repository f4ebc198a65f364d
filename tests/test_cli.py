"""End-to-end runs of the `compalign` command line."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from compalign import __version__
from compalign.world import suites
from compalign.world.io import read_manifest


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.png"))}


def test_root_help_lists_world(cli):
    r = cli("--help")
    assert r.exit_code == 0
    assert "world" in r.stdout
    r = cli("world", "--help")
    assert r.exit_code == 0
    for cmd in ("prompts", "render", "eval", "demo"):
        assert cmd in r.stdout


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and __version__ in r.stdout


def test_world_prompts(cli):
    r = cli("world", "prompts", "--category", "color", "--split", "heldout", "--limit", "5")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == suites.load_suite("color", "heldout")[:5]
    r = cli("world", "prompts", "--category", "counting", "--split", "train", "--json")
    rows = json.loads(r.stdout)
    assert [x["prompt"] for x in rows] == suites.load_suite("counting", "train")
    assert {x["category"] for x in rows} == {"counting"}


def test_world_prompts_seeded_sample(cli):
    a = cli("world", "prompts", "-c", "shape", "--limit", "4", "--seed", "3").stdout.splitlines()
    b = cli("world", "prompts", "-c", "shape", "--limit", "4", "--seed", "3").stdout.splitlines()
    assert a == b and len(a) == 4 and set(a) <= set(suites.load_suite("shape", "heldout"))


def test_world_prompts_all(cli):
    r = cli("world", "prompts", "--all")
    assert r.exit_code == 0
    for c in suites.CATEGORIES:
        assert c in r.stdout
    data = json.loads(cli("world", "prompts", "--all", "--json").stdout)
    assert [row["category"] for row in data["categories"]] == list(suites.CATEGORIES)
    assert data["suite_version"] == suites.SUITE_VERSION
    for row in data["categories"]:
        assert row["heldout"] == 100
        assert row["train"] == len(suites.load_suite(row["category"], "train")) >= 200


def test_render_then_eval(cli, rendered, tmp_path):
    m = read_manifest(rendered)
    assert m.resolution == 32 and len(m.images) == 6
    assert {e.category for e in m.images} == {"color", "spatial"}
    for e in m.images:
        with Image.open(rendered / e.file) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    raw = json.loads((rendered / "manifest.json").read_text())
    assert raw["version"] == 1 and raw["resolution"] == 32
    assert set(raw["images"][0]) >= {"file", "prompt", "category", "seed"}

    out = tmp_path / "report.json"
    r = cli("world", "eval", rendered, "--out", out)
    assert r.exit_code == 0, r.output
    for word in ("category", "pass rate", "color", "spatial", "overall"):
        assert word in r.stdout
    report = json.loads(out.read_text())
    assert report["overall"]["n"] == 6
    assert report["overall"]["pass_rate"] == 1.0  # clean renders pass the evaluator
    assert report["categories"]["color"]["aspect"] == "attribute_binding"
    assert report["categories"]["spatial"]["n"] == 3
    assert all(img["passed"] and img["clauses"] for img in report["images"])


def test_eval_default_output(cli, image_dir):
    r = cli("world", "eval", image_dir)
    assert r.exit_code == 0, r.output
    assert json.loads((image_dir / "eval.json").read_text())["overall"]["n"] == 6
    assert not list(image_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_render_is_deterministic(cli, tmp_path):
    args = ["world", "render", "-c", "counting", "-c", "complex", "--limit", "2", "--seeds", "2"]
    assert cli(*args, "--seed", "11", "--out", tmp_path / "a").exit_code == 0
    assert cli(*args, "--seed", "11", "--out", tmp_path / "b").exit_code == 0
    assert cli(*args, "--seed", "12", "--out", tmp_path / "c").exit_code == 0
    a, b, c = (files(tmp_path / x) for x in "abc")
    assert len(a) == 8 and a == b
    assert a != c
    assert (tmp_path / "a" / "manifest.json").read_bytes() != (tmp_path / "c" / "manifest.json").read_bytes()
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ma == mb


def test_image_does_not_depend_on_the_rest_of_the_set(cli, tmp_path):
    assert cli("world", "render", "-c", "shape", "--limit", "3", "--out", tmp_path / "a").exit_code == 0
    r = cli("world", "render", "-c", "color", "-c", "shape", "--limit", "2", "--out", tmp_path / "b")
    assert r.exit_code == 0
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a["shape/0000_00.png"] == b["shape/0000_00.png"]


def test_render_own_prompts(cli, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("# my prompts\na red circle\n\na blue square above a green cross\n")
    out = tmp_path / "own"
    r = cli("world", "render", "--prompts", pf, "-p", "two yellow triangles", "--res", "64", "--out", out)
    assert r.exit_code == 0, r.output
    m = read_manifest(out)
    assert m.resolution == 64
    assert [e.prompt for e in m.images] == [
        "two yellow triangles",
        "a red circle",
        "a blue square above a green cross",
    ]
    assert all(e.category is None for e in m.images)
    r = cli("world", "eval", out)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "eval.json").read_text())["overall"]["pass_rate"] == 1.0


def test_demo(cli, tmp_path):
    out = tmp_path / "demo"
    r = cli("world", "demo", "--per-category", "2", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "eval.json").read_text())
    assert report["overall"]["n"] == 2 * len(suites.CATEGORIES)
    assert list(report["categories"]) == list(suites.CATEGORIES)
    assert "overall" in r.stdout
    with Image.open(out / "grid.png") as im:
        assert im.width > 200 and im.height > 200


def test_render_out_folder_resumes_or_refuses(cli, tmp_path):
    out = tmp_path / "r"
    args = ["world", "render", "-p", "a red circle", "--out", out]
    assert cli(*args).exit_code == 0
    assert cli(*args).exit_code == 0  # the same settings: resumed
    before = files(out)
    r = cli("world", "render", "-p", "a blue square", "--out", out)
    assert r.exit_code == 2 and "other settings" in r.stderr and "--overwrite" in r.stderr
    assert "a blue square" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert files(out) == before  # nothing mixed in
    r = cli("world", "render", "-p", "a red circle", "--res", "48", "--out", out)
    assert r.exit_code == 2 and "res: 32 -> 48" in r.stderr
    r = cli("world", "render", "-p", "a blue square", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert [e.prompt for e in read_manifest(out).images] == ["a blue square"]
    assert len(files(out)) == 1


def test_render_out_that_cannot_be_a_folder(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    for out, needle in ((tmp_path / "f", "existing file"), (tmp_path / "f" / "sub", "not a folder")):
        r = cli("world", "render", "-p", "a red circle", "--out", out)
        assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = cli("world", "render", "-p", "a red circle", "--out", tmp_path / "other", "--overwrite")
    assert r.exit_code == 2 and "other files" in r.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_atomic_writes_follow_the_umask(tmp_path):
    import os
    import stat

    from compalign.io import atomic_write_bytes

    old = os.umask(0o027)
    try:
        mode = stat.S_IMODE(atomic_write_bytes(tmp_path / "a.bin", b"x").stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o640


def test_root_help_lists_every_stage_on_one_line(cli):
    from compalign.cli import STAGES

    r = cli("--help")
    assert r.exit_code == 0
    commands = r.stdout.split("Commands:")[1].strip().splitlines()
    assert [ln.split()[0] for ln in commands] == list(STAGES)  # in the order of the data flow
    for ln, line in zip(commands, STAGES.values(), strict=True):
        assert ln.split(None, 1)[1] == line  # the whole line, not cut
    assert "Later stages" not in r.stdout


def test_reno_help_keeps_every_option_name_at_80_columns():
    from typer.testing import CliRunner

    from compalign.cli import app

    r = CliRunner().invoke(app, ["reno", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80
    command = typer_command("reno")
    options = [p for p in command.params if p.param_type_name == "option"]
    names = [o for p in options for o in p.opts + p.secondary_opts]
    assert "--gradient-checkpointing" in names and "--early-stop-patience" in names
    for name in names:
        assert f"{name} " in r.stdout or f"{name}," in r.stdout or f"{name}\n" in r.stdout, name
    assert "…" not in r.stdout


def typer_command(name: str):
    import typer

    from compalign.cli import app

    return typer.main.get_command(app).commands[name]


def test_world_models_lists_three_sections(cli):
    r = cli("world", "models")
    assert r.exit_code == 0
    text = r.stdout
    heads = ["Shipped world models", "Presets to train", "Adapters"]
    assert all(h in text for h in heads) and text.index(heads[0]) < text.index(heads[1]) < text.index(
        heads[2]
    )
    adapters = text.split("Adapters")[1]
    assert "sd-turbo:" in adapters and "flux:" in adapters and "reno:" in adapters
    assert "not trained" not in text
    rows = json.loads(cli("world", "models", "--json").stdout)
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["world-base"] == "world" and kinds["sd-turbo:"] == "adapter"
    assert all(r["kind"] == "preset" for r in rows if r["kind"] != "adapter" and not r["shipped"])

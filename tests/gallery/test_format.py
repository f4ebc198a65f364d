"""IterComp import / export, and bad input: one line naming record and field, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compalign.gallery.format import load_gallery
from tests.factories import ITERCOMP_MODELS, itercomp_tree, read, snapshot


def test_import_export_roundtrip(cli, tmp_path):
    root = tmp_path / "repo"
    f = itercomp_tree(root, expanded=True)
    r = cli("gallery", "import", f, "--root", root)
    assert r.exit_code == 0, r.output
    g = load_gallery(root)
    assert g.aspect == "attribute_binding"  # from the paths
    assert g.models == ITERCOMP_MODELS + ["sdxl_iteration1"]
    rec = g.record(7)
    assert g.tiers(rec) == [["sdxl"], ["sdxl_iteration1"], ["sd3"], ["sd15"]]
    assert g.initial_tiers(rec) == [["sdxl"], ["sd3"], ["sd15"]]
    out = tmp_path / "export.json"
    r = cli("gallery", "export", root, "--out", out)
    assert r.exit_code == 0, r.output
    assert read(out) == read(f)  # the exact format, key order included
    assert list(read(out)[0]) == list(read(f)[0])
    r = cli("gallery", "export", root, "--out", tmp_path / "abs.json", "--absolute")
    assert Path(read(tmp_path / "abs.json")[0]["image_sd15"]).is_absolute()
    # importing again over an adopted gallery needs --force
    r = cli("gallery", "import", f, "--root", root)
    assert r.exit_code == 2 and "--force" in r.stderr


def _check_bad(cli, tmp_path, mutate, expect: list[str], aspect="attribute_binding"):
    root = tmp_path / "repo"
    f = itercomp_tree(root)
    data = read(f)
    text = mutate(data, root)
    f.write_text(text if isinstance(text, str) else json.dumps(data))
    before = snapshot(root)
    r = cli("gallery", "import", f, "--root", root, "--aspect", aspect)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for e in expect:
        assert e in lines[0], lines[0]
    assert snapshot(root) == before  # nothing written
    return lines[0]


def test_bad_json(cli, tmp_path):
    _check_bad(cli, tmp_path, lambda d, r: '[{"index": 0, "prompt": "x",}', ["not valid JSON", "line 1"])


def test_rank_not_a_permutation(cli, tmp_path):
    def mutate(d, r):
        d[1]["rank"] = [1, 1, 2]

    _check_bad(cli, tmp_path, mutate, ["record index 7", "field rank", "not a permutation of 1..3"])


def test_missing_image(cli, tmp_path):
    def mutate(d, r):
        (r / d[2]["image_sd3"]).unlink()

    _check_bad(cli, tmp_path, mutate, ["record index 14", "field image_sd3", "not found"])


@pytest.mark.parametrize(
    "content",
    [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "truncated", b""],
    ids=["text", "png-header-only", "truncated-png", "empty"],
)
def test_import_force_refuses_files_that_are_not_images(cli, tmp_path, content):
    """A good gallery is not replaced by one whose .png is not an image (every file is decoded)."""
    root = tmp_path / "repo"
    f = itercomp_tree(root)
    assert cli("gallery", "import", f, "--root", root).exit_code == 0
    bad = root / read(f)[1]["image_sd3"]
    if content == "truncated":
        content = bad.read_bytes()[:-20]
    bad.write_bytes(content)
    before = snapshot(root)
    r = cli("gallery", "import", f, "--root", root, "--force")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert (
        "record index 7" in r.stderr and "field image_sd3" in r.stderr and "not a readable image" in r.stderr
    )
    assert snapshot(root) == before  # the adopted gallery is kept


def test_duplicate_index(cli, tmp_path):
    def mutate(d, r):
        d[2]["index"] = 0

    _check_bad(cli, tmp_path, mutate, ["record index 0", "field index", "duplicate index 0"])


def test_unknown_model(cli, tmp_path):
    def mutate(d, r):
        d[1]["image_dalle"] = d[1].pop("image_sd3")

    _check_bad(cli, tmp_path, mutate, ["record index 7", "field image_dalle", "unknown model 'dalle'"])


def test_path_outside_root(cli, tmp_path):
    def mutate(d, r):
        d[0]["image_sd15"] = "../../etc/passwd"

    _check_bad(cli, tmp_path, mutate, ["record index 0", "field image_sd15", "inside"])


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda d: d.__setitem__(0, "x"), ["record #0", "JSON object"]),
        (lambda d: d[0].pop("prompt"), ["record index 0", "field prompt"]),
        (lambda d: d[0].__setitem__("index", "0"), ["record #0", "field index"]),
        (lambda d: d[0].__setitem__("initial_rank", [1, 2, 3, 4]), ["field initial_rank", "ranks 4 models"]),
    ],
)
def test_more_bad_fields(cli, tmp_path, mutate, expect):
    _check_bad(cli, tmp_path, lambda d, r: (mutate(d), None)[1], expect)


def test_bad_gallery_folder_for_every_command(cli, gallery_dir, tmp_path):
    """Commands on a broken gallery: one line, exit 2, no file changed."""
    data = read(gallery_dir / "gallery.json")
    data[0]["rank"] = [1, 2, 2]
    (gallery_dir / "gallery.json").write_text(json.dumps(data))
    before = snapshot(gallery_dir)
    for args in (
        ("gallery", "check", gallery_dir),
        ("rank", "auto", gallery_dir),
        ("rank", "export", gallery_dir),
        ("pairs", gallery_dir, "--out", tmp_path / "p.jsonl"),
        ("gallery", "expand", gallery_dir, "--add-model", "x"),
        ("gallery", "export", gallery_dir, "--out", tmp_path / "e.json"),
    ):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "field rank" in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert snapshot(gallery_dir) == before
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "e.json").exists()


def test_sidecar_ties_checked(cli, gallery_dir):
    r = cli("rank", "auto", gallery_dir, "--tie-break", "none")
    assert r.exit_code == 0, r.output
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert read(gallery_dir / "gallery.json")[0]["rank"] == [2, 1, 3]
    ranks["records"]["0"]["rank_ties"] = [[2, 3]]  # good and bad2 are not neighbours in the rank
    (gallery_dir / "gallery_ranks.json").write_text(json.dumps(ranks))
    r = cli("gallery", "check", gallery_dir)
    assert r.exit_code == 2 and "record index 0, field rank_ties" in r.stderr


def test_unknown_model_in_generated_gallery(cli, gallery_dir):
    data = read(gallery_dir / "gallery.json")
    data[3]["image_other"] = data[3]["image_bad"]
    (gallery_dir / "gallery.json").write_text(json.dumps(data))
    r = cli("gallery", "check", gallery_dir)
    assert r.exit_code == 2 and "record index 3, field image_other: unknown model 'other'" in r.stderr
    shutil.rmtree(gallery_dir / "images" / "good")
    data[3].pop("image_other")
    (gallery_dir / "gallery.json").write_text(json.dumps(data))
    r = cli("gallery", "check", gallery_dir)
    assert r.exit_code == 2 and "record index 0, field image_good" in r.stderr and "not found" in r.stderr

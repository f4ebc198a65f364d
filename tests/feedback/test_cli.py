"""``compalign feedback train`` end to end on the tiny world pipeline."""

from __future__ import annotations

import json

from compalign.generators import create_generator


def test_feedback_train_and_export(cli, tiny_base, pool_dir, tmp_path, monkeypatch):
    from compalign.generators import registry
    from compalign.generators.world import train as world_train

    for mod in (registry, world_train):  # the export's folder: not the package's
        monkeypatch.setattr(mod, "weights_root", lambda: tmp_path / "weights")
    out = tmp_path / "run"
    r = cli(
        "feedback", "train", "--base", tiny_base, "--reward", "test-redness=1", "--category", "colors",
        "--steps", "3", "--max-steps", "2", "--reg", "distance", "--lora-rank", "2", "--lr", "1e-3",
        "--batch-size", "2", "--output-dir", out, "--seed", "1", "--threads", "1", "--device", "cpu",
        "--no-progress", "--export", "tiny-fb",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "test-redness:" in r.stdout and "done:" in r.stdout
    record = json.loads((out / "final" / "training.json").read_text())
    assert record["steps"] == 2 and record["settings"]["total_steps"] == 3
    assert record["config"]["seed"] == 1 and record["trained"]["lora"]["rank"] == 2
    shipped = tmp_path / "weights" / "tiny-fb"
    assert (shipped / "model_index.json").is_file()
    assert create_generator(shipped).generate(["a red circle"], seeds=[0]).shape == (1, 3, 32, 32)


def test_feedback_train_bad_input(cli, tiny_base, tmp_path):
    r = cli("feedback", "train", "--base", tiny_base, "--reward", "nope=1", "--output-dir", tmp_path / "a")
    assert r.exit_code == 2 and "unknown reward 'nope'" in r.stderr
    r = cli(
        "feedback", "train", "--base", tiny_base, "--stop-range", "0.9,0.2", "--output-dir", tmp_path / "a"
    )
    assert r.exit_code == 2 and "stop_range" in r.stderr
    r = cli("feedback", "train", "--base", "sd:/nowhere", "--export", "x", "--output-dir", tmp_path / "a")
    assert r.exit_code == 2 and "world models only" in r.stderr
    r = cli("feedback", "train", "--base", tmp_path / "missing", "--reward", "test-redness=1",
            "--output-dir", tmp_path / "a", "--device", "cpu", "--no-progress")  # fmt: skip
    assert r.exit_code == 2 and "cannot load base model" in r.stderr
    assert not (tmp_path / "a" / "final").exists()


def test_feedback_train_refuses_an_out_folder_it_cannot_write(cli, tiny_base, tmp_path):
    """An --output-dir that is a file, under a file or in a read-only folder: one line, exit 2,
    nothing written (the checks come before any model is loaded)."""
    import os

    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    cases = [(taken, "is an existing file"), (taken / "run", "is a file, not a folder")]
    locked.chmod(0o555)
    if not os.access(locked, os.W_OK):  # permission bits bind this user (not root)
        cases.append((locked / "run", "cannot write in"))
    try:
        for out, needle in cases:
            r = cli(
                "feedback", "train", "--base", tiny_base, "--reward", "test-redness=1", "--output-dir", out,
                "--max-steps", "1", "--device", "cpu", "--no-progress",
            )  # fmt: skip
            assert r.exit_code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
                r.output
            )
    finally:
        locked.chmod(0o755)
    assert taken.read_text() == "not a folder" and not any(locked.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "taken"]


def _config_of(cli, monkeypatch, *args) -> dict:
    """The `FeedbackConfig` (as recorded) that `compalign feedback train ARGS` would train."""
    from compalign.feedback import train

    got = {}

    def record(config, resume=True):
        got.update(config.to_dict())

    monkeypatch.setattr(train, "train_feedback", record)
    r = cli("feedback", "train", *args)
    assert got, r.output
    return got


def test_options_are_the_config_fields_and_old_spellings_stay(cli, monkeypatch):
    """Every FeedbackConfig field is an option of its own name with its docstring as help; the
    earlier spellings are hidden aliases that record the same config."""
    import dataclasses

    from compalign.feedback.config import FeedbackConfig

    r = cli("feedback", "train", "--help")
    assert r.exit_code == 0
    for f in dataclasses.fields(FeedbackConfig):
        assert f"--{f.name.replace('_', '-')}" in r.stdout, f.name
    assert "Peak AdamW learning rate" in r.stdout and "--lr " not in r.stdout and "--steps " not in r.stdout
    old = _config_of(
        cli, monkeypatch, "--reward", "world-clip=2", "--reward-cap", "world-clip=0.5", "--aspect",
        "spatial_relationship", "--steps", "30", "--guidance", "2", "--reg", "none", "--lr", "1e-3",
        "--warmup", "3", "--grad-clip", "0", "--ema", "0.99", "--time-limit", "10", "--threads", "2",
        "--train-text-encoder", "--no-progress",
    )  # fmt: skip
    new = _config_of(
        cli, monkeypatch, "--rewards", "world-clip=2", "--reward-caps", "world-clip=0.5", "--aspects",
        "spatial_relationship", "--total-steps", "30", "--guidance-scale", "2", "--reg-type", "none",
        "--learning-rate", "1e-3", "--warmup-steps", "3", "--max-grad-norm", "0", "--ema-decay", "0.99",
        "--time-limit-s", "10", "--num-threads", "2", "--train-text-encoder", "--no-progress",
    )  # fmt: skip
    assert old == new
    assert (new["learning_rate"], new["total_steps"], new["rewards"]) == (1e-3, 30, {"world-clip": 2.0})
    assert _config_of(cli, monkeypatch, "--freeze-text-encoder")["train_text_encoder"] is False
    assert _config_of(cli, monkeypatch, "--lora-rank", "0")["lora_rank"] is None
    assert _config_of(cli, monkeypatch, "--adam-betas", "0.8", "0.9")["adam_betas"] == [0.8, 0.9]


def test_an_option_given_under_both_names_is_refused(cli):
    r = cli("feedback", "train", "--lr", "1e-3", "--learning-rate", "1e-4")
    assert r.exit_code == 2 and r.stderr.strip() == "error: give --learning-rate or --lr, not both"


def test_lora_without_peft_is_one_line_naming_the_extra(cli, tiny_base, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` fails as if it were not installed
    r = cli("feedback", "train", "--base", tiny_base, "--reward", "test-redness=1", "--lora-rank", "4",
            "--output-dir", tmp_path / "run", "--device", "cpu", "--no-progress")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert 'pip install -e ".[lora]"' in r.stderr and "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "peft" in errors[0], r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()

"""Unit tests of `compalign.training`: EMA, schedule, run folder, stop flag, RNG state, curves."""

from __future__ import annotations

import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from compalign.training import (
    EMA,
    Curve,
    Panel,
    RunFolder,
    StopFlag,
    atomic_dir,
    config_diff,
    count_parameters,
    folder_size,
    hardware_info,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    lr_factor,
    new_session,
    plot_panels,
    read_log,
    rng_state,
    set_rng_state,
    versions,
)


# ------------------------------------------------------------------------------------- EMA
def test_ema_warm_up_decay_and_copy():
    p = {"w": torch.zeros(3)}
    ema = EMA(p, decay=0.9)
    p["w"] += 1.0
    ema.update(p, step=0)  # decay min(0.9, 1/10) = 0.1: shadow moves 90% of the way
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 0.9))
    ema.update(p, step=1000)  # decay 0.9: 0.9 + 0.1 * (1 - 0.9)
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 0.91))
    target = {"w": torch.zeros(3, dtype=torch.float64)}
    ema.copy_to(target)
    assert target["w"].dtype == torch.float64 and torch.allclose(target["w"], torch.full((3,), 0.91).double())


def test_ema_state_dict_round_trip_is_a_copy():
    p = {"a": torch.randn(2, 2), "b": torch.randn(4)}
    ema = EMA(p, 0.99)
    ema.update({k: v + 1 for k, v in p.items()}, 5)
    other = EMA(p, 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99
    for k in p:
        assert torch.equal(other.shadow[k], ema.shadow[k])
        assert other.shadow[k].data_ptr() != ema.shadow[k].data_ptr()


# ------------------------------------------------------------------------------------- schedule
def test_lr_factor_warm_up_cosine_floor_and_constant():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == 1.0
    assert lr_factor(10, 100, 10, 0.1) == 1.0
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55)  # half way: the mean of 1 and 0.1
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 100, 10, 0.1) == pytest.approx(0.1)  # past the end: the floor
    assert lr_factor(50, 100, 10, 0.1, schedule="constant") == 1.0
    assert lr_factor(10, 100, 0, 0.0, time_frac=1.0) == pytest.approx(0.0)  # the time is up
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, 100, 10, schedule="linear")


def test_lr_factor_equals_the_trainers_formula_bit_for_bit():
    """The feedback trainer's cosine to 0.1 (written as 0.1 + 0.9 * ...) and the general form."""
    for step in range(0, 130, 7):
        progress = min(1.0, (step - 5) / 95)
        old = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)) if step >= 5 else (step + 1) / 5
        assert lr_factor(step, 100, 5, 0.1) == old


# ------------------------------------------------------------------------------------- run folder
def test_atomic_dir_replaces_and_a_failed_write_keeps_the_old(tmp_path):
    final = tmp_path / "final"
    atomic_dir(final, lambda d: (d / "a.txt").write_text("one"))
    atomic_dir(final, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]

    def fail(d):
        (d / "c.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_dir(final, fail)
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert folder_size(final) == 3


def test_checkpoints_keep_the_last_ones_and_load(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.checkpoints() == [] and latest_checkpoint(run.path) is None
    for step in (1, 2, 3):
        run.save_checkpoint(step, {"step": step, "w": torch.arange(step)}, keep=2)
    assert [p.name for p in list_checkpoints(run.path)] == ["step_0000002", "step_0000003"]
    state = load_checkpoint(run.latest_checkpoint())
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(3))
    (run.path / "checkpoints" / "step_0000009").mkdir()  # no state.pt: an unfinished write
    assert run.latest_checkpoint().name == "step_0000003"
    run.remove_checkpoints()
    assert run.checkpoints() == []


def test_log_append_truncate_and_read(tmp_path):
    run = RunFolder(tmp_path)
    for step in (10, 20, 30):
        run.log({"step": step, "loss": 1.0 / step})
    run.log({"event": "eval", "step": 30})
    run.truncate_log(20)
    assert [r["step"] for r in read_log(run.log_path)] == [10, 20]
    run.remove_log()
    assert read_log(run.log_path) == []


def test_config_check_names_the_fields(tmp_path):
    run = RunFolder(tmp_path)
    run.write_config({"lr": 1e-3, "max_steps": 10, "device": "cpu"})
    assert json.loads(run.config_path.read_text())["lr"] == 1e-3
    run.check_config({"lr": 1e-3, "max_steps": 10, "device": "cuda"}, runtime_fields={"device"})
    with pytest.warns(UserWarning, match="max_steps differs"):
        run.check_config({"lr": 1e-3, "max_steps": 20, "device": "cpu"}, warn=True)
    with pytest.raises(ValueError, match=r"different config \(lr, seed\)"):
        run.check_config({"lr": 2e-3, "max_steps": 10, "device": "cpu", "seed": 1})


def test_config_diff_with_defaults():
    assert config_diff({"a": 1}, {"a": 1, "b": 2}) == ["b"]
    assert config_diff({"a": 1}, {"a": 1, "b": 2}, defaults={"b": 2}) == []
    assert config_diff({"a": 1, "out": "x"}, {"a": 1, "out": "y"}, runtime_fields={"out"}) == []


def test_session_record():
    s = new_session(5, {"device": "cpu"}, processes=2)
    assert list(s) == ["started", "from_step", "processes", "device"] and s["from_step"] == 5


# ------------------------------------------------------------------------------------- stop flag, RNG
def test_stop_flag_sets_on_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as flag:
        assert not flag.stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.stop
    assert signal.getsignal(signal.SIGTERM) == before


def test_second_sigint_interrupts():
    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_rng_state_round_trip():
    state = rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


# ------------------------------------------------------------------------------------- record, curves
def test_environment_record():
    v = versions("numpy")
    assert list(v) == ["torch", "numpy"] and v["numpy"] == np.__version__
    info = hardware_info(torch.device("cpu"))
    assert info["device"] == "cpu" and info["cpu_count"] == os.cpu_count()
    assert count_parameters(torch.nn.Linear(3, 2)) == 8


def test_plot_panels_writes_a_png(tmp_path):
    out = plot_panels(
        [
            Panel([Curve("loss", [1, 2, 3], [1.0, 0.5, 0.2], {"lw": 1.2})], {"ylabel": "loss"}),
            Panel([Curve("acc", [1, 3], [0.5, 0.9], {"fmt": "o-"})], {"ylim": (0, 1)}, {"value": "linear"}),
        ],
        tmp_path / "curves.png",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]

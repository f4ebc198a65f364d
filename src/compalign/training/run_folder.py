"""A training run's folder: config check, atomic checkpoints, resume, ``log.jsonl``, stop flag
and RNG state.

::

    run_dir/
      config.json                          the run's config (checked on resume)
      log.jsonl                            one JSON line per logged step
      checkpoints/step_0000500/state.pt    resumable state (what the trainer puts in it)

Folders (checkpoints, final models) are written to a temporary folder and renamed into place, so
a killed run never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"


def atomic_dir(final: str | Path, write: Callable[[Path], object]) -> None:
    """Write a folder with `write(tmp_dir)`, then rename it into place (replacing `final`)."""
    final = Path(final)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and (p / STATE_FILE).is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def config_diff(
    old: dict, new: dict, runtime_fields: Iterable[str] = (), defaults: dict | None = None
) -> list[str]:
    """Fields that differ between two config dicts, `runtime_fields` (how a run executes, not what
    it computes) left out. With `defaults`, a field missing from one dict counts as its default
    (a run started before the field existed)."""
    defaults = defaults or {}
    keys = (set(old) | set(new)) - set(runtime_fields)
    return sorted(k for k in keys if old.get(k, defaults.get(k)) != new.get(k, defaults.get(k)))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_session(from_step: int, hardware: dict, **extra) -> dict:
    """The record of one call of a trainer (a run resumed three times has four)."""
    return {"started": utc_now(), "from_step": from_step, **extra, **hardware}


class RunFolder:
    """The files of a run folder (`path`): config, log and checkpoints."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.log_path = self.path / LOG_FILE

    # ------------------------------------------------------------------------------- config
    def check_config(
        self,
        config: dict,
        runtime_fields: Iterable[str] = (),
        may_change: tuple[str, ...] = ("max_steps",),
        defaults: dict | None = None,
        warn: bool = False,
    ) -> None:
        """Refuse to resume with a config that computes something else than the saved one
        (`may_change`: the length of the run, which only stretches its schedule; `warn`: say so)."""
        if not self.config_path.exists():
            return
        diff = config_diff(json.loads(self.config_path.read_text()), config, runtime_fields, defaults)
        if diff and set(diff) <= set(may_change):
            if warn:
                warnings.warn(
                    f"{', '.join(diff)} differs from the run's config: the learning-rate schedule changes",
                    stacklevel=3,
                )
        elif diff:
            raise ValueError(
                f"run {self.path} was started with a different config ({', '.join(diff)}); "
                "use another output_dir or start fresh (resume=False)"
            )

    def write_config(self, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2))

    # ------------------------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def remove_checkpoints(self) -> None:
        for p in self.checkpoints():
            shutil.rmtree(p)

    def save_checkpoint(self, step: int, state: dict, keep: int = 2) -> Path:
        """Write `state` as ``checkpoints/step_<step>/state.pt`` (atomic); keep the last `keep`."""
        path = self.path / CHECKPOINTS / f"step_{step:07d}"
        atomic_dir(path, lambda d: torch.save(state, d / STATE_FILE))
        for old in self.checkpoints()[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    # ------------------------------------------------------------------------------- log
    def log(self, record: dict) -> None:
        """Append one line to ``log.jsonl``."""
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop the lines logged after `step` (a resumed run logs them again)."""
        if not self.log_path.exists():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        self.log_path.write_text("".join(ln + "\n" for ln in keep))

    def remove_log(self) -> None:
        self.log_path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """The state saved in a checkpoint folder (on the CPU)."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


class StopFlag:
    """Context manager: SIGINT / SIGTERM set `stop` (the loop saves a checkpoint and stops); a
    second SIGINT interrupts at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def folder_size(path: str | Path) -> int:
    """Bytes of the files under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

"""Run a command in its own process and kill it with SIGKILL (kill -9) once a condition holds: a
crash at an arbitrary point, for the resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def python_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_python(args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` to the end (raises with its output when it fails)."""
    r = subprocess.run(
        [sys.executable, *map(str, args)], env=python_env(), capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def kill_when(args: Sequence[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start `python ARGS`, SIGKILL it as soon as `ready()` is true; fails if it ends first."""
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)],
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"it ended before it could be killed ({proc.returncode}):\n{err[-3000:]}"
    )

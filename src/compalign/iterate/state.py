"""The work folder's state: ``<workdir>/state.json`` (every stage of every iteration with its
status, the settings it ran with and its outputs), the lock that keeps one ``iterate`` per work
folder, and the errors of the loop."""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

from ..io import atomic_write_json
from .config import STAGES

STATE_FILE = "state.json"
LOCK_FILE = ".iterate.lock"
STATE_VERSION = 1


class IterateError(ValueError):
    """Bad input or a conflict with the work folder's state; the message says what to do."""


class IterateInterrupted(RuntimeError):
    """A stage was stopped (SIGINT / SIGTERM in a trainer); the same command resumes it."""


class WaitingForPeople(Exception):
    """People mode: some records are not ranked yet (the message says what to serve)."""


def now() -> str:
    """The local time as the state records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def plain(obj):
    """JSON round trip (tuples -> lists), so settings compare as they are stored."""
    return json.loads(json.dumps(obj))


class State:
    """``state.json``: ``{"version", "created", "updated", "config", "iterations": {"k": {stage:
    {"status", "settings", "outputs", "started", "finished", "seconds"}}}}``."""

    def __init__(self, root: Path):
        self.path = root / STATE_FILE
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise IterateError(f"{self.path}: cannot read the state ({e}); fix or remove it") from None
            if not isinstance(self.data, dict) or not isinstance(self.data.get("iterations"), dict):
                raise IterateError(f"{self.path}: not an iterate state file (no iterations object)")
        else:
            self.data = {"version": STATE_VERSION, "created": now(), "iterations": {}}

    def entry(self, k: int, stage: str) -> dict | None:
        return self.data["iterations"].get(str(k), {}).get(stage)

    def put(self, k: int, stage: str, entry: dict) -> None:
        self.data["iterations"].setdefault(str(k), {})[stage] = entry
        self.save()

    def done(self, k: int, stage: str) -> bool:
        e = self.entry(k, stage)
        return e is not None and e.get("status") == "done"

    def outputs(self, k: int, stage: str) -> dict:
        e = self.entry(k, stage)
        return (e or {}).get("outputs") or {}

    def drop_from(self, k: int, stage: str) -> list[tuple[int, str]]:
        """Remove (k, stage), the later stages of k and every later iteration; returns what went."""
        gone = []
        for key in sorted(self.data["iterations"], key=int):
            j = int(key)
            if j < k:
                continue
            stages = self.data["iterations"][key]
            for s in list(stages):
                if j > k or STAGES.index(s) >= STAGES.index(stage):
                    gone.append((j, s))
                    del stages[s]
            if not stages:
                del self.data["iterations"][key]
        self.save()
        return gone

    def save(self) -> None:
        self.data["updated"] = now()
        atomic_write_json(self.path, self.data)


@contextmanager
def locked(root: Path):
    """One `iterate` per work folder at a time."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise IterateError(
                f"{root}: another `compalign iterate` is running in this work folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

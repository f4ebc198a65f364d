"""Shared by the stage CLIs: bad input ends with one `error:` line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperCommand

from .io import atomic_write_json

BAD_INPUT = 2


def fail(message: object) -> NoReturn:
    """Print `error: <message>` (whitespace collapsed to one line) and exit with `BAD_INPUT`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise typer.Exit(BAD_INPUT)


def note(message: str) -> None:
    """A progress or status line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# output folders: resume a run with the same settings, refuse one with other settings

RUN_SETTINGS = "run_settings.json"
"""The settings a command's output folder was made with (written when the run starts)."""

_RUN_FILES = (RUN_SETTINGS, "manifest.json", "results.json")
"""Files that mark a folder as written by a compalign command (older runs lack `RUN_SETTINGS`)."""


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


_UNSET = "<unset>"


def _differences(key: str, old: Any, new: Any) -> list[str]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [
            d
            for k in keys
            for d in _differences(f"{key}.{k}" if key else str(k), old.get(k, _UNSET), new.get(k, _UNSET))
        ]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{key}: {len(old)} entries -> {len(new)}"]
        return next(
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            if (d := _differences(f"{key}[{i}]", a, b))
        )
    return [f"{key}: {_short(old)} -> {_short(new)}"]


def settings_difference(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs (lists: their first differing entry)."""
    return _differences("", old, new)


class OutDir:
    """The output folder of a run, checked before any work (`check_out_dir`), created by `start`."""

    def __init__(self, path: Path, settings: dict, mode: str, option: str):
        self.path, self.settings, self.mode, self.option = path, settings, mode, option

    @property
    def resume(self) -> bool:
        """True when the folder holds a run with the same settings (its finished work is kept)."""
        return self.mode == "resume"

    def start(self) -> Path:
        """Create the folder (emptied first with ``--overwrite``) and record the settings in it.

        A folder that cannot be written is a one-line error (exit 2)."""

        try:
            if self.mode == "overwrite":
                shutil.rmtree(self.path)
            self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path / RUN_SETTINGS, self.settings)
        except OSError as e:
            fail(f"{self.option} {self.path}: cannot write there ({e.strerror or e})")
        return self.path

    def abandon(self) -> None:
        """Remove what `start` created (for a run refused after it started: nothing is left)."""

        created = getattr(self, "_created", [])
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
            self._created = []


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def out_place_problem(out: str | Path, option: str = "--out") -> str | None:
    """Why a run cannot write its output folder `out` (an existing file, a file above it, a folder
    it cannot write in), or None. Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"{option} {out} is an existing file; give a folder"
    anc = _nearest_existing(out)
    if not anc.is_dir():
        return f"{option} {out}: {anc} is a file, not a folder"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"{option} {out}: cannot write in {anc} (permission denied or read-only)"
    return None


def check_out_dir(out: Path, settings: dict, overwrite: bool = False, option: str = "--out") -> OutDir:
    """Check an output folder before a run writes anything in it; writes nothing.

    - a new or empty folder: a fresh run;
    - a folder holding a run with the same `settings` (its `RUN_SETTINGS`): resumed;
    - a folder holding a run with other settings: a one-line error naming the difference and
      ``--overwrite`` (which replaces that run);
    - an existing file, a folder of other files, a place that cannot be written: a one-line error.

    `settings` are what decides the outputs (JSON values); call `OutDir.start` to create the folder.
    """
    out = Path(out)
    settings = _jsonable(settings)
    problem = out_place_problem(out, option)
    if problem is not None:
        fail(problem)
    if not out.is_dir() or not any(out.iterdir()):
        return OutDir(out, settings, "new", option)
    record = out / RUN_SETTINGS
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            old = None
        if old == settings:
            return OutDir(out, settings, "resume", option)
        if overwrite:
            return OutDir(out, settings, "overwrite", option)
        diff = settings_difference(old, settings) if isinstance(old, dict) else [f"{RUN_SETTINGS} unreadable"]
        fail(
            f"{out} holds a run with other settings ({'; '.join(diff)}); run the same command to resume "
            f"it, pass --overwrite to replace it, or choose another {option}"
        )
    if any((out / f).exists() for f in _RUN_FILES):
        if overwrite:
            return OutDir(out, settings, "overwrite", option)
        fail(
            f"{out} holds an earlier run whose settings were not recorded; pass --overwrite to replace it, "
            f"or choose another {option}"
        )
    fail(f"{option} {out} is a folder of other files (not a compalign run); choose a new or empty folder")


# --------------------------------------------------------------------------------------------
# prompts for world models


def clip_text(text: str, n: int = 80) -> str:
    """`text` cut to `n` characters (``...`` marks a cut), for messages about long input."""
    return text if len(text) <= n else text[: n - 3] + "..."


def check_world_prompts(prompts: list[str], model: str = "the world model") -> None:
    """One-line error (exit 2) naming the first prompt outside the world grammar and its word:
    world models' tokenizers read only the grammar's words."""
    from .world.grammar import PromptError, parse_prompt  # lazy: loads scipy (compalign.world)

    seen: set[str] = set()
    for n, p in enumerate(prompts, 1):
        if p in seen:
            continue
        seen.add(p)
        try:
            parse_prompt(p)
        except PromptError as e:
            reason = str(e).replace(p, clip_text(p)) if len(p) > 80 else str(e)
            fail(
                f"prompt {n} ({clip_text(p)!r}) is outside the world grammar, which {model} reads: "
                f"{clip_text(reason, 300)}; see `compalign world prompts --all`"
            )


class GreedyListCommand(TyperCommand):
    """A command whose list options (`greedy`) take several values after one flag: ``--models a
    b c`` is read as ``--models a --models b --models c`` (values run to the next ``-`` token)."""

    greedy: tuple[str, ...] = ()

    def parse_args(self, ctx, args):
        out, i = [], 0
        while i < len(args):
            a = args[i]
            out.append(a)
            i += 1
            if a in self.greedy and i < len(args):
                out.append(args[i])
                i += 1
                while i < len(args) and not args[i].startswith("-"):
                    out += [a, args[i]]
                    i += 1
        return super().parse_args(ctx, out)

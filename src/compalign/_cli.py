"""Shared by the stage CLIs: bad input ends with one `error:` line on stderr and exit code 2."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

BAD_INPUT = 2


def fail(message: object) -> NoReturn:
    """Print `error: <message>` (whitespace collapsed to one line) and exit with `BAD_INPUT`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise typer.Exit(BAD_INPUT)


def note(message: str) -> None:
    """A progress or status line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr)

"""Prompt files: UTF-8 text, one prompt a line; blank lines and lines starting with ``#`` are skipped."""

from __future__ import annotations

from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file that cannot be read or holds no prompts (the message names the file)."""


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of `path`, in file order; `PromptFileError` when it is missing, unreadable or empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"{path}: prompt file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"{path}: cannot read prompt file: {e}") from None
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (one per line; blank lines and '#' comments are skipped)")
    return prompts

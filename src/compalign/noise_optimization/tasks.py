"""Prompt sources for noise optimization: what to optimise, and where each result goes.

A task is a list of `TaskItem(prompt, seed, out)` where `out` is the image's path relative to the
output folder. Sources:

- ``prompt``: one or more prompts given on the command line;
- ``file``: a text file, one prompt a line (``#`` comments; T2I-CompBench's ``*_val.txt`` files
  are of this form);
- ``suite``: a world suite (``color``, ``spatial``, ...; split ``heldout`` or ``train``);
- ``geneval``: GenEval's ``evaluation_metadata.jsonl`` (one JSON object a line with at least
  ``prompt``); output in GenEval's layout ``<index:05d>/metadata.jsonl`` +
  ``<index:05d>/samples/<seed:04d>.png``;
- ``parti``: Parti-prompts ``PartiPrompts.tsv`` (a ``Prompt`` column; ``Category`` kept);
- ``t2i-compbench``: a T2I-CompBench prompt file (``*_val.txt``, one prompt a line); output in its
  layout ``samples/<prompt>_<k:06d>.png`` (k counts every image of the run), which its evaluation
  scripts read unchanged (they take the prompt from the file name, before the first ``_``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from compalign.world.suites import load_suite

from ..io import atomic_write_text

KINDS = ("prompt", "file", "suite", "geneval", "parti", "t2i-compbench")


class TaskError(ValueError):
    """A task source that cannot be read (the message names the file, line and field)."""


@dataclass
class TaskItem:
    prompt: str
    seed: int
    out: str
    """Image path relative to the run's output folder."""
    meta: dict = field(default_factory=dict)


def _slug(text: str, n: int = 40) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(filter(None, s.split("_")))[:n] or "prompt"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise TaskError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"prompt file {path} is not UTF-8 text ({e})") from e
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise TaskError(f"prompt file {path} has no prompts")
    return prompts


def _plain(prompts: list[str], seeds: list[int], meta: dict | None = None) -> list[TaskItem]:
    return [
        TaskItem(p, s, f"{i:05d}_{_slug(p)}/seed{s:04d}.png", dict(meta or {}, index=i))
        for i, p in enumerate(prompts)
        for s in seeds
    ]


def read_geneval(path: Path) -> list[dict]:
    if not path.is_file():
        raise TaskError(f"GenEval metadata file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise TaskError(f"{path}:{n}: each line needs a string field 'prompt'")
        out.append(rec)
    if not out:
        raise TaskError(f"GenEval metadata file {path} has no records")
    return out


def read_parti(path: Path) -> list[dict]:
    if not path.is_file():
        raise TaskError(f"Parti-prompts file {path} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or "Prompt" not in reader.fieldnames:
            raise TaskError(f"{path}: expected a tab-separated file with a 'Prompt' column")
        rows = [r for r in reader if (r.get("Prompt") or "").strip()]
    if not rows:
        raise TaskError(f"Parti-prompts file {path} has no prompts")
    return rows


def build_task(
    kind: str,
    source: str | list[str],
    seeds: list[int],
    split: str = "heldout",
    limit: int | None = None,
) -> list[TaskItem]:
    """The items of a task (see the module doc); `limit` keeps the first prompts only."""
    if kind not in KINDS:
        raise TaskError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")
    if limit is not None and limit < 1:
        raise TaskError(f"limit must be >= 1, got {limit}")
    if not seeds:
        raise TaskError("no seeds")
    if kind == "t2i-compbench":
        return _t2i_compbench(Path(source), _read_lines(Path(source))[:limit], seeds)
    if kind == "prompt":
        prompts = [source] if isinstance(source, str) else list(source)
        return _plain(prompts[:limit], seeds)
    if kind == "file":
        return _plain(_read_lines(Path(source))[:limit], seeds)
    if kind == "suite":
        try:
            prompts = load_suite(str(source), split)
        except KeyError as e:
            raise TaskError(str(e).strip("'\"")) from e
        return _plain(prompts[:limit], seeds, {"category": str(source)})
    if kind == "geneval":
        recs = read_geneval(Path(source))[:limit]
        return [
            TaskItem(r["prompt"], s, f"{i:05d}/samples/{k:04d}.png", {"index": i, "metadata": r})
            for i, r in enumerate(recs)
            for k, s in enumerate(seeds)
        ]
    rows = read_parti(Path(source))[:limit]
    return [
        TaskItem(
            r["Prompt"].strip(),
            s,
            f"{i:05d}_{_slug(r['Prompt'])}/seed{s:04d}.png",
            {"index": i, "category": r.get("Category"), "challenge": r.get("Challenge")},
        )  # fmt: skip
        for i, r in enumerate(rows)
        for s in seeds
    ]


def _t2i_compbench(path: Path, prompts: list[str], seeds: list[int]) -> list[TaskItem]:
    for n, p in enumerate(prompts, 1):
        bad = next((c for c in ("/", "_", "\\", "\0") if c in p), None)
        if bad is not None:
            raise TaskError(
                f"{path}: prompt {n} contains {bad!r}, which T2I-CompBench's file names cannot hold"
            )
        if len(f"{p}_000000.png".encode()) > 255:
            raise TaskError(f"{path}: prompt {n} is too long for a file name ({len(p.encode())} bytes)")
    return [
        TaskItem(p, s, f"samples/{p}_{i * len(seeds) + k:06d}.png", {"index": i})
        for i, p in enumerate(prompts)
        for k, s in enumerate(seeds)
    ]


def write_geneval_metadata(items: list[TaskItem], out_dir: Path) -> None:
    """GenEval's ``<index>/metadata.jsonl`` next to each prompt's ``samples/``."""
    seen = set()
    for it in items:
        i = it.meta.get("index")
        if i in seen or "metadata" not in it.meta:
            continue
        seen.add(i)
        atomic_write_text(out_dir / f"{i:05d}" / "metadata.jsonl", json.dumps(it.meta["metadata"]) + "\n")

"""Ranked galleries -> pairwise preference data (one JSONL line per (better, worse) pair).

Every ranked record gives one pair per two models at different places (models tied in
``rank_ties`` give none). A line::

    {"aspect", "index", "prompt", "better": path, "worse": path,
     "better_model", "worse_model", "split"[, "decided_by"]}

``decided_by`` is set for galleries ranked by the exact world evaluator (``rank auto``, source
``auto:world``): ``evaluator`` when the two images' verdicts (passes every clause, fraction of
clauses) differ, ``tie_break`` when only the tie-break (world-clip) ordered them. With
``decided_only`` the tie-break pairs are left out (counted in ``tie_break_skipped``).

``split`` is decided per prompt, never per pair, so a prompt's pairs are all on one side:
``heldout`` when the prompt is a world prompt whose scene is held out in the world suites
(`world.suites.is_heldout`, by meaning: every wording of a held-out scene), else ``train``; a
prompt outside the world grammar is held out when a hash of its text falls in the lowest 10%.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..gallery.format import Gallery, GalleryError, gallery_dir, load_gallery
from ..io import atomic_write_text
from ..ranking.order import ranked_pairs
from ..world.grammar import PromptError, parse_prompt
from ..world.suites import is_heldout

OTHER_HELDOUT_FRACTION = 0.10


def prompt_split(prompt: str) -> str:
    """``heldout`` / ``train`` for a prompt (world prompts by the suites' rule, others by hash)."""

    try:
        scene = parse_prompt(prompt)
    except PromptError:
        h = int.from_bytes(hashlib.sha256(f"pairs|{prompt.strip()}".encode()).digest()[:8], "big")
        return "heldout" if h / 2**64 < OTHER_HELDOUT_FRACTION else "train"
    return "heldout" if is_heldout(scene) else "train"


EVALUATOR_KEYS = 2  # auto:world sort keys that are the evaluator's verdict (passed, clause fraction)


def _verdicts(g: Gallery, index: int) -> dict[str, tuple] | None:
    """model -> the exact evaluator's verdict keys, for a record ranked by ``rank auto --judge world``."""
    info = g.ranks.get("records", {}).get(str(index), {})
    scores = info.get("scores")
    if info.get("source") != "auto:world" or not isinstance(scores, dict):
        return None
    return {m: tuple(v[:EVALUATOR_KEYS]) for m, v in scores.items()}


def gallery_pairs(
    g: Gallery, paths: str = "absolute", out_dir: Path | None = None, decided_only: bool = False
) -> tuple[list[dict], dict]:
    """Pairs of one gallery and its counts (records ranked / unranked, pairs, tied pairs skipped,
    tie-break pairs skipped)."""
    if g.aspect is None:
        raise GalleryError(f"{g.meta_file}: field aspect is not set; pairs need the gallery's aspect")
    rows = []
    counts = {"records": 0, "unranked": 0, "pairs": 0, "tied_skipped": 0, "tie_break_skipped": 0,
              "train": 0, "heldout": 0}  # fmt: skip

    def where(p: str) -> str:
        f = (g.root / p).resolve()
        if paths == "relative" and out_dir is not None:
            return Path(os.path.relpath(f, out_dir.resolve())).as_posix()
        return str(f)

    for r in g.records:
        tiers = g.tiers(r)
        if tiers is None:
            counts["unranked"] += 1
            continue
        counts["records"] += 1
        split = prompt_split(r.prompt)
        n = len(r.models)
        pairs = ranked_pairs(tiers)
        counts["tied_skipped"] += n * (n - 1) // 2 - len(pairs)
        verdicts = _verdicts(g, r.index)
        for better, worse in pairs:
            row = {
                "aspect": g.aspect,
                "index": r.index,
                "prompt": r.prompt,
                "better": where(r.images[better]),
                "worse": where(r.images[worse]),
                "better_model": better,
                "worse_model": worse,
                "split": split,
            }
            if verdicts is not None and better in verdicts and worse in verdicts:
                row["decided_by"] = "evaluator" if verdicts[better] != verdicts[worse] else "tie_break"
                if decided_only and row["decided_by"] == "tie_break":
                    counts["tie_break_skipped"] += 1
                    continue
            rows.append(row)
            counts[split] += 1
            counts["pairs"] += 1
    return rows, counts


def make_pairs(
    galleries: Sequence[str | Path], out: str | Path, paths: str = "absolute", decided_only: bool = False
) -> dict[str, dict]:
    """Write the pairs of every gallery to `out` (JSONL, atomically); returns counts per aspect.
    `decided_only`: leave out the pairs only a tie-break ordered (see ``decided_by``)."""

    if paths not in ("absolute", "relative"):
        raise GalleryError(f"unknown --paths {paths!r}; expected absolute or relative")
    out = Path(out)
    if out.is_dir():
        raise GalleryError(f"{out}: --out must be a file name, and a folder of that name exists")
    loaded = [load_gallery(gallery_dir(p)) for p in galleries]  # check everything before writing
    if not loaded:
        raise GalleryError("no galleries given")
    rows: list[dict] = []
    per_aspect: dict[str, dict] = {}
    for g in loaded:
        got, counts = gallery_pairs(g, paths, out.parent, decided_only)
        rows += got
        agg = per_aspect.setdefault(g.aspect, {k: 0 for k in counts} | {"galleries": 0})
        for k, v in counts.items():
            agg[k] += v
        agg["galleries"] += 1
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return per_aspect

"""Stage 3, ``pairs``: ``iter_<k>/pairs/<aspect>.jsonl`` from each ranked gallery, split by prompt
(held-out prompts give held-out pairs)."""

from __future__ import annotations

from ...gallery.format import GalleryError
from ...pairs.make import make_pairs
from ..state import IterateError, plain
from ..workspace import Workspace


def no_train_pairs_message(k: int, aspect: str, counts: dict) -> str:
    """Why an iteration's gallery gave no train pairs, from `pairs.make`'s counts."""
    head = f"iteration {k}, {aspect}: no train pairs"
    if counts.get("heldout"):
        return (
            f"{head}: every one of its {counts['heldout']} pair(s) comes from held-out prompts, which are "
            "never trained on (the split is by prompt); give the gallery more prompts, or train-split ones"
        )
    if counts.get("tie_break_skipped"):
        return (
            f"{head}: the only {counts['tie_break_skipped']} pair(s) were ordered by the tie-break alone, "
            f"and pairs_decided_only leaves those out ({counts['tied_skipped']} tied pairs skipped); "
            "pass --no-pairs-decided-only, or use models that differ"
        )
    return (
        f"{head} ({counts['pairs']} pairs, {counts['tied_skipped']} tied pairs skipped): the gallery models "
        "are tied on every train record; use models that differ, more prompts, or --tie-break world-clip"
    )


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    return plain(
        {
            "aspects": c.aspects,
            "split": "by prompt (world suites' held-out rule)",
            "decided_only": c.decided_pairs,
        }
    )


def run(ws: Workspace, k: int) -> dict:
    out = {}
    for aspect in ws.config.aspects:
        f = ws.pairs_file(k, aspect)
        f.parent.mkdir(parents=True, exist_ok=True)
        try:
            counts = make_pairs([ws.gallery_dir(k, aspect)], f, "relative", ws.config.decided_pairs)[aspect]
        except GalleryError as e:
            raise IterateError(str(e)) from None
        if counts["train"] == 0:
            raise IterateError(no_train_pairs_message(k, aspect, counts))
        ws.log(
            f"  {aspect}: {counts['pairs']} pairs (train {counts['train']}, "
            f"held-out {counts['heldout']}); {counts['tied_skipped']} tied pairs skipped"
        )
        out[aspect] = {"file": ws.rel(f), **counts}
    return out

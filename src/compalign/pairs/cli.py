"""``compalign pairs GALLERY... --out pairs.jsonl``: ranked galleries -> pairwise preference lines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._cli import fail
from ..gallery.format import GalleryError


def pairs_command(
    galleries: Annotated[list[Path], typer.Argument(help="Gallery folders (one per aspect, or several).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    paths: Annotated[
        str, typer.Option("--paths", help="Image paths: absolute, or relative to the --out file's folder.")
    ] = "absolute",
    decided_only: Annotated[
        bool,
        typer.Option(
            "--decided-only/--with-tie-breaks",
            help="Galleries ranked by the world evaluator: keep only the pairs whose evaluator verdicts "
            "differ (drop those only the world-clip tie-break ordered).",
        ),
    ] = False,
) -> None:
    """Every ranked (better, worse) pair of every record -> one JSONL line; ties are skipped; the
    split (train / heldout) goes by prompt, never by pair."""
    from .make import make_pairs  # lazy: loads scipy (compalign.world)

    try:
        per_aspect = make_pairs(galleries, out, paths, decided_only)
    except GalleryError as e:
        fail(str(e))
    total = 0
    for aspect, c in per_aspect.items():
        total += c["pairs"]
        print(
            f"{aspect}: {c['pairs']} pairs (train {c['train']}, heldout {c['heldout']}) from {c['records']} "
            f"ranked records; {c['tied_skipped']} tied pairs skipped; "
            + (f"{c['tie_break_skipped']} tie-break pairs skipped; " if decided_only else "")
            + f"{c['unranked']} unranked records"
        )
    print(f"wrote {total} pairs to {out}")

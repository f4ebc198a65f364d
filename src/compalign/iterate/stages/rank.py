"""Stage 2, ``rank``: ``auto``: every gallery record ranked by the exact world evaluator
(``ranking.auto``); ``people``: people's rankings (``rank serve``) are exported, and the run stops,
saying what to serve, until every record is ranked."""

from __future__ import annotations

from ...gallery.format import GalleryError, load_gallery
from ...ranking.auto import rank_gallery
from ...ranking.people import export_people, open_store, valid_jobs
from ...ranking.store import DB_FILE
from ..state import IterateError, WaitingForPeople
from ..workspace import Workspace

JUDGE = "world"
"""The judge of ``auto`` ranking."""


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    if c.rank == "people":
        return {"mode": "people"}
    return {"mode": "auto", "judge": JUDGE, "tie_break": c.tie_break}


def run(ws: Workspace, k: int) -> dict:
    c = ws.config
    if c.rank == "people":
        return _people(ws, k)
    out = {}
    for aspect in c.aspects:
        try:
            g = load_gallery(ws.gallery_dir(k, aspect))
            s = rank_gallery(g, JUDGE, c.tie_break, workers=c.workers, device=c.device, progress=c.progress)
        except GalleryError as e:
            raise IterateError(str(e)) from None
        for n in s["notes"]:
            ws.log(f"  note: {n}")
        ws.log(f"  {aspect}: ranked {s['records']} records ({s['tie_groups']} tie groups)")
        out[aspect] = {k2: s[k2] for k2 in ("records", "tie_groups", "tie_break", "notes")}
    return out


def _people(ws: Workspace, k: int) -> dict:
    """Export people's rankings into the galleries; `WaitingForPeople` while some are unranked."""
    out, waiting = {}, []
    for aspect in ws.config.aspects:
        gdir = ws.gallery_dir(k, aspect)
        g = load_gallery(gdir)
        summary = None
        if (gdir / DB_FILE).is_file():
            store = open_store(g)
            before = [(r.rank, g.ties(r.index)) for r in g.records]
            summary = export_people(g, store, save=False)
            if [(r.rank, g.ties(r.index)) for r in g.records] != before:
                g.add_history("rank-export", exported=summary["exported"], by="iterate")
                g.save()
                ws.log(f"  {aspect}: exported people's rankings ({summary['exported']} records)")
            pending = len(valid_jobs(g, store))
        else:
            pending = 0
        unranked = sum(r.rank is None for r in g.records)
        if unranked:
            waiting.append((aspect, gdir, unranked, len(g.records)))
        out[aspect] = {
            "records": len(g.records),
            "annotators": summary["annotators"] if summary else [],
            "agreement_mean_tau": (summary or {}).get("agreement", {}).get("mean_tau"),
            "insertion_jobs": pending,
        }
    if waiting:
        lines = [
            f"waiting for people's rankings of iteration {k} "
            f"({', '.join(f'{a}: {u} of {n} records unranked' for a, _, u, n in waiting)}).",
            "Rank them in the browser, one gallery at a time (any number of annotators):",
        ]
        lines += [f"  compalign rank serve {d}" for _, d, _, _ in waiting]
        lines.append(
            "then run this same `compalign iterate` command again: it exports the rankings (Borda count) "
            "and continues once every record is ranked."
        )
        raise WaitingForPeople("\n".join(lines))
    return out

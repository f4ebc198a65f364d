"""Stage 8, ``report``: ``iter_<k>/report.md``, ``plots/*.png``, ``summary.json`` and the work
folder's index ``<workdir>/report.md`` (``iterate/report.py``)."""

from __future__ import annotations

from ..report import write_report
from ..workspace import Workspace


def settings(ws: Workspace, k: int) -> dict:
    return {}


def run(ws: Workspace, k: int) -> dict:
    out = write_report(ws, k)
    ws.log(f"  {ws.rel(out['report'])} (+ {len(out['plots'])} plots)")
    return out

"""People's rankings: each annotator's complete orders, aggregation into the gallery, agreement.

An annotator's order of a record is their latest full ranking over the record's current models,
or, for a record with an insertion job (after ``gallery expand``), the job's base order with the
new models placed by their answers, whichever is newer. `export_people` aggregates the orders of
every annotator of a record by Borda count (`order.borda`: one point per model placed strictly
below, half a point per other member of the own tier; equal totals share a place, stored as
explicit ties) and writes ``rank`` (plus the sidecar's ``rank_ties``, ``annotators`` and
``borda`` points). Records nobody has ranked keep what they had. Agreement: mean pairwise
Kendall tau-b between annotators over the records both ranked (`order.kendall_agreement`).
"""

from __future__ import annotations

from ..gallery.format import Gallery, Record
from .order import RankError, Tiers, binary_insertion, borda, kendall_agreement
from .store import DB_FILE, Job, RankingStore


def open_store(g: Gallery) -> RankingStore:
    return RankingStore(g.root / DB_FILE)


def valid_jobs(g: Gallery, store: RankingStore) -> dict[int, Job]:
    """Active insertion jobs whose models still fit their record (the newest per record)."""
    by_index = g.by_index()
    out: dict[int, Job] = {}
    for job in store.jobs():
        r = by_index.get(job.index)
        if r is None:
            continue
        base = [m for t in job.base for m in t]
        if sorted(base + job.new_models) == sorted(r.models):
            out[job.index] = job
    return out


def annotator_orders(
    g: Gallery, store: RankingStore, annotator: str | None = None
) -> dict[str, dict[int, tuple[Tiers, float, str]]]:
    """``orders[annotator][record index] = (tiers, time, kind)`` for complete orders only."""
    models_of = {r.index: r.models for r in g.records}
    out: dict[str, dict[int, tuple[Tiers, float, str]]] = {}
    for a, recs in store.latest(models_of, annotator).items():
        for i, rk in recs.items():
            out.setdefault(a, {})[i] = (rk.tiers(), rk.created, "ranking")
    by_job: dict[int, list[tuple[str, list]]] = {}
    for (job_id, a), rows in store.all_answers(annotator).items():
        by_job.setdefault(job_id, []).append((a, rows))
    for i, job in valid_jobs(g, store).items():
        for a, rows in by_job.get(job.id, []):
            try:
                state = binary_insertion(job.base, job.new_models, [o for _, o in rows])
            except RankError:  # answers that no longer fit the job (an edited database): not complete
                continue
            t = rows[-1][0]
            if state.done:
                cur = out.get(a, {}).get(i)
                if cur is None or cur[1] < t:
                    out.setdefault(a, {})[i] = (state.tiers, t, "insertion")
    return out


def export_people(g: Gallery, store: RankingStore | None = None, save: bool = True) -> dict:
    """Write Borda-aggregated people's ranks into the gallery; returns a summary with agreement."""
    store = store or open_store(g)
    orders = annotator_orders(g, store)
    per_record: dict[int, list[tuple[str, Tiers]]] = {}
    for a, recs in orders.items():
        for i, (tiers, _, _) in recs.items():
            per_record.setdefault(i, []).append((a, tiers))
    exported = 0
    for r in g.records:
        got = per_record.get(r.index)
        if not got:
            continue
        tiers, points = borda([t for _, t in got], r.models)
        g.set_tiers(
            r,
            tiers,
            annotators=sorted(a for a, _ in got),
            borda={m: points[m] for m in r.models},
            source="people",
        )
        exported += 1
    jobs = valid_jobs(g, store)
    waiting = sorted(i for i in jobs if i not in per_record)
    agreement = kendall_agreement({a: {i: t for i, (t, _, _) in recs.items()} for a, recs in orders.items()})
    g.ranks.update(
        method="people",
        aggregation=(
            "Borda count over annotators (points: models placed strictly below + half the other "
            "members of the own tier); equal totals share a place (rank_ties)"
        ),
        agreement=agreement,
        store_rankings_at_export=store.count(),
    )
    summary = {
        "records": len(g.records),
        "exported": exported,
        "annotators": sorted(orders),
        "waiting_for_comparisons": waiting,
        "unranked": sum(r.rank is None for r in g.records),
        "agreement": agreement,
    }
    if save:
        g.add_history("rank-export", exported=exported, annotators=len(orders))
        g.save()
    return summary


def task_list(g: Gallery, store: RankingStore, annotator: str) -> list[tuple[Record, Job | None, bool]]:
    """(record, its insertion job or None, complete for this annotator) in gallery order."""
    jobs = valid_jobs(g, store)
    done = annotator_orders(g, store, annotator).get(annotator, {})
    return [(r, jobs.get(r.index), r.index in done) for r in g.records]

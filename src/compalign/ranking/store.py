"""People's rankings in SQLite (``GALLERY/rankings.sqlite``), safe for several annotators at once.

Tables

- ``rankings``: one row per save of a full ranking: annotator, time, record index, the record's
  models at the time, the order (model names, best first) and the ties (groups of names). Rows are
  never changed; an annotator's latest row for a record is their ranking.
- ``insertion_jobs``: written by ``gallery expand`` for people-ranked galleries: per record the
  base order (tiers of the old models, from the gallery's rank) and the new models to insert.
- ``comparisons``: one answer of an annotator to a "new vs. existing" question of a job (step
  number, the two models, ``new`` / ``existing`` / ``tie``); ``undone`` marks answers taken back.
  Replaying an annotator's answers with `order.binary_insertion` gives their next question or
  their full order.

Every connection uses WAL journaling and a busy timeout; writes run in ``BEGIN IMMEDIATE``
transactions, so concurrent saves wait for each other instead of failing or being lost.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .order import Insertion, Tiers, binary_insertion

DB_FILE = "rankings.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rankings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    annotator TEXT NOT NULL,
    created REAL NOT NULL,
    record_index INTEGER NOT NULL,
    models TEXT NOT NULL,
    ranking TEXT NOT NULL,
    ties TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rankings_by_record ON rankings (record_index, annotator);
CREATE TABLE IF NOT EXISTS insertion_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_index INTEGER NOT NULL,
    created REAL NOT NULL,
    base TEXT NOT NULL,
    new_models TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    annotator TEXT NOT NULL,
    created REAL NOT NULL,
    record_index INTEGER NOT NULL,
    job_id INTEGER NOT NULL REFERENCES insertion_jobs (id),
    step INTEGER NOT NULL,
    new_model TEXT NOT NULL,
    existing_model TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('new', 'existing', 'tie')),
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS comparisons_by_job ON comparisons (job_id, annotator);
"""


class StaleError(ValueError):
    """An answer to a question that is no longer the annotator's current one."""


@dataclass(frozen=True)
class Ranking:
    annotator: str
    created: float
    index: int
    models: list[str]
    order: list[str]
    ties: list[list[str]]

    def tiers(self) -> Tiers:
        group = {m: k for k, g in enumerate(self.ties) for m in g}
        tiers: Tiers = []
        last = None
        for m in self.order:
            k = group.get(m)
            if k is not None and k == last:
                tiers[-1].append(m)
            else:
                tiers.append([m])
            last = k
        return tiers


@dataclass(frozen=True)
class Job:
    id: int
    index: int
    base: Tiers
    new_models: list[str]


class RankingStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.connect() as con:
            con.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------ full rankings
    def add_ranking(
        self, annotator: str, index: int, models: list[str], order: list[str], ties: list[list[str]]
    ):
        with self.transaction() as con:
            con.execute(
                "INSERT INTO rankings (annotator, created, record_index, models, ranking, ties) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    annotator,
                    time.time(),
                    index,
                    json.dumps(sorted(models)),
                    json.dumps(order),
                    json.dumps(ties),
                ),
            )

    def rankings(self, annotator: str | None = None, index: int | None = None) -> list[Ranking]:
        """Every saved ranking (oldest first), optionally of one annotator and/or record."""
        q, args = "SELECT annotator, created, record_index, models, ranking, ties FROM rankings", []
        cond = []
        if annotator is not None:
            cond.append("annotator = ?")
            args.append(annotator)
        if index is not None:
            cond.append("record_index = ?")
            args.append(index)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY id"
        with self.connect() as con:
            rows = con.execute(q, args).fetchall()
        return [Ranking(a, t, i, json.loads(m), json.loads(o), json.loads(ti)) for a, t, i, m, o, ti in rows]

    def latest(
        self, models_of: dict[int, list[str]], annotator: str | None = None
    ) -> dict[str, dict[int, Ranking]]:
        """Per annotator and record, the latest ranking over the record's current models."""
        out: dict[str, dict[int, Ranking]] = {}
        for r in self.rankings(annotator):
            cur = models_of.get(r.index)
            if cur is not None and sorted(cur) == r.models:
                out.setdefault(r.annotator, {})[r.index] = r
        return out

    def count(self) -> int:
        with self.connect() as con:
            return con.execute("SELECT COUNT(*) FROM rankings").fetchone()[0]

    # ------------------------------------------------------------------ insertion jobs
    def add_jobs(self, jobs: list[tuple[int, Tiers, list[str]]]) -> None:
        """New insertion jobs (record index, base tiers, new models); older jobs of those records end."""
        now = time.time()
        with self.transaction() as con:
            for index, base, new in jobs:
                con.execute("UPDATE insertion_jobs SET active = 0 WHERE record_index = ?", (index,))
                con.execute(
                    "INSERT INTO insertion_jobs (record_index, created, base, new_models) "
                    "VALUES (?, ?, ?, ?)",
                    (index, now, json.dumps(base), json.dumps(new)),
                )

    def jobs(self, active_only: bool = True) -> list[Job]:
        q = "SELECT id, record_index, base, new_models FROM insertion_jobs"
        if active_only:
            q += " WHERE active = 1"
        with self.connect() as con:
            rows = con.execute(q + " ORDER BY record_index, id").fetchall()
        return [Job(i, r, json.loads(b), json.loads(n)) for i, r, b, n in rows]

    def job(self, job_id: int) -> Job | None:
        with self.connect() as con:
            row = con.execute(
                "SELECT id, record_index, base, new_models FROM insertion_jobs WHERE id = ? AND active = 1",
                (job_id,),
            ).fetchone()
        return Job(row[0], row[1], json.loads(row[2]), json.loads(row[3])) if row else None

    @staticmethod
    def _answers(con: sqlite3.Connection, job_id: int, annotator: str) -> list[tuple[float, str]]:
        return con.execute(
            "SELECT created, outcome FROM comparisons WHERE job_id = ? AND annotator = ? AND undone = 0 "
            "ORDER BY step, id",
            (job_id, annotator),
        ).fetchall()

    def insertion_state(self, job: Job, annotator: str) -> tuple[Insertion, float | None]:
        """Replay the annotator's answers: (state, time of the last answer)."""
        with self.connect() as con:
            rows = self._answers(con, job.id, annotator)
        state = binary_insertion(job.base, job.new_models, [o for _, o in rows])
        return state, (rows[-1][0] if rows else None)

    def all_answers(self, annotator: str | None = None) -> dict[tuple[int, str], list[tuple[float, str]]]:
        """Every standing answer, ``{(job id, annotator): [(time, outcome), ...]}`` in step order."""
        q = "SELECT job_id, annotator, created, outcome FROM comparisons WHERE undone = 0"
        args: list = []
        if annotator is not None:
            q += " AND annotator = ?"
            args.append(annotator)
        with self.connect() as con:
            rows = con.execute(q + " ORDER BY job_id, annotator, step, id", args).fetchall()
        out: dict[tuple[int, str], list[tuple[float, str]]] = {}
        for job_id, a, t, o in rows:
            out.setdefault((job_id, a), []).append((t, o))
        return out

    def annotators_of(self, job: Job) -> list[str]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT annotator FROM comparisons WHERE job_id = ? AND undone = 0", (job.id,)
            ).fetchall()
        return sorted(a for (a,) in rows)

    def answer(self, job: Job, annotator: str, step: int, new: str, existing: str, outcome: str) -> Insertion:
        """Store an answer if it answers the annotator's current question of `job` (else `StaleError`)."""
        with self.transaction() as con:
            answers = [o for _, o in self._answers(con, job.id, annotator)]
            state = binary_insertion(job.base, job.new_models, answers)
            q = state.question
            if q is None:
                raise StaleError("this record's comparisons are already complete")
            if (q.step, q.new, q.existing) != (step, new, existing):
                raise StaleError(
                    f"not the current question (expected step {q.step}: {q.new} vs {q.existing}); reload"
                )
            con.execute(
                "INSERT INTO comparisons (annotator, created, record_index, job_id, step, new_model, "
                "existing_model, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (annotator, time.time(), job.index, job.id, step, new, existing, outcome),
            )
            return binary_insertion(job.base, job.new_models, [*answers, outcome])

    def undo(self, job: Job, annotator: str) -> bool:
        """Take back the annotator's last answer of `job` (kept in the table, marked undone)."""
        with self.transaction() as con:
            row = con.execute(
                "SELECT id FROM comparisons WHERE job_id = ? AND annotator = ? AND undone = 0 "
                "ORDER BY step DESC, id DESC LIMIT 1",
                (job.id, annotator),
            ).fetchone()
            if row is None:
                return False
            con.execute("UPDATE comparisons SET undone = 1 WHERE id = ?", (row[0],))
            return True

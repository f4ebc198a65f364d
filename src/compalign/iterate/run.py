"""`IterateRun`: one invocation of ``compalign iterate``: it validates the config, locks the work
folder, checks every recorded stage's settings, redoes forced stages (removing their outputs), then
runs the stages of each iteration in `STAGES` order, skipping finished ones and recording each in
``state.json`` (status, settings, outputs, time)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..ranking.store import DB_FILE
from .config import STAGES, IterateConfig
from .eval_store import evaluate_model
from .reward_check import reward_check
from .stages import MODULES
from .state import IterateError, State, WaitingForPeople, locked, now, plain
from .validate import stage_ref, validate
from .workspace import Workspace


@dataclass
class Outcome:
    status: str
    """``done`` (every iteration finished), ``stopped`` (`stop_after`) or ``waiting`` (people)."""
    message: str
    ran: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    report: Path | None = None


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class IterateRun(Workspace):
    """One invocation: the work folder (`Workspace`) and the loop over its iterations and stages."""

    def settings(self, k: int, stage: str) -> dict:
        """What ``state.json`` records of (k, stage); a change is a conflict once it ran."""
        return MODULES[stage].settings(self, k)

    def run(self) -> Outcome:
        validate(self.config)
        with locked(self.root):
            self.state = State(self.root)
            self.state.data["config"] = self.config.to_dict()
            self.state.save()
            return self._loop()

    def _loop(self) -> Outcome:
        c, state = self.config, self.state
        forced = self._forced()
        stop = stage_ref(c.stop_after, "--stop-after") if c.stop_after else None
        ran: list[tuple[int, str]] = []
        skipped: list[tuple[int, str]] = []
        n = c.iterations
        # every recorded stage before the first forced one must have the current settings (checked
        # before any work)
        first_forced = min(forced, key=lambda ks: (ks[0], STAGES.index(ks[1])), default=None)
        for k in range(1, n + 1):
            for stage in STAGES:
                if first_forced is not None and (k, STAGES.index(stage)) >= (
                    first_forced[0],
                    STAGES.index(first_forced[1]),
                ):
                    break
                self._check_settings(k, stage)
        for k in range(1, n + 1):
            for stage in STAGES:
                tag = f"[iterate {k}/{n}] {stage}"
                settings = self.settings(k, stage)
                if (k, stage) in forced:
                    forced.discard((k, stage))
                    self._invalidate(k, stage)
                entry = self._check_settings(k, stage)
                if entry is not None and entry.get("status") == "done":
                    skipped.append((k, stage))
                    self.log(f"{tag}: done earlier, skipped")
                else:
                    resumed = entry is not None
                    self.log(f"{tag}: {'resuming' if resumed else 'starting'}")
                    try:
                        self._run_stage(k, stage, settings, entry)
                    except WaitingForPeople as w:
                        return Outcome("waiting", str(w), ran, skipped)
                    ran.append((k, stage))
                    secs = state.entry(k, stage)["last_session_s"]
                    self.log(f"{tag}: done in {secs:.1f} s")
                if (
                    stop is not None
                    and stage == stop[1]
                    and (stop[0] == k or (stop[0] is None and (k, stage) in ran))
                ):
                    msg = (
                        f"stopped after iteration {k}, stage {stage} (--stop-after); run the same command "
                        "without --stop-after to continue"
                    )
                    self.log(f"[iterate] {msg}")
                    return Outcome("stopped", msg, ran, skipped)
        report = self.iter_dir(n) / "report.md"
        msg = f"{n} iteration(s) done in {self.root}; report: {report}"
        if not ran:
            msg = f"nothing to do: {n} iteration(s) already done in {self.root}; report: {report}"
        self.log(f"[iterate] {msg}")
        return Outcome("done", msg, ran, skipped, report)

    def _check_settings(self, k: int, stage: str) -> dict | None:
        """The state's entry of (k, stage); an `IterateError` when it ran with other settings."""
        entry = self.state.entry(k, stage)
        settings = self.settings(k, stage)
        if entry is not None and entry.get("settings") != settings:
            what = "finished" if entry.get("status") == "done" else "was started"
            raise IterateError(
                f"iteration {k}, stage {stage} {what} with other settings "
                f"({'; '.join(_diff(entry.get('settings') or {}, settings))}); run with the settings "
                f"it used, or add --force-stage {k}:{stage} to redo it and every stage after it "
                "(their outputs are removed)"
            )
        return entry

    def _forced(self) -> set[tuple[int, str]]:
        out = set()
        for text in self.config.force_stages:
            k, stage = stage_ref(text, "--force-stage")
            out.add((k or self.config.iterations, stage))
        return out

    def _invalidate(self, k: int, stage: str) -> None:
        """Forget (k, stage) and everything after it, and remove their outputs."""
        targets = []
        for s in STAGES[STAGES.index(stage) :]:
            targets += self.stage_paths(k, s)
        recorded = {int(j) for j in self.state.data["iterations"]}
        on_disk = {int(p.name[5:]) for p in self.root.glob("iter_*") if p.name[5:].isdigit()}
        targets += [self.iter_dir(j) for j in sorted(recorded | on_disk) if j > k]
        for t in targets:
            if t.is_dir() and any(t.rglob(DB_FILE)):
                raise IterateError(
                    f"--force-stage {k}:{stage} would remove {t}, which holds people's rankings "
                    f"({DB_FILE}); move it out of the work folder first"
                )
        for t in targets:
            if t.is_dir():
                shutil.rmtree(t)
            elif t.exists():
                t.unlink()
        gone = self.state.drop_from(k, stage)
        self.log(
            f"[iterate {k}] {stage}: forced; redoing it"
            + (f" and {len(gone) - 1} later stage(s)" if len(gone) > 1 else "")
        )

    def _run_stage(self, k: int, stage: str, settings: dict, entry: dict | None) -> None:
        state = self.state
        spent = float((entry or {}).get("seconds", 0.0))
        entry = {
            "status": "running",
            "settings": settings,
            "started": (entry or {}).get("started", now()),
            "sessions": int((entry or {}).get("sessions", 0)) + 1,
            "seconds": spent,
        }
        state.put(k, stage, entry)
        t0 = time.perf_counter()
        status = "running"
        try:
            outputs = MODULES[stage].run(self, k)
            status = "done"
        except WaitingForPeople:
            status = "waiting"
            raise
        finally:
            dt = time.perf_counter() - t0
            entry.update(status=status, seconds=round(spent + dt, 2), last_session_s=round(dt, 2))
            if status == "done":
                entry.update(outputs=plain(outputs), finished=now())
            state.put(k, stage, entry)

    # the evaluation and the reward check as methods (scripts call them on a finished work folder)
    def _evaluate(self, name: str, spec: str, per_category: int, generate=None, gen=None, keep_images=None):
        return evaluate_model(self, name, spec, per_category, generate, gen, keep_images)

    def _reward_check(self, k: int, files: dict[str, Path] | None = None) -> dict:
        return reward_check(self, k, files)


def run_iterate(config: IterateConfig, log: Callable[[str], None] | None = None) -> Outcome:
    """Run (or continue) the loop described by `config` (see the package doc)."""
    return IterateRun(config, log).run()

"""`Workspace`: one work folder under one `IterateConfig`: where each stage of each iteration
writes, how paths are recorded (relative to the work folder), and which base an iteration starts
from. The stages, the evaluation store, the reward check and the report read it; `IterateRun`
(``run.py``) adds the loop over the stages."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ..cache import scene_pool_dir
from ..gallery.generate import default_model_name
from .config import IterateConfig, base_name
from .state import State


def abs_spec(spec: str) -> str:
    """A generator spec with a local folder made absolute (the work folder outlives the cwd)."""
    p = Path(spec)
    return str(p.resolve()) if p.exists() else spec


def note(message: str) -> None:
    """The default log: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


class Workspace:
    """The config, the work folder, its state (set while the loop holds the folder) and the log."""

    def __init__(self, config: IterateConfig, log: Callable[[str], None] | None = None):
        self.config = config
        self.root = Path(config.workdir)
        self.log = log or note
        self.state: State | None = None

    def iter_dir(self, k: int) -> Path:
        return self.root / f"iter_{k}"

    def gallery_dir(self, k: int, aspect: str) -> Path:
        return self.iter_dir(k) / "gallery" / aspect

    def pairs_file(self, k: int, aspect: str) -> Path:
        return self.iter_dir(k) / "pairs" / f"{aspect}.jsonl"

    def reward_run(self, k: int, aspect: str) -> Path:
        return self.iter_dir(k) / "rewards" / aspect

    def base_dir(self, k: int) -> Path:
        return self.iter_dir(k) / "base"

    def rel(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(p)

    def spec_label(self, spec: str) -> str:
        """How a generator spec is recorded: local folders relative to the work folder."""
        return self.rel(spec) if Path(spec).exists() else spec

    def abs(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p).resolve()

    def pool_dir(self) -> Path:
        pool = self.config.feedback_training.pool_dir
        return Path(pool) if pool else scene_pool_dir()

    def current_base(self, k: int) -> tuple[str, str, str]:
        """(name, spec to load, spec as recorded) of the base fine-tuned in iteration k."""
        if k == 1:
            return default_model_name(self.config.base), abs_spec(self.config.base), self.config.base
        return base_name(k - 1), str(self.base_dir(k - 1).resolve()), f"iter_{k - 1}/base"

    def reward_model(self, k: int, aspect: str) -> Path:
        """The reward model of `aspect` trained in iteration k (from the rewards stage's outputs)."""
        return self.abs(self.state.outputs(k, "rewards")[aspect]["model"])

    def stage_paths(self, k: int, stage: str) -> list[Path]:
        """What a stage of iteration k writes (removed when it is forced to run again)."""
        d = self.iter_dir(k)
        return {
            "gallery": [d / "gallery"],
            "rank": [],
            "pairs": [d / "pairs"],
            "rewards": [d / "rewards"],
            "feedback": [d / "feedback", d / "raft", d / "base"],
            "evaluate": [d / "eval"],
            "reno": [d / "reno"],
            "report": [d / "report.md", d / "plots", d / "summary.json"],
        }[stage]

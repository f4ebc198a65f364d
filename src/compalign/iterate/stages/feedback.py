"""Stage 5, ``feedback``: ReFL training of the current base against the weighted aspect reward
models, with the regulariser (``iter_<k>/feedback/``), or (``feedback_method`` ``raft``) RAFT: the
reward models pick each train prompt's best image of the iteration's galleries and the base learns
them (``iter_<k>/raft/``); the result is ``iter_<k>/base``."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

from ...feedback.config import FeedbackConfig, RaftConfig
from ...feedback.raft import train_raft
from ...feedback.train import feedback_config_diff, train_feedback
from ..config import base_name
from ..state import IterateError, IterateInterrupted, plain
from ..workspace import Workspace


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    if c.feedback_method == "raft":
        name = "raft_training"
        return plain(
            {
                "method": "raft",
                "base": ws.current_base(k)[2],
                **c.recorded(name),
                "seed": c.seed,
                **c.changed(name),
            }
        )
    name = "feedback_training"
    return plain(
        {
            "base": ws.current_base(k)[2],
            "weights": {a: c.weight(a) for a in c.aspects},
            **c.recorded(name),
            "seed": c.seed,
            **c.changed(name),
        }
    )


def feedback_config(ws: Workspace, k: int) -> FeedbackConfig:
    """The `FeedbackConfig` of iteration k, `feedback_training` with its per-run fields set: the
    current base against iteration k's reward models."""
    c = ws.config
    terms = c.objective({a: ws.reward_model(k, a) for a in c.aspects})
    return replace(
        c.feedback_training,
        name=base_name(k),
        base=ws.current_base(k)[1],
        output_dir=str((ws.iter_dir(k) / "feedback").resolve()),
        rewards={t.spec: t.weight for t in terms},
        aspects=list(c.aspects),
        pool_dir=str(ws.pool_dir().resolve()),
        seed=c.seed,
        num_threads=c.num_threads,
        device=c.device,
        progress=c.progress,
    )


def raft_config(ws: Workspace, k: int) -> RaftConfig:
    """The `RaftConfig` of iteration k: the current base, the iteration's galleries, each scored by
    its aspect's reward model."""
    c = ws.config
    return replace(
        c.raft_training,
        name=base_name(k),
        base=ws.current_base(k)[1],
        output_dir=str((ws.iter_dir(k) / "raft").resolve()),
        galleries=[str(ws.gallery_dir(k, a).resolve()) for a in c.aspects],
        rewards={a: f"composition:{ws.reward_model(k, a)}" for a in c.aspects},
        pool_dir=str(ws.pool_dir().resolve()),
        seed=c.seed,
        num_threads=c.num_threads,
        progress=c.progress,
    )


def run_raft(ws: Workspace, k: int) -> dict:
    config = raft_config(ws, k)
    base = ws.base_dir(k)
    rec_file = base / "training.json"
    done = rec_file.is_file() and json.loads(rec_file.read_text()).get("config") == config.to_dict()
    if not done:
        ws.log(
            f"  RAFT {ws.rel(config.base)} -> {ws.rel(base)}: the reward models pick the best of "
            f"{config.top_k} per train prompt, {config.max_steps} steps x {config.batch_size}"
        )
        try:
            final = train_raft(config, log=ws.log)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise IterateError(f"iteration {k}, RAFT: {e}") from None
        if base.exists():
            shutil.rmtree(base)
        os.replace(final, base)
    record = json.loads(rec_file.read_text())
    return {
        "method": "raft",
        "base": ws.rel(base),
        "run": ws.rel(config.run_dir),
        "selection": record["selection"],
        "loss_first_last": record["loss_first_last"],
        "steps": record["steps"],
        "captions": record.get("captions"),
        "wall_time_s": record.get("wall_time_s"),
    }


def run(ws: Workspace, k: int) -> dict:
    c = ws.config
    if c.feedback_method == "raft":
        return run_raft(ws, k)
    config = feedback_config(ws, k)
    base = ws.base_dir(k)
    rec_file = base / "training.json"
    done = rec_file.is_file() and not feedback_config_diff(
        {**json.loads(rec_file.read_text()).get("config", {}), "max_steps": config.max_steps},
        config.to_dict(),
    )
    if not done:
        weights = ", ".join(f"{a}={c.weight(a)}" for a in c.aspects)
        ws.log(
            f"  {ws.rel(config.base)} -> {ws.rel(base)}: {config.max_steps} steps x "
            f"{config.batch_size} samples, rewards {weights}, "
            f"regulariser {config.reg_type} x {config.reg_weight}"
        )
        try:
            final = train_feedback(config, resume=True)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise IterateError(f"iteration {k}, feedback training: {e}") from None
        if final is None:
            raise IterateInterrupted("feedback training was stopped; run the same command to resume it")
        if base.exists():
            shutil.rmtree(base)
        os.replace(final, base)
    record = json.loads(rec_file.read_text())
    aspect_of = {f"composition:{ws.reward_model(k, a)}": a for a in c.aspects}
    first_last = {aspect_of.get(s, s): v for s, v in (record.get("reward_first_last") or {}).items()}
    for a, v in first_last.items():
        ws.log(f"  reward {a}: {v['first']:.3f} (first steps) -> {v['last']:.3f} (last steps)")
    return {
        "base": ws.rel(base),
        "run": ws.rel(config.run_dir),
        "curves": ws.rel(config.run_dir / "curves.png"),
        "log": ws.rel(config.run_dir / "log.jsonl"),
        "reward_specs": {a: s for s, a in aspect_of.items()},
        "reward_first_last": first_last,
        "final_reg": record.get("final_reg"),
        "steps": record.get("steps"),
        "settings": record.get("settings"),
        "wall_time_s": record.get("wall_time_s"),
    }

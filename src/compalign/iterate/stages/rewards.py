"""Stage 4, ``rewards``: one composition reward model per aspect (``iter_<k>/rewards/<aspect>/``,
the model in ``final/``), trained on the train pairs, selected and scored on the held-out pairs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ...rewards.composition.data import PairsFileError
from ...rewards.composition.evaluate import evaluate_reward_on_pairs
from ...rewards.composition.model import RECORD_FILE, CompositionRewardModel
from ...rewards.composition.train import reward_config_diff, train_reward_model
from ..state import IterateError, IterateInterrupted, plain
from ..workspace import Workspace


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    name = "reward_training"
    return plain({"aspects": c.aspects, **c.recorded(name), "seed": c.seed, **c.changed(name)})


def reward_config(ws: Workspace, k: int, aspect: str):
    """The `RewardTrainConfig` of the reward model of `aspect` in iteration k: `reward_training`
    with its per-run fields set."""
    c = ws.config
    return replace(
        c.reward_training,
        pairs=str(ws.pairs_file(k, aspect).resolve()),
        aspect=aspect,
        output_dir=str(ws.reward_run(k, aspect).resolve()),
        seed=c.seed,
        device=c.device,
        num_threads=c.num_threads,
        progress=c.progress,
    )


def run(ws: Workspace, k: int) -> dict:
    out = {}
    for aspect in ws.config.aspects:
        config = reward_config(ws, k, aspect)
        final = config.run_dir / "final"
        rec_file = final / RECORD_FILE
        done = rec_file.is_file() and not reward_config_diff(
            json.loads(rec_file.read_text()).get("config", {}), config.to_dict()
        )
        if done:
            ws.log(f"  {aspect}: trained earlier ({ws.rel(final)})")
        else:
            ws.log(f"  {aspect}: training on {ws.rel(config.pairs)} -> {ws.rel(config.run_dir)}")
            try:
                got = train_reward_model(config, resume=True)
            except (PairsFileError, ValueError, KeyError, FileNotFoundError) as e:
                raise IterateError(f"iteration {k}, reward model {aspect}: {e}") from None
            if got is None:
                raise IterateInterrupted(f"reward training of {aspect} was stopped; run the same command")
        record = json.loads(rec_file.read_text())
        out[aspect] = _summary(ws, k, aspect, final, record)
        acc = out[aspect]["heldout_accuracy"]
        ws.log(
            f"  {aspect}: held-out pair accuracy "
            + (
                f"{acc:.3f} ({out[aspect]['heldout_pairs']} pairs)"
                if acc is not None
                else "- (no held-out pairs)"
            )
        )
    return out


def _summary(ws: Workspace, k: int, aspect: str, final: Path, record: dict) -> dict:
    """The stage's outputs of one reward model: its files, its training record's figures and its
    held-out pair accuracy."""
    out = {
        "model": ws.rel(final),
        "run": ws.rel(final.parent),
        "curves": ws.rel(final.parent / "curves.png"),
        "train_pairs": record.get("train_pairs"),
        "heldout_pairs": record.get("heldout_pairs", 0),
        "selection": record.get("selection"),
        "epochs_done": record.get("epochs_done"),
        "heldout_accuracy": None,
        "heldout_loss": None,
        "spearman_vs_evaluator": None,
    }
    if out["heldout_pairs"]:
        model = CompositionRewardModel.from_pretrained(final, device=ws.config.device or "cpu", frozen=True)
        rep = evaluate_reward_on_pairs(
            model,
            ws.pairs_file(k, aspect),
            split="heldout",
            aspect=aspect,
            batch_size=ws.config.eval_batch_size,
        )
        out.update(
            heldout_accuracy=rep["accuracy"],
            heldout_loss=rep["loss"],
            spearman_vs_evaluator=rep.get("spearman_vs_evaluator"),
            by_models=rep["by_models"],
        )
    return out

"""Probe: RAFT of an `iterate` iteration with its selection made by the exact evaluator.

The loop's RAFT (``--feedback-method raft``) lets the learned reward models pick the best images
of the iteration's galleries. This probe repeats that iteration's RAFT run with the same base,
galleries, regulariser, seed and fine-tuning settings, but scores every candidate by the exact
evaluator (pass: 1, fail: 0, with the reward model's score as the tie-break among candidates of a
prompt). The gap between the two bounds what better reward models could give RAFT on this gallery.

1. read the iteration's RAFT settings from the work folder (``state.json``)
2. RAFT with the evaluator's selection (`compalign.feedback.raft.train_raft` with another scorer)
   -> ``OUT/final``
3. held-out exact-evaluator accuracy under the IterComp protocol (25 prompts x seeds 0-3 per
   category, the iteration's evaluation categories) -> ``OUT/result.json``

    python scripts/probe_raft_oracle.py runs/itercomp_raft/seed0 --iteration 1 --out runs/raft_oracle
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compalign.feedback.raft import score_candidates, train_raft
from compalign.generators import create_generator
from compalign.io import atomic_write_json
from compalign.iterate.config import IterateConfig
from compalign.iterate.report import aspect_mean
from compalign.iterate.stages.feedback import raft_config
from compalign.iterate.state import State
from compalign.iterate.workspace import Workspace
from compalign.world.quality import evaluate_generator, evaluator_key, judge_images


def evaluator_scores(config, candidates: list[dict]) -> np.ndarray:
    """Pass (1) or fail (0) by the exact evaluator, plus the reward model's score squashed into
    (0, 0.5) as the tie-break: a passing image always beats a failing one."""
    verdicts = judge_images(np.stack([c["image"] for c in candidates]), [c["prompt"] for c in candidates])
    passed = np.array([bool(v[0]) for v in verdicts], dtype=float)
    reward = score_candidates(config, candidates)
    return passed + 0.5 / (1 + np.exp(-reward))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path, help="An `iterate` work folder whose iteration ran RAFT.")
    ap.add_argument("--iteration", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="Folder of the probe's model and result.")
    ap.add_argument("--per-category", type=int, default=25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    # 1. the iteration's RAFT settings
    state = State(args.workdir)
    config = IterateConfig.from_dict({**state.data["config"], "workdir": str(args.workdir)})
    if config.feedback_method != "raft":
        raise SystemExit(f"error: {args.workdir} ran feedback method {config.feedback_method!r}, not raft")
    ws = Workspace(config)
    ws.state = state
    raft = replace(raft_config(ws, args.iteration), output_dir=str(args.out), progress=False)

    # 2. RAFT with the evaluator's selection
    final = args.out / "final"
    if not (final / "training.json").is_file():
        train_raft(raft, scorer=evaluator_scores)
    record = json.loads((final / "training.json").read_text())

    # 3. held-out accuracy
    res = evaluate_generator(
        create_generator(str(final)),
        config.evaluation_categories(),
        args.per_category,
        args.seeds,
        progress=False,
    )
    res.pop("records")
    out = {
        "workdir": str(args.workdir),
        "iteration": args.iteration,
        "evaluator": evaluator_key(),
        "protocol": {"split": "heldout", "per_category": args.per_category, "seeds": args.seeds},
        "aspects": {a: round(100 * v, 2) for a, v in res["aspects"].items() if v is not None},
        "aspect_mean": round(100 * aspect_mean(res), 2),
        "categories": {
            c: round(100 * (v["accuracy"] if isinstance(v, dict) else v), 2)
            for c, v in res["categories"].items()
        },
        "selection": record["selection"],
        "raft": raft.to_dict(),
    }
    atomic_write_json(args.out / "result.json", out)
    print(json.dumps({k: out[k] for k in ("aspects", "aspect_mean", "categories")}, indent=1))


if __name__ == "__main__":
    main()

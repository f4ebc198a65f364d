"""The stages of one iteration, one module each, in `STAGES` order. Each has
``settings(ws, k) -> dict`` (what ``state.json`` records; a change is a conflict with a stage that
ran) and ``run(ws, k) -> dict`` (the work; its outputs go to ``state.json``)."""

from . import evaluate, feedback, gallery, pairs, rank, reno, report, rewards

MODULES = {
    "gallery": gallery,
    "rank": rank,
    "pairs": pairs,
    "rewards": rewards,
    "feedback": feedback,
    "evaluate": evaluate,
    "reno": reno,
    "report": report,
}
"""Stage name -> its module."""

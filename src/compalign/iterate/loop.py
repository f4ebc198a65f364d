"""The names earlier versions of ``compalign.iterate`` defined here, re-exported from the modules
that now hold them (``state.py``, ``validate.py``, ``eval_store.py``, ``stages/``, ``run.py``,
``workspace.py``); new code imports from those."""

from __future__ import annotations

from .eval_store import eval_images_path, load_eval_images
from .run import IterateRun, Outcome, run_iterate
from .stages.gallery import gallery_prompts
from .stages.pairs import no_train_pairs_message
from .state import IterateError, IterateInterrupted, State, WaitingForPeople
from .validate import validate
from .workspace import abs_spec as _abs_spec

__all__ = [
    "IterateError",
    "IterateInterrupted",
    "IterateRun",
    "Outcome",
    "State",
    "WaitingForPeople",
    "_abs_spec",
    "eval_images_path",
    "gallery_prompts",
    "load_eval_images",
    "no_train_pairs_message",
    "run_iterate",
    "validate",
]

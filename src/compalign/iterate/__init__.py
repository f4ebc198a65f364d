"""``compalign iterate``: IterComp's loop, end to end and resumable: ``run_iterate(IterateConfig(...))``.

Per iteration k (folder ``<workdir>/iter_<k>/``), in order (`STAGES`):

1. ``gallery``  one gallery per aspect (``gallery/<aspect>/``): iteration 1 renders the gallery models
   on the train-split suite prompts of the aspect's categories (plus a few held-out prompts for the
   reward models' held-out pairs); iteration k > 1 copies iteration k-1's ranked gallery and expands
   it with the base fine-tuned in iteration k-1 (``gallery.expand``: the old rank becomes
   ``initial_rank``);
2. ``rank``     ``auto``: every record ranked by the exact world evaluator (``ranking.auto``);
   ``people``: people's rankings (``rank serve``) are exported; the run stops, saying what to
   serve, until every record is ranked;
3. ``pairs``    ``pairs/<aspect>.jsonl`` (split by prompt: held-out prompts give held-out pairs);
4. ``rewards``  one composition reward model per aspect (``rewards/<aspect>/final``), trained on
   the train pairs, selected and scored on the held-out pairs;
5. ``feedback`` ReFL training of the current base against the weighted aspect reward models, with
   the regulariser (``feedback/``), or RAFT (``--feedback-method raft``: the reward models pick each
   train prompt's best gallery image and the base learns them, ``raft/``); the result is
   ``iter_<k>/base``;
6. ``evaluate`` held-out exact-evaluator accuracy per category of every gallery model and the new
   base (``eval/<model>.json``, and ``eval/<model>.images.npz``: its first-seed images, which the
   reward check scores and the report shows; results of unchanged models are reused from earlier
   iterations);
7. ``reno``     the new base (or, when it is multi-step, `reno_model`, or the base itself at
   `reno_steps` differentiable steps) with and without ReNO, the aspect reward models as rewards
   (``reno/``);
8. ``report``   ``report.md``, ``plots/*.png``, ``summary.json`` (and ``<workdir>/report.md``).

``<workdir>/state.json`` (written atomically) records every stage with its status, the settings it
ran with and its outputs. A finished stage is never redone; a killed run continues at the stage it
stopped in (the stages' own resumption: gallery images on disk, trainer checkpoints, evaluation
files); a finished (or started) stage whose settings changed is an `IterateError`, unless it is
forced (``force_stages``), which redoes it and everything after it.

Modules: ``config.py`` (`IterateConfig`: every setting, documented), ``state.py`` (``state.json``,
the lock, the errors), ``workspace.py`` (the work folder's paths), ``validate.py`` (checks before
any work), ``stages/`` (one module per stage: its recorded settings and its work),
``eval_store.py`` (evaluation files and images, results reused across iterations),
``reward_check.py``, ``report.py`` and ``report_plots.py`` (the report), ``run.py`` (`IterateRun`,
`run_iterate`: the loop over iterations and stages), ``cli.py`` (the command).

Attributes are imported lazily (the command line starts without torch).
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_EXPORTS = {
    "IterateConfig": "config",
    "STAGES": "config",
    "IterateError": "state",
    "IterateInterrupted": "state",
    "IterateRun": "run",
    "Outcome": "run",
    "run_iterate": "run",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

"""``compalign iterate``: IterComp's loop end to end (gallery -> ranking -> pairs -> one reward
model per aspect -> feedback training of the base -> evaluation with and without ReNO -> report),
resumable stage by stage through ``<workdir>/state.json``.

- `IterateConfig` (``config.py``): every setting, documented;
- `run_iterate`, `IterateRun`, `IterateError` (``loop.py``): the stages and the state;
- ``report.py``: ``iter_<k>/report.md`` and its plots; ``cli.py``: the command.

Attributes are imported lazily (the command line starts without torch).
"""

from __future__ import annotations

_EXPORTS = {
    "IterateConfig": "config",
    "STAGES": "config",
    "IterateError": "loop",
    "IterateInterrupted": "loop",
    "IterateRun": "loop",
    "Outcome": "loop",
    "run_iterate": "loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Lazy package attributes: a package names what it exports and from which of its modules, and a
module is imported only when one of its names is first used (the command line starts without
torch, and light config modules load without their package's heavy ones)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for `package`: ``exports`` maps a name to the submodule
    (relative to `package`, e.g. ``"config"`` or ``"world_clip.reward"``) that defines it."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

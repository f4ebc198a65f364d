"""The per-user cache folder: what is built once per machine and shared by every run (scene pools).

`cache_dir()` is ``$COMPALIGN_CACHE`` when set, else ``$XDG_CACHE_HOME/compalign``, else
``~/.cache/compalign``. What lives there is keyed by what decides its content (a scene pool by a
fingerprint of the world's code and its seed), so any run may reuse it and a stale copy is never read.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "COMPALIGN_CACHE"


def cache_dir() -> Path:
    """The per-user cache folder (not created here)."""
    own = os.environ.get(ENV_VAR)
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "compalign"


def scene_pool_dir() -> Path:
    """Default root of the scene pools (`compalign.generators.world.data.ScenePool`)."""
    return cache_dir() / "scene_pool"

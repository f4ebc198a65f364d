"""Where a real reward's files come from: a local file or folder (read offline), or a hub id.

Every file a real reward needs can be given as a local path (``aesthetic:MLP.pth,clip=FOLDER``,
``pickscore:FOLDER,processor=FOLDER``, ...), and then nothing touches the network: a local source
is loaded with ``local_files_only=True``. A value that names a path (it starts with ``/``, ``./``,
``../`` or ``~``, has more than two parts, or a file extension) but does not exist is a
`FileNotFoundError` naming it, raised before any loader runs, so a typo never turns into a hub
lookup and its retries. Anything else (``owner/name``) is a hub id.
"""

from __future__ import annotations

from pathlib import Path

_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json", ".txt", ".ckpt")


def names_a_path(value: str | Path) -> bool:
    """True when `value` can only be a local path (not an ``owner/name`` hub id)."""
    text = str(value)
    return (
        isinstance(value, Path)
        or text.startswith(("/", "./", "../", "~", "."))
        or "\\" in text
        or len([p for p in text.split("/") if p]) > 2
        or text.lower().endswith(_FILE_SUFFIXES)
    )


def resolve_source(value: str | Path, what: str) -> tuple[str, bool]:
    """``(source, local)``: an existing local path (expanded), or a hub id. `what` names the file
    in the error for a path that does not exist ("aesthetic CLIP folder", ...)."""
    path = Path(str(value)).expanduser()
    if path.exists():
        return str(path), True
    if names_a_path(value):
        raise FileNotFoundError(f"{what} {value}: no such file or folder")
    return str(value), False


def hub_options(local: bool, hub: dict) -> dict:
    """`hub` keyword arguments for one load: a local source never looks at the hub."""
    return {**hub, "local_files_only": True} if local else dict(hub)

"""Generators by name: shipped world models, local folders, and registered adapters.

`create_generator(name_or_path)` resolves, in order:

1. ``prefix:rest`` where `prefix` was registered with `register_generator`: the diffusers
   families (``sd-turbo:stabilityai/sd-turbo``, ...; registered on import of
   `compalign.generators.diffusers`, which the registry does on first use) and ``reno:`` (a
   differentiable generator plus noise optimisation; registered on import of
   `compalign.noise_optimization`, which the command line and the gallery tools do);
2. a local folder: a saved `WorldPipeline` (``model_index.json``) or a training run folder
   (its ``final/`` pipeline);
3. a world model shipped in the package (``compalign/generators/world/weights/<name>/``);
4. a world preset without shipped weights: `ModelNotTrainedError` saying how to train it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .adapters import FACTORIES, GeneratorFactory, register_generator  # noqa: F401 (the registry's API)
from .base import Generator


class ModelNotTrainedError(LookupError):
    """A known world model whose weights are not shipped."""


def weights_root() -> Path:
    """Folder of the shipped world-model weights inside the package."""
    return Path(str(resources.files("compalign.generators.world") / "weights"))


def shipped_models() -> list[str]:
    root = weights_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def list_generators() -> list[str]:
    """Names `create_generator` knows: shipped models, presets, and ``prefix:`` adapters."""
    from .world.config import list_presets  # lazy: loads transformers and diffusers

    load_adapters()
    names = set(shipped_models()) | set(list_presets())
    return sorted(names) + sorted(f"{p}:" for p in FACTORIES)


def pipeline_dir(path: Path) -> Path | None:
    """The saved `WorldPipeline` folder of `path`: itself (``model_index.json``), its ``final/``
    (a finished training run), or None."""
    if (path / "model_index.json").is_file():
        return path
    if (path / "final" / "model_index.json").is_file():
        return path / "final"
    return None


def folder_model_name(path: str | Path) -> str:
    """A model's name from its folder: the folder's name, or the run's for a run's ``final/``."""
    path = Path(path)
    return path.resolve().parent.name if path.name == "final" else path.name


def load_adapters() -> None:
    """Register the diffusers families (on import of their package; lazy: it loads diffusers)."""
    import compalign.generators.diffusers  # noqa: F401


def create_generator(
    name_or_path: str | Path,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs,
) -> Generator:
    """A ready generator (weights loaded, eval mode) for a name, folder or ``prefix:rest``.

    World models take `steps` (their DDIM sampling steps; given, they are differentiable through
    them, see `WorldGenerator`); adapters take their own keyword arguments."""
    from .world.config import list_presets  # lazy: loads transformers and diffusers
    from .world.generator import WorldGenerator

    load_adapters()
    text = str(name_or_path)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in FACTORIES:
        return FACTORIES[prefix](rest, device=device, dtype=dtype, **kwargs)
    world_kw = {"steps": kwargs["steps"]} if "steps" in kwargs else {}  # other options: load_generator checks
    path = Path(text)
    if path.exists():
        pipe_dir = pipeline_dir(path)
        if pipe_dir is None:
            raise FileNotFoundError(
                f"{path} is neither a saved world pipeline (model_index.json) nor a finished run (final/)"
            )
        return WorldGenerator.from_pretrained(
            pipe_dir, name=folder_model_name(path), device=device, dtype=dtype, **world_kw
        )
    if text in shipped_models():
        return WorldGenerator.from_pretrained(
            weights_root() / text, name=text, device=device, dtype=dtype, **world_kw
        )
    if not sep and text in FACTORIES:  # a plain adapter name: its default hub id
        return FACTORIES[text]("", device=device, dtype=dtype, **kwargs)
    if text in list_presets():
        raise ModelNotTrainedError(
            f"model {text} has no shipped weights; train it with `compalign world train --preset {text}`"
        )
    raise KeyError(f"unknown generator {text!r}; known: {', '.join(list_generators()) or 'none'}")

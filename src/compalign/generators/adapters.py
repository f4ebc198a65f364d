"""The ``prefix:`` table of the generator registry: adapter packages register into it on import.

`compalign.generators.diffusers` registers one prefix per diffusers family and
`compalign.noise_optimization` registers ``reno:``; `compalign.generators.registry` reads the
table when it resolves ``prefix:rest``. Kept apart from the registry so that an adapter package
can register itself without importing the registry that loads it.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Generator

GeneratorFactory = Callable[..., Generator]
FACTORIES: dict[str, GeneratorFactory] = {}


def register_generator(prefix: str, factory: GeneratorFactory) -> None:
    """Register `factory(rest, device=None, dtype=None, **kwargs) -> Generator` for ``prefix:rest``."""
    if not prefix or ":" in prefix:
        raise ValueError(f"invalid prefix {prefix!r}")
    FACTORIES[prefix] = factory

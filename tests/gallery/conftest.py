"""The gallery helpers, from `tests.factories` (the fixtures `tiny_models` and `gallery_dir` are in
`tests/conftest.py`, shared with the ranking and pairs tests)."""

from __future__ import annotations

from tests.factories import MODELS, build_gallery, exact_render, read, snapshot, world_prompts

__all__ = ["MODELS", "build_gallery", "exact_render", "read", "snapshot", "world_prompts"]

"""Fixtures of the ``compalign iterate`` tests: everything tiny.

- gallery models ``good`` (exact renders of the prompt: always passes the evaluator) and ``bad``
  (black images) through a test generator adapter ``testworld:``, so rankings and pairs are real;
- the base: a saved tiny untrained world pipeline (3 steps; also a gallery model);
- the ReNO model: a saved tiny one-step world pipeline;
- the reward backbone: a saved tiny world CLIP (``world-clip:FOLDER``);
- one tiny scene pool for the feedback regulariser.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compalign.generators import registry
from compalign.generators.base import Generator, seeds_for


class RenderGenerator(Generator):
    """``testworld:good`` renders the prompt's scene exactly; ``testworld:bad`` is black."""

    def __init__(self, kind: str, device=None, dtype=None):
        super().__init__("cpu", dtype)
        if kind not in ("good", "bad"):
            raise KeyError(f"unknown test generator {kind!r}")
        self.kind, self.name = kind, f"testworld-{kind}"

    def noise_shape(self, batch: int = 1):
        return (batch, 3, 32, 32)

    @property
    def resolution(self) -> int:
        return 32

    def settings(self) -> dict:
        return {"kind": self.kind}

    def generate(self, prompts, seeds=None, noise=None, **settings):
        from compalign.world import parse_prompt, render, sample_layout, to_uint8

        prompts = list(prompts)
        out = []
        for p, s in zip(prompts, seeds_for(len(prompts), seeds), strict=True):
            if self.kind == "good":
                arr = to_uint8(render(sample_layout(parse_prompt(p), np.random.default_rng(s)), 32))
            else:
                arr = np.zeros((32, 32, 3), np.uint8)
            out.append(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
        return torch.stack(out)


@pytest.fixture(scope="session", autouse=True)
def _testworld_adapter():
    registry.register_generator(
        "testworld", lambda rest, device=None, dtype=None, **kw: RenderGenerator(rest)
    )
    yield
    registry.FACTORIES.pop("testworld", None)


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    from compalign.rewards.world_clip.model import WorldCLIPArch, WorldCLIPModel
    from tests.factories import TINY_WORLD_CLIP as TINY
    from tests.factories import tiny_pipeline

    root = tmp_path_factory.mktemp("iterate_models")
    tiny_pipeline(seed=0).save_pretrained(root / "tinybase")
    tiny_pipeline(seed=3, steps=1).save_pretrained(root / "onestep")
    WorldCLIPModel.from_arch(WorldCLIPArch(**TINY), seed=0).save_pretrained(root / "clip")
    return {
        "base": root / "tinybase",
        "onestep": root / "onestep",
        "clip": root / "clip",
        "pool": tmp_path_factory.mktemp("iterate_pool"),
    }


def iterate_args(env: dict, workdir, *extra) -> list[str]:
    """``compalign iterate`` arguments of the tiny set-up (extra ones appended)."""
    return [
        "iterate",
        "--workdir", workdir,
        "--base", env["base"],
        "--gallery-models", "good=testworld:good", "bad=testworld:bad", f"tinybase={env['base']}",
        "--per-category", "1",
        "--reward-heldout-per-category", "1",
        "--tie-break", "none",
        "--reward-backbone", f"world-clip:{env['clip']}",
        "--reward-epochs", "1",
        "--reward-batch-size", "4",
        "--reward-lr", "1e-3",
        "--feedback-steps", "2",
        "--feedback-batch-size", "2",
        "--feedback-checkpoint-every", "1",
        "--pool-per-category", "4",
        "--pool-dir", env["pool"],
        "--eval-categories", "color", "spatial", "non_spatial", "single_object",
        "--eval-per-category", "1",
        "--eval-seeds", "0",
        "--reno-model", env["onestep"],
        "--reno-iterations", "2",
        "--device", "cpu",
        "--threads", "1",
        "--no-progress",
        *extra,
    ]  # fmt: skip

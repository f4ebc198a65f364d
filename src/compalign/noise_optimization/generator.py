"""`ReNOGenerator`: a one/two-step generator whose every image is a ReNO result, as a generator.

IterComp expands its gallery with the improved model; with ReNO the "improved model" is the base
generator plus noise optimisation on the current rewards. Wrapping that as a `Generator` lets the
gallery tools (``gallery generate``, ``gallery expand``) render it like any other model:

    compalign gallery expand runs/gal \
        --add-model "reno1=reno:world-onestep,composition:runs/r0=1,world-clip=1"

Spec (registered as the generator prefix ``reno:``)::

    reno:BASE,REWARD=W[,REWARD=W...][,iterations=N][,lr=X][,grad_clip=X][,reg_weight=X][,optimizer=O]

`BASE` is any generator `create_generator` knows (a shipped world model, a folder, ``sd-turbo:ID``,
...) that is differentiable; each ``REWARD=W`` is a reward spec as ``compalign reno --reward``
takes it (``world-clip=1``, ``composition:FOLDER=0.5``). The image of a (prompt, seed) is the best
image of ReNO started from that seed's noise, so the same seed gives the same image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..generators.base import Generator, seeds_for
from ..generators.registry import create_generator
from ..rewards.objective import load_rewards, parse_objective
from .reno import ReNOConfig, WeightedReward, optimize_noise

SETTINGS = {"iterations": int, "lr": float, "grad_clip": float, "reg_weight": float, "optimizer": str}


def parse_reno_spec(text: str) -> tuple[str, list[str], dict]:
    """``BASE,REWARD=W,...,iterations=N`` -> (base, reward specs, ReNOConfig keyword arguments, checked)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not parts[0]:
        raise ValueError(f"reno generator {text!r}: expected reno:BASE,REWARD=W[,...] (no base given)")
    base, rewards, settings = parts[0], [], {}
    for part in parts[1:]:
        if not part:
            raise ValueError(f"reno generator {text!r}: empty item between commas")
        key, _, value = part.partition("=")
        if key in SETTINGS:
            try:
                settings[key] = SETTINGS[key](value)
            except ValueError as e:
                kind = SETTINGS[key].__name__
                raise ValueError(f"reno generator {text!r}: {key}={value!r} is not a {kind}") from e
        else:
            rewards.append(part)
    if not rewards:
        raise ValueError(f"reno generator {text!r}: give at least one reward (e.g. reno:{base},world-clip=1)")
    try:
        ReNOConfig(**settings)  # bad values (optimizer=..., iterations=0) fail at parse time
    except ValueError as e:
        raise ValueError(f"reno generator {text!r}: {e}") from e
    return base, rewards, settings


class ReNOGenerator(Generator):
    """`base` + ReNO on `rewards`: ``generate(prompts, seeds)`` returns the best images of ReNO.

    Args:
        base: a differentiable `Generator` (one or two steps).
        rewards: the optimised rewards (`WeightedReward`, as `optimize_noise` takes them).
        config: ReNO settings (default: the paper's; the progress bar is off).
        name: the name images are recorded under.
    """

    differentiable = False  # its images come out of an optimisation loop

    def __init__(
        self,
        base: Generator,
        rewards: Sequence[WeightedReward],
        config: ReNOConfig | None = None,
        name: str = "reno",
    ):
        super().__init__(device=base.device, dtype=base.dtype)
        if not base.differentiable:
            raise ValueError(f"ReNO needs a one- or two-step (differentiable) base; {base.name!r} is not")
        self.base, self.rewards = base, list(rewards)
        self.config = config or ReNOConfig(progress=False)
        self.name = name

    def noise_shape(self, batch: int = 1) -> tuple[int, ...]:
        return self.base.noise_shape(batch)

    @property
    def resolution(self) -> int:
        return self.base.resolution

    def generate(self, prompts, seeds=None, noise=None, **settings) -> torch.Tensor:
        if noise is not None:
            raise ValueError("a ReNO generator starts from seeds (each seed's noise), not from given noise")

        seeds = seeds_for(len(prompts), seeds)
        result = optimize_noise(self.base, list(prompts), self.rewards, seeds, self.config, **settings)
        return result.best_images

    def settings(self) -> dict:
        c = self.config
        reno = {"iterations": c.iterations, "lr": c.lr, "optimizer": c.optimizer, "grad_clip": c.grad_clip}
        reno |= {"reg_weight": c.reg_weight, "rewards": {r.name: r.weight for r in self.rewards}}
        return {"base": self.base.name, **self.base.settings(), "reno": reno}


def reno_factory(rest: str, device=None, dtype=None, **kwargs) -> ReNOGenerator:
    """``create_generator("reno:BASE,REWARD=W,...")``."""
    base_name, reward_specs, settings = parse_reno_spec(rest)
    base = create_generator(base_name, device=device, dtype=dtype, **kwargs)
    rewards = load_rewards(parse_objective(reward_specs), base.device)
    return ReNOGenerator(base, rewards, ReNOConfig(progress=False, **settings), name=f"reno-{base.name}")

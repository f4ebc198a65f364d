"""The reward objective of noise optimisation (ReNO) and feedback training: weighted reward terms,
their command-line parser and their defaults.

A term is a reward (a registered name or ``name:source``), its weight `w`, its loss constant `c`
and whether it is optimised or only logged (a benchmark reward). Its loss is ``w * (c - r)`` in
ReNO and ``w * relu(c - r)`` in feedback training (a reward above `c` gives no gradient there).
`c` is the term's cap, or the reward's `loss_offset` (0 when it has none).

On the command line a term is ``NAME=WEIGHT`` (a bare ``NAME``: the reward's default weight) and
a cap ``NAME=C``; a benchmark reward is a bare ``NAME``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .registry import create_reward, factory_accepts, list_rewards, reward_class, reward_factory

WORLD_DEFAULT_REWARDS = ["world-clip=1"]
"""The rewards of a world model when none are given."""
REAL_DEFAULT_REWARDS = ["hpsv2=5", "imagereward=1", "pickscore=0.05"]
"""The rewards of a real (diffusers) model when none are given: ReNO's combination."""
DEFAULT_REWARDS_HELP = (
    f"Default: {' '.join(WORLD_DEFAULT_REWARDS)} on world models, {' '.join(REAL_DEFAULT_REWARDS)} else."
)
"""The default rewards as a command's help says them."""


def default_rewards(world: bool) -> list[str]:
    """The reward specs used when none are given, for a world or a real (diffusers) model."""
    return list(WORLD_DEFAULT_REWARDS if world else REAL_DEFAULT_REWARDS)


def parse_reward_spec(text: str) -> tuple[str, float]:
    """``NAME=WEIGHT`` (``NAME`` may be ``name:source,key=value,...``); a bare NAME takes the
    reward's default weight."""
    name, sep, w = text.rpartition("=") if "=" in text else (text, "", "")
    if sep and ":" in name and "," in name:
        try:
            float(w)
        except ValueError:  # the last '=' belongs to a source option: no weight given
            name, sep, w = text, "", ""
    name = name.strip()
    if not name:
        raise ValueError(f"reward {text!r}: expected NAME=WEIGHT")
    if not sep:
        cls = reward_class(name.split(":", 1)[0])
        return name, float(getattr(cls, "default_weight", 1.0)) if cls is not None else 1.0
    try:
        return name, float(w)
    except ValueError as e:
        raise ValueError(f"reward {text!r}: weight {w!r} is not a number") from e


def parse_weights(texts: Iterable[str] | None, what: str = "reward", need_value: bool = False) -> dict:
    """``NAME=VALUE`` texts as ``{NAME: VALUE}`` (a bare NAME: the reward's default weight, unless
    `need_value`); a name given twice is an error."""
    out: dict[str, float] = {}
    for text in texts or []:
        if need_value and "=" not in text:
            raise ValueError(f"{what} {text!r}: expected NAME=VALUE")
        name, value = parse_reward_spec(text)
        if name in out:
            raise ValueError(f"{what} {name!r} given twice")
        out[name] = value
    return out


@dataclass(frozen=True)
class RewardTerm:
    """One term of a reward objective, before its reward is loaded."""

    spec: str
    """A registered reward name or ``name:source`` (`compalign.rewards.create_reward`)."""
    weight: float = 1.0
    """Weight of the term (0: switched off, the reward is not loaded)."""
    cap: float | None = None
    """The loss constant `c` (None: the reward's `loss_offset`)."""
    optimize: bool = True
    """False: a benchmark reward, computed and logged but never optimised."""

    @property
    def active(self) -> bool:
        """True when the term is optimised with a non-zero weight."""
        return self.optimize and self.weight != 0


def parse_objective(
    rewards: Iterable[str], benchmark: Iterable[str] = (), caps: Iterable[str] = ()
) -> list[RewardTerm]:
    """The terms of command-line specs: `rewards` ``NAME=WEIGHT`` (optimised), `benchmark` ``NAME``
    (logged only; a weight given is ignored), `caps` ``NAME=C`` of rewards in `rewards`. A reward
    given twice, a bad weight or a cap of no reward is a one-line ValueError."""
    weights = [parse_reward_spec(t) for t in rewards]
    terms = objective_from_weights(dict(weights), parse_weights(caps, "reward cap", need_value=True))
    terms += [RewardTerm(t.split("=", 1)[0], 0.0, optimize=False) for t in benchmark]
    seen: set[str] = set()
    for spec in [name for name, _ in weights] + [t.spec for t in terms if not t.optimize]:
        if spec in seen:
            raise ValueError(f"reward {spec!r} given twice")
        seen.add(spec)
    return terms


def objective_from_weights(
    rewards: dict[str, float], caps: dict[str, float] | None = None
) -> list[RewardTerm]:
    """The optimised terms of ``{spec: weight}`` with ``{spec: cap}`` (feedback training's config
    fields). Weights must be finite; a cap of a reward not in `rewards` is an error."""
    caps = caps or {}
    for spec, w in rewards.items():
        if not math.isfinite(w):
            raise ValueError(f"reward {spec!r}: weight {w} is not finite")
    unknown = set(caps) - set(rewards)
    if unknown:
        raise ValueError(f"reward_caps for rewards not in rewards: {sorted(unknown)}")
    return [RewardTerm(spec, float(w), caps.get(spec)) for spec, w in rewards.items()]


def check_reward_names(terms: Iterable[RewardTerm]) -> None:
    """A ValueError naming the first term whose reward is not registered."""
    known = list_rewards()
    for t in terms:
        name = t.spec.split(":", 1)[0]
        if name not in known:
            raise ValueError(f"unknown reward {name!r}; known: {', '.join(known)}")


@dataclass
class WeightedReward:
    """One term of the objective with its reward loaded: a reward module, its weight, whether it is
    optimised, and its loss constant."""

    name: str
    reward: Any
    """The reward module (``reward(images, prompts) -> [B]`` scores, higher is better)."""
    weight: float = 1.0
    optimize: bool = True
    """False: a benchmark reward, computed every iteration and logged but never optimised."""
    cap: float | None = None
    """The loss constant (None: the reward's `loss_offset`)."""

    @property
    def offset(self) -> float:
        """The term's loss is ``offset - score`` (bounded below for bounded rewards)."""
        return float(self.cap) if self.cap is not None else float(getattr(self.reward, "loss_offset", 0.0))


def load_rewards(terms: Iterable[RewardTerm], device: Any, world_clip_scaled: bool = False) -> list:
    """The `WeightedReward` of every term but those switched off (weight 0: not even loaded), each
    reward frozen on `device` (a factory that takes no `device` builds it, then it is moved).
    `world_clip_scaled`: the world CLIP's scores scaled as its logits. A reward that is unknown,
    not trained or missing its weights is a one-line ValueError."""
    out = []
    for t in terms:
        if t.optimize and t.weight == 0:
            continue
        name = t.spec.split(":", 1)[0]
        kw = {"scaled": True} if world_clip_scaled and name == "world-clip" else {}
        try:
            if factory_accepts(reward_factory(name), "device"):
                kw["device"] = device
            reward = create_reward(t.spec, **kw).to(device)
        except (LookupError, ImportError, OSError) as e:  # unknown, not trained, missing weights
            raise ValueError(f"reward {t.spec!r}: {e}") from e
        reward.eval()
        reward.requires_grad_(False)
        out.append(WeightedReward(t.spec, reward, t.weight, t.active, t.cap))
    return out

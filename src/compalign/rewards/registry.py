"""Rewards by name: ``create_reward("hpsv2")``, ``create_reward("clip:/path/to/clip-folder")``.

A spec is ``NAME``, ``NAME:SOURCE`` or ``NAME:SOURCE,KEY=VALUE,...``; the SOURCE (a local path or
hub id, meaning depends on the reward) is passed as the factory's first argument, each ``KEY=VALUE``
as a keyword argument (the reward class's ``source_options`` map short keys to arguments:
``aesthetic:head.pth,clip=FOLDER``, ``pickscore:FOLDER,processor=FOLDER``,
``hpsv2:HPS.pt,tokenizer=FOLDER``, ``imagereward:FOLDER,tokenizer=FOLDER``). With every file given as
a local path a real reward loads fully offline. Known names:

- ``hpsv2``: `real.hpsv2.HPSv2Reward` (HPS v2.1); ReNO loss ``1 - s``, weight 5.0;
- ``imagereward``: `real.image_reward.ImageRewardReward`; loss ``2 - s``, weight 1.0;
- ``pickscore``: `real.pickscore.PickScoreReward`; loss ``30 - s``, weight 0.05;
- ``clip``: `real.clip_score.CLIPScoreReward` (LAION ViT-H-14); loss ``100 - s``, weight 0.01;
- ``aesthetic``: `real.aesthetic.LaionAestheticReward`; loss ``10 - s``, weight 0 (off);
- ``world-clip``: `world_clip.reward.WorldCLIPReward` (the world's own CLIP);
- ``composition``: `composition.model.CompositionRewardModel`, a composition reward model of one
  aspect (``composition:itercomp-attribute`` / ``itercomp-spatial`` / ``itercomp-nonspatial``, or a
  model folder); loss ``2 - s``, weight 1.0.

Factories are registered by import path (``"package.module:Attribute"``) and imported only when
used, so a reward whose module or dependencies are missing does not break the others.
`register_reward` adds more (a callable or an import path).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable

import torch

from .base import Reward

Factory = Callable[..., Reward]

_REGISTRY: dict[str, Factory | str] = {}


def register_reward(name: str, factory: Factory | str, *, overwrite: bool = False) -> None:
    """Register `factory` under `name`: a callable ``factory([source], device=..., dtype=..., **kw)
    -> Reward`` (a `Reward` subclass works) or its import path ``"module:attribute"`` (imported on
    first use)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"reward name must be a non-empty string without ':', got {name!r}")
    if isinstance(factory, str):
        if ":" not in factory:
            raise ValueError(f"import path must look like 'package.module:attribute', got {factory!r}")
    elif not callable(factory):
        raise TypeError(f"factory must be callable or an import path, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"reward {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def list_rewards() -> list[str]:
    """Registered reward names (sorted)."""
    return sorted(_REGISTRY)


def reward_factory(name: str) -> Factory:
    """The factory registered as `name` (an import path is imported here)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known: {', '.join(list_rewards())}")
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            obj = importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"reward {name!r} needs {module}, which cannot be imported: {e}") from e
        for part in attr.split("."):
            obj = getattr(obj, part)
        factory = obj
    return factory


def reward_class(name: str) -> type[Reward] | None:
    """The `Reward` class behind `name` (to read ``loss_offset`` / ``default_weight`` without loading
    weights), or ``None`` when the factory is a plain function."""
    factory = reward_factory(name)
    return factory if isinstance(factory, type) and issubclass(factory, Reward) else None


def factory_accepts(factory: Factory, param: str) -> bool:
    """True when `factory` (a class or a function) takes a keyword argument `param`."""
    target = factory.__init__ if isinstance(factory, type) else factory
    if target in (torch.nn.Module.__init__, object.__init__):  # no constructor arguments of its own
        return False
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return True
    return param in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


_OPTION = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def split_source(source: str) -> tuple[str, dict[str, str]]:
    """``"head.pth,clip=/models/clip"`` -> ``("head.pth", {"clip": "/models/clip"})`` (a comma
    starts an option only before ``KEY=``, so paths may hold commas)."""
    if not source:
        return source, {}
    first, *rest = _OPTION.split(source)
    options = {}
    for part in rest:
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not value:
            raise ValueError(f"reward option {key!r} has no value (expected {key}=VALUE)")
        if key in options:
            raise ValueError(f"reward option {key!r} given twice")
        options[key] = value
    return first.strip(), options


def create_reward(
    spec: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs,
) -> Reward:
    """Build the reward named by `spec` (``NAME`` or ``NAME:SOURCE``) on `device` in `dtype`;
    `kwargs` go to its factory (e.g. ``gradient_checkpointing=True``)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"reward spec must be a non-empty string, got {spec!r}")
    name, sep, source = spec.partition(":")
    if sep and not source:
        raise ValueError(f"reward spec {spec!r} has an empty source after ':'")
    factory = reward_factory(name)
    source, options = split_source(source)
    call = dict(kwargs)
    aliases = getattr(factory, "source_options", {}) or {}
    for key, value in options.items():
        param = aliases.get(key, key)
        if not factory_accepts(factory, param):
            known = ", ".join(aliases) or "none"
            raise ValueError(f"reward {name!r} takes no option {key!r} (its options: {known})")
        call[param] = value
    if device is not None:
        call["device"] = device
    if dtype is not None:
        if factory_accepts(factory, "dtype"):
            call["dtype"] = dtype
        elif dtype not in ("fp32", "float32", torch.float32):
            raise ValueError(f"reward {name!r} runs in float32 only (got dtype {dtype!r})")
    reward = factory(source, **call) if source else factory(**call)
    if not isinstance(reward, Reward):
        raise TypeError(f"factory of {name!r} returned {type(reward).__name__}, not a Reward")
    return reward


for _name, _path in {
    "clip": "compalign.rewards.real.clip_score:CLIPScoreReward",
    "pickscore": "compalign.rewards.real.pickscore:PickScoreReward",
    "hpsv2": "compalign.rewards.real.hpsv2:HPSv2Reward",
    "imagereward": "compalign.rewards.real.image_reward:ImageRewardReward",
    "aesthetic": "compalign.rewards.real.aesthetic:LaionAestheticReward",
    "world-clip": "compalign.rewards.world_clip.reward:WorldCLIPReward",
    "composition": "compalign.rewards.composition.model:CompositionRewardModel",
}.items():
    register_reward(_name, _path)

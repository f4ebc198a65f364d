"""How much memory a ReNO iteration keeps for its backward pass, and what ``auto`` checkpointing does.

Gradient checkpointing trades time for memory: a checkpointed component keeps only its inputs in the
forward pass and runs its forward again in the backward pass (on a CPU about 20 % more time per
iteration for a one-step SD-Turbo-layout model with its VAE decoder checkpointed). ``auto`` therefore
checkpoints only what the free memory requires:

1. one probe forward of batch 1 (generator and optimised rewards, checkpointing off) counts the
   bytes autograd saves for the backward pass, per component of `Generator.checkpoint_modules`
   (tensors sharing storage counted once, weights not counted);
2. the need of a batch of B is B times that; while it exceeds `budget_fraction` of the free
   memory (CUDA: `torch.cuda.mem_get_info` plus the allocator's unused cache; CPU: the available
   system memory), the component saving the most is checkpointed.

The decision is cached per generator, batch size and noise shape.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import torch

BUDGET_FRACTION = 0.6
"""Share of the free memory the saved activations of one iteration may use."""
KEPT_FRACTION = 0.1
"""Share of a checkpointed component's saved bytes still held (its inputs, one block recomputing)."""


def free_memory(device: torch.device | str) -> int | None:
    """Bytes free for new tensors on `device` (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            import psutil  # lazy: psutil is optional

            return int(psutil.virtual_memory().available)
        except ImportError:
            pass
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (str(t.device), st.data_ptr())


def saved_bytes(generator, rewards: Sequence, prompts: Sequence[str], noise: torch.Tensor) -> dict[str, int]:
    """Bytes autograd keeps for the backward pass of one generation + reward from `noise`, by
    component (``other``: outside every component of `checkpoint_modules`, rewards included).

    Runs with the generator's checkpointing switched off and restores it afterwards."""
    modules = generator.checkpoint_modules()
    params = {
        k
        for m in [*modules.values(), *[getattr(r, "reward", r) for r in rewards]]
        if isinstance(m, torch.nn.Module)
        for t in [*m.parameters(), *m.buffers()]
        if (k := _storage_key(t)) is not None
    }
    current = ["other"]
    handles = []

    def leave(*_) -> None:  # a forward hook that returns something replaces the output
        current.pop()

    for name, m in modules.items():
        for target in {
            id(x): x for x in (m, getattr(m, "decoder", None)) if isinstance(x, torch.nn.Module)
        }.values():
            handles.append(target.register_forward_pre_hook(lambda *_, n=name: current.append(n) or None))
            handles.append(target.register_forward_hook(leave))
    counts: dict[str, int] = defaultdict(int)
    seen: set = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key is not None and key not in params and key not in seen:
            seen.add(key)
            counts[current[-1]] += t.untyped_storage().nbytes()
        return t

    was = list(generator.checkpointed)
    generator._checkpoint([])
    try:
        z = noise.detach().to(generator.device, torch.float32).requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            images = generator.generate_from_noise(z.to(generator.dtype), list(prompts)).float()
            for r in rewards:
                reward = getattr(r, "reward", r)
                if getattr(r, "optimize", True) and getattr(r, "weight", 1.0) != 0:
                    reward(images, list(prompts))
    finally:
        for h in handles:
            h.remove()
        generator._checkpoint(was)
    return {name: int(counts.get(name, 0)) for name in [*modules, "other"]}


def plan_checkpointing(
    per_image: dict[str, int],
    batch: int,
    free: int | None,
    checkpointable: Sequence[str],
    budget_fraction: float = BUDGET_FRACTION,
) -> list[str]:
    """The components to checkpoint so that `batch` images' saved bytes fit the budget (largest
    saver first; all of them when even that does not fit; none when the free memory is unknown)."""
    if free is None:
        return []
    need = batch * sum(per_image.values())
    budget = budget_fraction * free
    chosen: list[str] = []
    for name in sorted(checkpointable, key=lambda n: -per_image.get(n, 0)):
        if need <= budget:
            break
        chosen.append(name)
        need -= batch * per_image.get(name, 0) * (1 - KEPT_FRACTION)
    return chosen


def resolve_auto(
    generator, rewards: Sequence, prompts: Sequence[str], noise: torch.Tensor, free: int | None = None
) -> list[str]:
    """Apply ``auto`` checkpointing for a batch of `noise` (`prompts` its prompts): probe batch 1,
    checkpoint what the free memory (`free` bytes; default: measured) requires; returns the
    components checkpointed."""
    modules = generator.checkpoint_modules()
    able = [n for n, m in modules.items() if getattr(m, "_supports_gradient_checkpointing", False)]
    key = (len(prompts), tuple(noise.shape[1:]), str(generator.device), free)
    cache = generator.__dict__.setdefault("_auto_checkpointing", {})
    if key not in cache:
        if not able:
            cache[key] = []
        else:
            try:
                per_image = saved_bytes(generator, rewards, list(prompts)[:1], noise[:1])
                free = free_memory(generator.device) if free is None else free
                cache[key] = plan_checkpointing(per_image, len(prompts), free, able)
            except torch.OutOfMemoryError:
                cache[key] = able
    generator._checkpoint(cache[key])
    return cache[key]

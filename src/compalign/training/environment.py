"""Where a run executes: its accelerator, and the hardware, library versions and parameter counts
its record holds."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}
"""Names of the floating dtypes that models are loaded and run in."""


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or a name (``fp16``, ``bfloat16``, ``torch.float32``, ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of fp32, fp16, bf16")
    return DTYPES[key]


def make_accelerator(mixed_precision: str = "no", device: str | None = None):
    """A fresh `accelerate.Accelerator` (several runs may follow each other in one process);
    ``device="cpu"`` forces the CPU."""
    # lazy: loads accelerate
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")


def hardware_info(device: torch.device) -> dict:
    """Device, CPU model and count, torch threads, platform (and the GPU's name)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions(*packages: str) -> dict:
    """``{"torch": ..., package: its __version__, ...}``."""
    return {"torch": torch.__version__, **{p: importlib.import_module(p).__version__ for p in packages}}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

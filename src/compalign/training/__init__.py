"""What every trainer shares: EMA, the learning-rate schedule, the run folder (config check,
atomic checkpoints, resume, ``log.jsonl``, stop flag, RNG state), the record of where a run
executed, and training curves."""

from .curves import Curve, Panel, plot_panels, read_log
from .ema import EMA
from .environment import DTYPES, count_parameters, hardware_info, make_accelerator, parse_dtype, versions
from .run_folder import (
    CHECKPOINTS,
    STATE_FILE,
    RunFolder,
    StopFlag,
    atomic_dir,
    config_diff,
    folder_size,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    new_session,
    rng_state,
    set_rng_state,
    utc_now,
)
from .schedule import lr_factor

__all__ = [
    "DTYPES",
    "parse_dtype",
    "CHECKPOINTS",
    "EMA",
    "STATE_FILE",
    "Curve",
    "Panel",
    "RunFolder",
    "StopFlag",
    "atomic_dir",
    "config_diff",
    "count_parameters",
    "folder_size",
    "hardware_info",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "make_accelerator",
    "new_session",
    "plot_panels",
    "read_log",
    "rng_state",
    "set_rng_state",
    "utc_now",
    "versions",
]

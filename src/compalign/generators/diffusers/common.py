"""The diffusers generators' shared machinery, by what it is (re-exported here):

- ``loading.py``: dtypes by name, hub options, `load_pipeline`, `load_model`, `load_vae`;
- ``generator.py``: `DiffusersGenerator`, the common base (pipeline, placement, noise shape);
- ``schedulers.py``: the one-step samplers' scheduler maths (`vp_sample`, `vp_clean_latent`,
  `one_step_latent`);
- ``onestep.py``: `OneStepGenerator` (differentiable, ReNO) with `cfg_combine`, `cat_cond`;
- ``multistep.py``: `PipelineGenerator` (the pipeline call, galleries).
"""

from .generator import OFFLOAD_MODES, DiffusersGenerator
from .loading import (
    DTYPES,
    HUB_KEYS,
    check_source,
    freeze,
    hub_kwargs,
    is_local,
    load_model,
    load_pipeline,
    load_vae,
    parse_dtype,
    pop_hub_kwargs,
)
from .multistep import PipelineGenerator
from .onestep import OneStepGenerator, cat_cond, cfg_combine
from .schedulers import one_step_latent, vp_clean_latent, vp_sample

__all__ = [
    "DTYPES",
    "HUB_KEYS",
    "OFFLOAD_MODES",
    "DiffusersGenerator",
    "OneStepGenerator",
    "PipelineGenerator",
    "cat_cond",
    "cfg_combine",
    "check_source",
    "freeze",
    "hub_kwargs",
    "is_local",
    "load_model",
    "load_pipeline",
    "load_vae",
    "one_step_latent",
    "parse_dtype",
    "pop_hub_kwargs",
    "vp_clean_latent",
    "vp_sample",
]

"""Memory and size options shared by the commands that load a generator (``reno``, ``generate``,
``gallery generate``): ``--dtype``, ``--offload``, ``--height``, ``--width``, ``--gradient-checkpointing``.

A bad value, or an option the model cannot take (a size for a world model), is a one-line error.
The options ``generate`` and ``reno`` declare alike are the `Annotated` aliases below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compalign._cli import fail as _fail
from compalign.generators import create_generator
from compalign.generators.registry import ModelNotTrainedError
from compalign.training.environment import parse_dtype

# options of ``compalign generate`` and ``compalign reno``
PromptsFile = Annotated[
    Path | None, typer.Option("--prompts", help="Text file with one prompt a line (# comments).")
]
Seeds = Annotated[
    list[int] | None, typer.Option("--seed", "-s", help="Seed; repeat for several (default 0).")
]
NumSeeds = Annotated[
    int, typer.Option("--num-seeds", "-n", help="Seeds per prompt: each --seed S gives S..S+n-1.")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run with other settings in --out.")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (auto).")]
Dtype = Annotated[str | None, typer.Option("--dtype", help="fp32, fp16 or bf16 (default: the model's).")]
Offload = Annotated[
    str | None, typer.Option("--offload", help="Diffusers models: none, model or sequential.")
]
Height = Annotated[int | None, typer.Option("--height", help="Image height (diffusers models).")]
Width = Annotated[int | None, typer.Option("--width", help="Image width (diffusers models).")]

GC_MODES = ("auto", "on", "off")
OFFLOAD_CHOICES = ("none", "model", "sequential")


def generator_options(
    dtype: str | None,
    offload: str | None,
    height: int | None,
    width: int | None,
    gradient_checkpointing: str | None = None,
) -> dict:
    """Check the memory and size options of a command; the keyword arguments for `create_generator`
    (diffusers adapters) that were given. A bad value is a one-line error."""
    kw: dict = {}
    if dtype is not None:
        try:
            kw["dtype"] = parse_dtype(dtype)
        except ValueError as e:
            _fail(f"--dtype: {e}")
    if offload is not None:
        if offload not in OFFLOAD_CHOICES:
            _fail(f"--offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
        if offload != "none":
            kw["offload"] = offload
    for name, v in (("height", height), ("width", width)):
        if v is not None:
            if v < 8:
                _fail(f"--{name} must be at least 8 px, got {v}")
            kw[name] = v
    if gradient_checkpointing is not None and gradient_checkpointing not in GC_MODES:
        _fail(
            f"--gradient-checkpointing must be one of {', '.join(GC_MODES)}, got {gradient_checkpointing!r}"
        )
    return kw


def load_generator(model: str, device: str | None, options: dict, gradient_checkpointing: str | None = None):
    """`create_generator` with the command's options; an option a model cannot take is a one-line error."""
    from compalign.generators.world.generator import WorldGenerator  # lazy: loads diffusers, transformers

    try:
        gen = create_generator(model, device=device, **options)
    except TypeError as e:
        if "steps" in options and "steps" in str(e):
            _fail(f"--steps is for world models; {model} takes its own number of steps")
        _fail(f"model {model}: {e}")
    except (KeyError, FileNotFoundError, ValueError, ModelNotTrainedError, OSError) as e:
        _fail(e.args[0] if e.args else str(e))
    if isinstance(gen, WorldGenerator):
        if "offload" in options:
            _fail(f"--offload is for diffusers models; {model} is a world model (it fits any device)")
        for k in ("height", "width"):
            if k in options and options[k] != gen.resolution:
                _fail(f"--{k} {options[k]}: world model {model} renders at {gen.resolution} px only")
    if gradient_checkpointing is not None:
        gen.set_gradient_checkpointing(gradient_checkpointing)
    return gen

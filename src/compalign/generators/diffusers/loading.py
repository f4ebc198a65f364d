"""Loading diffusers pipelines and models: dtypes by name, hub options, local folders.

A local folder never touches the network (``local_files_only``); a path that does not exist is a
`FileNotFoundError` before diffusers tries it as a hub id. Loading is quiet and leaves the
pipeline's progress bar off.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..world.generator import dtype_kwarg, quiet_loading

HUB_KEYS = ("cache_dir", "revision", "variant", "use_safetensors", "local_files_only", "token")
"""`from_pretrained` keyword arguments the factories pass through to diffusers."""


def is_local(source: str | Path) -> bool:
    """True when `source` is an existing local path (``~`` expanded), not a hub id."""
    return Path(str(source)).expanduser().exists()


def check_source(source: str | Path) -> None:
    """`FileNotFoundError` for a path that does not exist (``/x``, ``./x``, ``~/x``, ``a/b/c``),
    before diffusers tries it as a hub id; hub ids (``org/name``) pass."""
    text = str(source)
    if is_local(text):
        return
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        raise FileNotFoundError(f"folder {text} does not exist (and it is not a hub id: org/name)")


def hub_kwargs(source: str | Path, kwargs: dict) -> dict:
    """The hub keyword arguments in `kwargs`; a local folder never touches the network."""
    out = {k: kwargs[k] for k in HUB_KEYS if kwargs.get(k) is not None}
    if is_local(source):
        out.setdefault("local_files_only", True)
    return out


def pop_hub_kwargs(kwargs: dict) -> dict:
    """Remove the hub keyword arguments from `kwargs` and return them."""
    return {k: kwargs.pop(k) for k in HUB_KEYS if k in kwargs}


def load_pipeline(pipeline_cls, source: str | Path, dtype: torch.dtype, **kwargs):
    """`pipeline_cls.from_pretrained(source)` in `dtype`, quietly, with the progress bar off."""
    check_source(source)
    source = str(Path(str(source)).expanduser()) if is_local(source) else str(source)
    components = {k: v for k, v in kwargs.items() if k not in HUB_KEYS}
    with quiet_loading():
        pipe = pipeline_cls.from_pretrained(
            source, **{dtype_kwarg(): dtype}, **hub_kwargs(source, kwargs), **components
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(model_cls, source: str | Path, subfolder: str | None, dtype: torch.dtype, **kwargs):
    """One model (VAE, UNet, transformer) from `source` (its `subfolder` if it has one)."""
    check_source(source)
    source = str(Path(str(source)).expanduser()) if is_local(source) else str(source)
    hub = hub_kwargs(source, kwargs)
    with quiet_loading():
        if subfolder and is_local(source) and not (Path(source) / subfolder).is_dir():
            subfolder = None  # a folder holding the model itself
        if subfolder:
            return model_cls.from_pretrained(source, subfolder=subfolder, **{dtype_kwarg(): dtype}, **hub)
        return model_cls.from_pretrained(source, **{dtype_kwarg(): dtype}, **hub)


def load_vae(source: str | Path, dtype: torch.dtype, **kwargs):
    """An `AutoencoderKL` from a folder/repo holding it at its root (``madebyollin/sdxl-vae-fp16-fix``)
    or in a ``vae`` subfolder (a whole pipeline)."""
    from diffusers import AutoencoderKL  # lazy: loads diffusers

    kwargs = {k: v for k, v in kwargs.items() if k != "variant"}  # VAE repos rarely ship variants
    if is_local(source):
        sub = None if (Path(str(source)).expanduser() / "config.json").is_file() else "vae"
        return load_model(AutoencoderKL, source, sub, dtype, **kwargs)
    try:
        return load_model(AutoencoderKL, source, None, dtype, **kwargs)
    except OSError:
        return load_model(AutoencoderKL, source, "vae", dtype, **kwargs)


def freeze(*modules) -> None:
    """Put the torch modules among `modules` in eval mode without gradients (others are skipped)."""
    for m in modules:
        if isinstance(m, torch.nn.Module):
            m.eval()
            m.requires_grad_(False)

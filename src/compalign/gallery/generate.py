"""Render one prompt list with several models under the same settings into a gallery folder.

Record ``i`` (``index`` 0, 1, ...) is rendered by every model from the same seed ``seed + index``
with the same steps and guidance; images go to ``images/<model>/<index:05d>.png``, each written
atomically. The manifest ``gallery.json`` is rewritten (atomically) after every batch from what is
on disk, so a run killed at any moment loses nothing already written, and the same command resumes
it, skipping existing images. A folder made with other settings is refused.

Several processes (``torchrun --nproc_per_node N`` or ``accelerate launch`` on GPUs) share the
work through `accelerate.PartialState`: process ``p`` of ``n`` renders the records at positions
``i`` with ``i % n == p``; the main process writes the manifest and, after ``wait_for_everyone``,
the merged final one.

Models are given as generator specs (``world-base``, a saved pipeline folder, ``sd:/path`` or any
``prefix:source`` the generator registry knows), optionally named: ``NAME=SPEC``. Without a
name, a world model keeps its name, a folder its base name and ``prefix:source`` becomes
``prefix-<base name of source>``.
"""

from __future__ import annotations

import gc
import hashlib
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from PIL import Image
from tqdm.auto import tqdm

from .._cli import clip_text, out_place_problem
from ..generators import create_generator
from ..generators.generate import to_uint8
from ..generators.registry import folder_model_name, list_generators, shipped_models
from ..generators.world.config import list_presets
from ..io import atomic_save_image, atomic_write_json
from ..noise_optimization.generator import parse_reno_spec  # also registers the reno: prefix
from ..training.environment import parse_dtype
from ..world.grammar import PromptError, parse_prompt
from ..world.suites import ASPECTS, list_categories, load_suite
from .format import (
    GALLERY_FILE,
    META_FILE,
    Gallery,
    GalleryError,
    Record,
    check_model_name,
    image_path,
    load_gallery,
    new_meta,
    parse_records,
    read_json,
)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the gallery's model name (``image_<name>``, ``images/<name>/``)
    spec: str  # what `create_generator` loads

    def to_meta(self) -> dict:
        return {"name": self.name, "spec": self.spec}


def _adapter_prefixes() -> set[str]:
    return {n[:-1] for n in list_generators() if n.endswith(":")}


def default_model_name(spec: str) -> str:
    prefix, sep, rest = spec.partition(":")
    if sep and re.fullmatch(r"[A-Za-z0-9_-]+", prefix) and not Path(spec).exists():
        base = Path(rest.rstrip("/")).name if rest else ""
        name = f"{prefix}-{base}" if base else prefix
    else:
        name = folder_model_name(spec.rstrip("/")) or spec
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-._+")
    return name or "model"


def parse_model(arg: str) -> ModelSpec:
    """``NAME=SPEC`` or ``SPEC`` -> `ModelSpec`."""
    arg = arg.strip()
    if not arg:
        raise GalleryError("empty model name")
    name, eq, spec = arg.partition("=")
    if eq and spec and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        return ModelSpec(check_model_name(name), spec)
    return ModelSpec(default_model_name(arg), arg)


def parse_models(args: Sequence[str], existing: Sequence[str] = ()) -> list[ModelSpec]:
    models = [parse_model(a) for a in args]
    names = list(existing)
    for m in models:
        if m.name in names:
            raise GalleryError(
                f"model name {m.name!r} given twice (or already in the gallery); name models with NAME=SPEC"
            )
        names.append(m.name)
    return models


def check_model_spec(m: ModelSpec) -> None:
    """Fail early (before any rendering) on a model that cannot be loaded."""

    prefix, sep, rest = m.spec.partition(":")
    if sep and prefix == "reno":  # a differentiable base + ReNO: check the spec and its base
        try:
            base, _, _ = parse_reno_spec(rest)
        except ValueError as e:
            raise GalleryError(f"model {m.name}: {e}") from e
        return check_model_spec(ModelSpec(m.name, base))
    if sep and prefix in _adapter_prefixes():
        local = rest.startswith(("/", ".", "~")) or Path(rest).exists()
        if local and not Path(rest).expanduser().exists():
            raise GalleryError(f"model {m.name}: folder {rest} of {m.spec!r} does not exist")
        return
    path = Path(m.spec)
    if path.exists():
        if not ((path / "model_index.json").is_file() or (path / "final" / "model_index.json").is_file()):
            raise GalleryError(
                f"model {m.name}: {path} is neither a saved pipeline (model_index.json) nor a finished run"
            )
        return
    if m.spec in shipped_models():
        return
    if m.spec in list_presets():
        raise GalleryError(
            f"model {m.name}: {m.spec} has no shipped weights; train it with "
            f"`compalign world train --preset {m.spec}` or give its run folder"
        )
    raise GalleryError(f"unknown model {m.spec!r}; known: {', '.join(list_generators())}, or a folder")


def is_world_spec(spec: str) -> bool:
    """True for models that read prompts with the world tokenizer: shipped world models, world
    pipeline / run folders, and ``reno:`` over one of them (not ``prefix:source`` adapters)."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "reno":
        try:
            return is_world_spec(parse_reno_spec(rest)[0])
        except ValueError:
            return False
    return not (sep and prefix in _adapter_prefixes() and not Path(spec).exists())


def check_world_prompts(prompts: Sequence[str], models: Sequence[ModelSpec]) -> None:
    """A `GalleryError` naming the first prompt outside the world grammar and its word, when a
    world model is to render it (its tokenizer reads only the grammar's words)."""
    world = next((m for m in models if is_world_spec(m.spec)), None)
    if world is None:
        return
    for n, p in enumerate(dict.fromkeys(prompts), 1):
        try:
            parse_prompt(p)
        except PromptError as e:
            reason = str(e).replace(p, clip_text(p)) if len(p) > 80 else str(e)
            raise GalleryError(
                f"prompt {n} ({clip_text(p)!r}) is outside the world grammar, which model {world.name} "
                f"reads: {clip_text(reason, 300)}; see `compalign world prompts --all`"
            ) from None


def check_sampling(steps: int | None, guidance: float | None, batch_size: int) -> None:
    """`GalleryError` for sampling settings no generator can take."""
    if steps is not None and steps < 1:
        raise GalleryError(f"--steps must be >= 1, got {steps}")
    if guidance is not None and not math.isfinite(guidance):
        raise GalleryError(f"--guidance must be a finite number, got {guidance}")
    if batch_size < 1:
        raise GalleryError(f"--batch-size must be >= 1, got {batch_size}")


# --------------------------------------------------------------------------------------- prompts


def suite_prompts(
    aspect: str, split: str = "train", per_category: int | None = None
) -> list[tuple[str, str]]:
    """(prompt, category) of the world suites of `aspect`, the first `per_category` of each, deduplicated."""
    if aspect not in ASPECTS:
        raise GalleryError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
    out, seen = [], set()
    for c in list_categories(aspect):
        for p in load_suite(c, split)[:per_category]:
            if p not in seen:
                seen.add(p)
                out.append((p, c))
    return out


def _prompts_hash(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- processes


def dist_state(device: str | None = None):
    """The `accelerate` process state (one process unless launched with torchrun / accelerate)."""
    cpu = device == "cpu" or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _resize(arr, size: int):
    img = Image.fromarray(arr)
    method = Image.Resampling.LANCZOS if size < arr.shape[0] else Image.Resampling.BICUBIC
    return img.resize((size, size), method)


def render_models(
    root: Path,
    records: Sequence[Record],
    models: Sequence[ModelSpec],
    seeds: dict[int, int],
    *,
    resolution: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = False,
    on_batch: Callable[[], None] | None = None,
    state=None,
    dtype: str | None = None,
    offload: str | None = None,
) -> dict[str, dict]:
    """Render the missing images of this process's share; returns per model what was learnt
    (native resolution, generator settings) for the models this process loaded."""
    state = state or dist_state(device)
    n, p = state.num_processes, state.process_index
    if device is None and n > 1:
        device = str(state.device)
    mine = [r for i, r in enumerate(records) if i % n == p]
    todo = {m.name: [r for r in mine if not (root / image_path(m.name, r.index)).is_file()] for m in models}
    total = sum(len(v) for v in todo.values())
    info: dict[str, dict] = {}
    adapters = _adapter_prefixes()
    call = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance)) if v is not None}
    bar = tqdm(
        total=total,
        desc=f"gallery [{p + 1}/{n}]" if n > 1 else "gallery",
        unit="img",
        disable=not progress or total == 0,
        file=sys.stderr,
    )
    with bar:
        for m in models:
            if not todo[m.name]:
                continue
            kw: dict[str, Any] = {}
            if resolution and m.spec.partition(":")[0] in adapters:
                kw.update(height=resolution, width=resolution)
            if dtype is not None:
                kw["dtype"] = parse_dtype(dtype)
            if offload is not None and m.spec.partition(":")[0] in adapters:
                kw["offload"] = offload
            try:
                gen = create_generator(m.spec, device=device, **kw)
            except (LookupError, FileNotFoundError, ValueError, OSError) as e:
                raise GalleryError(f"model {m.name} ({m.spec}): {e.args[0] if e.args else e}") from e
            native = int(getattr(gen, "resolution", 0) or 0)
            # the settings the images were rendered with: the model's defaults, then --steps / --guidance
            info[m.name] = {"resolution": native, "settings": _plain({**gen.settings(), **call})}
            bar.set_postfix_str(m.name)
            for start in range(0, len(todo[m.name]), batch_size):
                batch = todo[m.name][start : start + batch_size]
                images = gen.generate(
                    [r.prompt for r in batch], seeds=[seeds[r.index] for r in batch], **call
                )
                for r, arr in zip(batch, to_uint8(images), strict=True):
                    img = _resize(arr, resolution) if resolution and arr.shape[0] != resolution else arr
                    atomic_save_image(root / image_path(m.name, r.index), img)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch()
            del gen
            gc.collect()
    return info


def _plain(d: dict) -> dict:
    """JSON-safe copy of a settings dict."""
    out = {}
    for k, v in d.items():
        out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
    return out


def clean_stale_tmp(root: Path, models: Sequence[str]) -> int:
    """Remove temporary files a killed run left beside its images (main process, before rendering)."""
    n = 0
    for m in models:
        folder = root / image_path(m, 0)
        for p in folder.parent.glob(".*.tmp") if folder.parent.is_dir() else []:
            p.unlink(missing_ok=True)
            n += 1
    return n


def manifest_records(root: Path, records: Sequence[Record], models: Sequence[str]) -> list[Record]:
    """The records with only the images present on disk (the manifest of a partial run)."""
    out = []
    for r in records:
        images = {m: image_path(m, r.index) for m in models if (root / image_path(m, r.index)).is_file()}
        out.append(Record(r.index, r.prompt, images, r.rank, r.initial_rank, dict(r.extra)))
    return out


def write_manifest(root: Path, records: Sequence[Record], models: Sequence[str]) -> None:
    recs = manifest_records(root, records, models)
    for r in recs:  # a rank is only valid over the full set of models
        if len(r.images) != len(models):
            r.rank = r.initial_rank = None
    atomic_write_json(root / GALLERY_FILE, [r.to_json() for r in recs])


# --------------------------------------------------------------------------------------- generate


def generate_gallery(
    out: str | Path,
    aspect: str | None,
    models: Sequence[str | ModelSpec],
    prompts: Sequence[str] | None = None,
    *,
    categories: Sequence[str | None] | None = None,
    prompt_source: dict | None = None,
    seed: int = 0,
    resolution: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
    device: str | None = None,
    progress: bool = False,
    dtype: str | None = None,
    offload: str | None = None,
) -> Gallery | None:
    """Render (or resume) a gallery; returns it on the main process, None on the others.

    `prompts` default to the train suites of `aspect` (all prompts of every category of it).
    """
    root = Path(out)
    problem = out_place_problem(root, "--out")
    if problem is not None:
        raise GalleryError(problem)
    if aspect is not None and aspect not in ASPECTS:
        raise GalleryError(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
    specs = [m if isinstance(m, ModelSpec) else parse_model(m) for m in models]
    specs = parse_models([f"{m.name}={m.spec}" for m in specs])
    if not specs:
        raise GalleryError("no models: give --models M1 M2 ...")
    for m in specs:
        check_model_spec(m)
    if prompts is None:
        if aspect is None:
            raise GalleryError("give --aspect (to take the world suites of that aspect) or --prompts FILE")
        pairs = suite_prompts(aspect)
        prompts, categories = [p for p, _ in pairs], [c for _, c in pairs]
        prompt_source = prompt_source or {"kind": "suite", "split": "train", "per_category": None}
    prompts = list(prompts)
    if not prompts:
        raise GalleryError("no prompts")
    if seed < 0:
        raise GalleryError(f"--seed must be >= 0, got {seed}")
    if resolution is not None and resolution < 8:
        raise GalleryError(f"--resolution must be at least 8 px, got {resolution}")
    check_sampling(steps, guidance, batch_size)
    check_world_prompts(prompts, specs)
    names = [m.name for m in specs]
    records = [Record(i, p, {m: image_path(m, i) for m in names}) for i, p in enumerate(prompts)]
    seeds = {r.index: seed + r.index for r in records}
    settings = {"resolution": resolution, "steps": steps, "guidance": guidance}
    if dtype is not None:  # recorded only when given: galleries made before it resume as they were
        settings["dtype"] = dtype
    meta = new_meta(
        aspect,
        [m.to_meta() for m in specs],
        seed=seed,
        seeds={str(i): s for i, s in seeds.items()},
        settings=settings,
        prompt_source=prompt_source or {"kind": "list"},
        prompts_sha256=_prompts_hash(prompts),
        categories={str(r.index): c for r, c in zip(records, categories or [], strict=False) if c},
        complete=False,
    )
    old = _existing_meta(root)
    if old is not None:
        _check_same(root, old, meta)
        meta = {**old, "complete": False}
        _carry_ranks(root, records)
    state = dist_state(device)
    main = state.is_main_process
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if old is None:
            meta["history"] = [
                {"event": "generate", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": names}
            ]
        atomic_write_json(root / META_FILE, meta)
        write_manifest(root, records, names)
        clean_stale_tmp(root, names)
    state.wait_for_everyone()
    info = render_models(
        root,
        records,
        specs,
        seeds,
        resolution=resolution,
        steps=steps,
        guidance=guidance,
        batch_size=batch_size,
        device=device,
        progress=progress,
        on_batch=(lambda: write_manifest(root, records, names)) if main else None,
        state=state,
        dtype=dtype,
        offload=offload,
    )
    state.wait_for_everyone()
    if not main:
        return None
    return finish(root, records, meta, info)


def finish(root: Path, records: Sequence[Record], meta: dict, info: dict[str, dict]) -> Gallery:
    """Main process, after every process is done: merged manifest + final metadata."""
    names = [m["name"] for m in meta["models"]]
    for m in meta["models"]:
        m.update(info.get(m["name"], {}))
    write_manifest(root, records, names)
    missing = [(r.index, m) for r in records for m in names if not (root / image_path(m, r.index)).is_file()]
    if missing:
        i, m = missing[0]
        raise GalleryError(f"{root}: record index {i} has no image of model {m} after rendering")
    meta["complete"] = True
    atomic_write_json(root / META_FILE, meta)
    return load_gallery(root)


def _existing_meta(root: Path) -> dict | None:
    f = root / META_FILE
    if not f.is_file():
        if (root / GALLERY_FILE).is_file():
            raise GalleryError(f"{root}: holds a {GALLERY_FILE} without {META_FILE}; choose another --out")
        return None
    meta = read_json(f, "gallery metadata")
    if not isinstance(meta, dict):
        raise GalleryError(f"{f}: must be a JSON object")
    return meta


def _check_same(root: Path, old: dict, new: dict) -> None:
    """A resumed run must have exactly the settings of the first one."""
    checks = [
        ("aspect", old.get("aspect"), new["aspect"]),
        (
            "models",
            [(m.get("name"), m.get("spec")) for m in old.get("models", [])],
            [(m["name"], m["spec"]) for m in new["models"]],
        ),
        ("seed", old.get("seed"), new["seed"]),
        ("settings", old.get("settings"), new["settings"]),
        ("prompts", old.get("prompts_sha256"), new["prompts_sha256"]),
    ]
    for what, a, b in checks:
        if a != b:
            a_s = a if not isinstance(a, list) else [x if isinstance(x, str) else x[0] for x in a]
            b_s = b if not isinstance(b, list) else [x if isinstance(x, str) else x[0] for x in b]
            raise GalleryError(
                f"{root}: holds a gallery made with other {what} ({a_s}, not {b_s}); resume with the same "
                "command or choose another --out"
            )


def _carry_ranks(root: Path, records: Sequence[Record]) -> None:
    """Keep the ranks of an existing manifest when a finished gallery is run again."""
    f = root / GALLERY_FILE
    if not f.is_file():
        return
    try:
        old = {r.index: r for r in parse_records(read_json(f), str(f))}
    except GalleryError:
        return
    for r in records:
        o = old.get(r.index)
        if o is not None and o.prompt == r.prompt:
            r.rank, r.initial_rank, r.extra = o.rank, o.initial_rank, dict(o.extra)

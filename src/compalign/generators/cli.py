"""Typer commands of the generators stage, for the main CLI to register.

`register(app, world_app)` adds ``compalign generate`` to the root app and ``train``, ``export``,
``presets`` and ``models`` to the ``compalign world`` group. The commands are plain functions
(``*_command``) and can also be registered one by one; `app` is a stand-alone Typer app with all
of them (``python -m compalign.generators.cli``).

Bad input ends with a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from compalign._cli import check_out_dir, check_world_prompts, clip_text
from compalign._cli import fail as _fail
from compalign._cli import note as _note
from compalign.generators.options import (
    Device,
    Dtype,
    Height,
    NumSeeds,
    Offload,
    Overwrite,
    PromptsFile,
    Seeds,
    Width,
)
from compalign.io import atomic_write_json

from .options import generator_options, load_generator
from .registry import (
    FACTORIES,
    ModelNotTrainedError,
    create_generator,
    list_generators,
    shipped_models,
    weights_root,
)


# ----------------------------------------------------------------------------------- generate
def generate_command(
    prompt: Annotated[list[str] | None, typer.Argument(help="Prompts (quote each one).")] = None,
    prompts_file: PromptsFile = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Generator name (world-base, ...) or folder.")
    ] = "world-base",
    seed: Seeds = None,
    num_seeds: NumSeeds = 1,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out"),
    overwrite: Overwrite = False,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps (model default).")] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="Guidance scale (model default).")
    ] = None,
    device: Device = None,
    dtype: Dtype = None,
    offload: Offload = None,
    height: Height = None,
    width: Width = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the generator.")] = False,
    grid_scale: Annotated[int, typer.Option("--grid-scale", help="Grid cell size (4: 1.7 in).")] = 4,
) -> None:
    """Generate images for prompts x seeds; writes PNGs, manifest.json (`compalign world eval OUT`
    reads it) and a labelled grid.png."""
    # lazy: loads diffusers, transformers
    from compalign.world.batch import verdict

    from .generate import generate_images, read_prompts
    from .world.generator import WorldGenerator

    prompts = list(prompt or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            _fail(f"prompt file {prompts_file} does not exist")
        try:
            prompts += read_prompts(prompts_file)
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"{prompts_file}: cannot read prompts ({e})")
    if not prompts:
        _fail("no prompts: give PROMPT arguments or --prompts FILE")
    if num_seeds < 1:
        _fail("--num-seeds must be at least 1")
    seeds = [s + k for s in (seed or [0]) for k in range(num_seeds)]
    if any(s < 0 for s in seeds):
        _fail("seeds must be >= 0")
    if steps is not None and steps < 1:
        _fail(f"--steps must be >= 1, got {steps}")
    if grid_scale < 1:
        _fail(f"--grid-scale must be >= 1, got {grid_scale}")
    options = generator_options(dtype, offload, height, width)
    settings = {
        "command": "generate",
        "model": model,
        "prompts": prompts,
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "dtype": dtype,
        "height": height,
        "width": width,
    }
    folder = check_out_dir(out, settings, overwrite)
    gen = load_generator(model, device, options)
    is_world = isinstance(gen, WorldGenerator)
    if is_world:
        check_world_prompts(prompts, f"world model {model}")
    if compile_:
        gen.compile()
    folder.start()
    try:
        manifest = generate_images(
            prompts,
            model=gen,
            seeds=seeds,
            out_dir=out,
            grid_scale=grid_scale,
            judge=verdict if is_world else None,
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
    except ValueError as e:
        _fail(e)

    manifest["run"] = {
        "device": str(gen.device),
        "dtype": str(gen.dtype).removeprefix("torch."),
        "offload": offload or "none",
        "height": int(getattr(gen, "height", gen.resolution)),
        "width": int(getattr(gen, "width", gen.resolution)),
        "compile": compile_,
    }
    atomic_write_json(out / "manifest.json", manifest)
    n = len(manifest["images"])
    grid = f", grid {out / manifest['grid']}" if manifest["grid"] else ""
    _note(f"wrote {n} image{'s' * (n != 1)} and manifest.json to {out}{grid}")


# ----------------------------------------------------------------------------------- world train
def train_command(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `presets`).")],
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Run folder (default runs/<preset>).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Override the steps.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Override the batch.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the seed.")] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Distillation teacher (name, folder or run).")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu forces the CPU (default: a GPU if any).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Data-rendering processes.")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Checkpoint interval in steps.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any config field, KEY=VALUE (JSON value), e.g. arch.sample_steps=20."),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start over: delete checkpoints instead of resuming.")
    ] = False,
    export: Annotated[
        bool, typer.Option("--export", help="When done, copy the model into the package (fp16).")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar.")] = True,
) -> None:
    """Train a world model from a preset; resumes from the run's latest checkpoint."""
    # lazy: loads diffusers, transformers
    from .world.config import create_preset, list_presets, parse_override
    from .world.train import export_model, train_world_model

    if preset not in list_presets():
        _fail(f"unknown preset {preset!r}; expected one of {', '.join(list_presets())}")
    given = {
        "output_dir": str(output_dir) if output_dir else None,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "seed": seed,
        "teacher": teacher,
        "device": device,
        "num_threads": threads,
        "num_workers": workers,
        "checkpoint_every": checkpoint_every,
    }
    kw = {k: v for k, v in given.items() if v is not None}
    kw["progress"] = progress
    try:
        for text in overrides or []:
            key, value = parse_override(text)
            kw[key] = value
        config = create_preset(preset, **kw)
    except (ValueError, TypeError) as e:
        _fail(str(e))
    _note(f"training {config.name} in {config.run_dir} ({config.max_steps} steps)")
    try:
        final = train_world_model(config, resume=not fresh)
    except ValueError as e:
        _fail(str(e))
    if final is None:
        _note(f"stopped; resume with the same command (checkpoints in {config.run_dir / 'checkpoints'})")
        raise typer.Exit(1)
    _note(f"done: {final}")
    if export:
        dest = export_model(final, config.name)
        _note(f"exported to {dest}")


def export_command(
    run: Annotated[Path, typer.Argument(help="Finished run folder or saved pipeline folder.")],
    name: Annotated[str, typer.Option("--name", help="Model name in the package.")],
    dest: Annotated[
        Path | None, typer.Option("--dest", help="Weights root (default: the package's).")
    ] = None,
) -> None:
    """Copy a trained world model into the package weights (fp16 safetensors)."""
    from .world.train import export_model, folder_size  # lazy: loads diffusers, transformers

    try:
        path = export_model(run, name, dest)
    except FileNotFoundError as e:
        _fail(str(e))
    total = folder_size(path.parent)
    _note(f"exported {name} to {path} ({folder_size(path) / 1e6:.2f} MB; all models {total / 1e6:.2f} MB)")


def presets_command() -> None:
    """List the training presets."""
    from .world.config import list_presets, preset_description  # lazy: loads diffusers, transformers

    for name in list_presets():
        print(f"{name}\t{preset_description(name)}")


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List generators in three sections: shipped world models, presets to train, adapters."""
    from .world.config import list_presets, preset_description  # lazy: loads diffusers, transformers

    shipped = set(shipped_models())
    names = list_generators()
    rows = []
    for name in names:
        if name.endswith(":"):
            factory = FACTORIES.get(name[:-1])
            cls = getattr(factory, "__self__", None)
            if cls is not None:
                steps = "one-step, differentiable" if cls.differentiable else "multi-step"
                about = f"{steps}; default {cls.default_model}"
            else:
                about = "a differentiable base + ReNO noise optimisation: reno:BASE,REWARD=W,..."
            rows.append({"name": name, "kind": "adapter", "shipped": False, "about": about})
            continue
        row = {"name": name, "kind": "world", "shipped": name in shipped}
        if not row["shipped"]:
            row["kind"] = "preset"
        rec = weights_root() / name / "training.json"
        if rec.is_file():
            r = json.loads(rec.read_text())
            row.update(steps=r.get("steps"), wall_time_s=r.get("wall_time_s"))
        if name in list_presets():
            row["about"] = preset_description(name)
            row["summary"] = clip_text(row["about"].split(". ")[0].rstrip("."), 72)
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    sections = (
        ("world", "Shipped world models (use by name, e.g. --model world-base):"),
        ("preset", "Presets to train (compalign world train --preset NAME):"),
        (
            "adapter",
            "Adapters for real pipelines (PREFIX:HUB_ID or PREFIX:FOLDER; an empty rest: the default):",
        ),
    )
    width = max(len(r["name"]) for r in rows) + 2
    for k, (kind, title) in enumerate(sections):
        part = [r for r in rows if r["kind"] == kind]
        if not part:
            continue
        print(("\n" if k else "") + title)
        for r in part:
            extra = f"{r['steps']} steps; " if r.get("steps") else ""
            print(f"  {r['name']:<{width}}{extra}{r.get('summary', r.get('about', ''))}".rstrip())


def quality_command(
    models: Annotated[list[str], typer.Argument(help="Generators (names or folders).")],
    category: Annotated[
        list[str] | None, typer.Option("--category", "-c", help="Categories (default: all).")
    ] = None,
    per_category: Annotated[int | None, typer.Option("--per-category", help="Prompts per category.")] = None,
    num_seeds: Annotated[int, typer.Option("--num-seeds", "-n", help="Seeds per prompt.")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="First seed (seeds are seed..seed+n-1).")] = 0,
    split: Annotated[str, typer.Option("--split", help="heldout or train.")] = "heldout",
    workers: Annotated[int, typer.Option("--workers", help="Evaluator processes.")] = 0,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (auto).")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="World models: sampling steps (default: each model's).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--json", help="Write every figure (and verdict) here.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar.")] = True,
) -> None:
    """Exact-evaluator accuracy of generators on the held-out suites (a table per category)."""
    # lazy: loads scipy (compalign.world)
    from compalign.world.quality import evaluate_generator, format_spread, format_table, gallery_spread
    from compalign.world.suites import CATEGORIES

    bad = [c for c in category or [] if c not in CATEGORIES]
    if bad:
        _fail(f"unknown category {bad[0]!r}; expected one of {', '.join(CATEGORIES)}")
    if split not in ("heldout", "train"):
        _fail(f"--split must be heldout or train, got {split!r}")
    if steps is not None and steps < 1:
        _fail(f"--steps must be >= 1, got {steps}")
    results = []
    for m in models:
        try:
            gen = create_generator(m, device=device, **({} if steps is None else {"steps": steps}))
        except (KeyError, FileNotFoundError, ModelNotTrainedError) as e:
            _fail(str(e).strip("'\""))
        except TypeError:
            _fail(f"--steps is for world models; {m} takes its own number of steps")
        name = getattr(gen, "name", m)
        if name in [r["model"] for r in results]:  # the table's columns and the spread need names
            _fail(f"two models are named {name!r} ({m} is the second); give each model once")
        seeds = list(range(seed, seed + num_seeds))
        results.append(
            evaluate_generator(gen, category, per_category, seeds, split, workers=workers, progress=progress)
        )
    print(format_table(results))
    spread = gallery_spread(results) if len(results) > 1 else None
    if spread and spread["aspects"]:
        print("\n" + format_spread(spread))
    if out is not None:
        atomic_write_json(out, {"models": models, "results": results, "spread": spread})


def register(app: typer.Typer, world_app: typer.Typer) -> None:
    """Add `generate` to the root app and `train`/`export`/`presets`/`models` to `world`."""
    app.command("generate")(generate_command)
    world_app.command("train")(train_command)
    world_app.command("export")(export_command)
    world_app.command("presets")(presets_command)
    world_app.command("models")(models_command)
    world_app.command("quality")(quality_command)


app = typer.Typer(
    help="Generators: world-model training and image generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_world = typer.Typer(help="World models.", no_args_is_help=True)
app.add_typer(_world, name="world")
register(app, _world)

if __name__ == "__main__":
    app()

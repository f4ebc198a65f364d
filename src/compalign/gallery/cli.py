"""``compalign gallery ...``: generate, import, export, expand and check galleries.

Bad input (malformed JSON, a rank that is not a permutation, a missing image, duplicate indices,
an unknown model, ...) ends with one line on stderr naming the file, record and field, exit code
2, and nothing is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .._cli import GreedyListCommand, fail, note
from ..generators.options import generator_options
from ..prompts_io import PromptFileError, read_prompt_file
from .format import GalleryError, gallery_dir, load_gallery

# the world package (scipy) and the stage modules are imported inside the commands, so that
# `compalign --help` starts fast


class GalleryCommand(GreedyListCommand):
    """``--models a b c`` is read as ``--models a --models b --models c``."""

    greedy = ("--models", "-m", "--add-model")


def progress_default(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


app = typer.Typer(
    help=(
        "Model galleries (IterComp): render prompts with several models, adopt / export IterComp "
        "gallery files, add models. Rank them with `compalign rank`, turn ranks into pairs with "
        "`compalign pairs`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ProgressOpt = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")
]


@app.command("generate", cls=GalleryCommand)
def generate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Gallery folder (created; resumed if it exists).")],
    models: Annotated[
        list[str],
        typer.Option(
            "--models",
            "-m",
            help="Models: world name, folder, prefix:source (sd:/path), or NAME=SPEC; several.",
        ),
    ],
    aspect: Annotated[
        str,
        typer.Option("--aspect", help="attribute_binding, spatial_relationship or non_spatial_relationship."),
    ],
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="One prompt a line instead of the world suites.")
    ] = None,
    suite_split: Annotated[
        str, typer.Option("--suite-split", help="Suite split: train or heldout.")
    ] = "train",
    per_category: Annotated[
        int | None, typer.Option("--per-category", help="First N prompts of each suite category.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Record i is rendered with seed S + i.")] = 0,
    resolution: Annotated[
        int | None,
        typer.Option("--resolution", help="Image size (diffusers: rendered at it; others resized)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Sampling steps (default: the model's).")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="Guidance scale (default: the model's).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per generator call.")] = 16,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, ... (default: auto).")] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="fp32, fp16 or bf16 (default: each model's).")
    ] = None,
    offload: Annotated[
        str | None, typer.Option("--offload", help="Diffusers models: none, model or sequential.")
    ] = None,
    progress: ProgressOpt = None,
) -> None:
    """Render the same prompts with several models under the same settings (resumable; shards over
    processes under torchrun / accelerate launch). --resolution sets diffusers models' height and
    width."""
    # lazy: loads accelerate, diffusers, transformers
    from ..world.suites import ASPECTS, SPLITS
    from .generate import generate_gallery, suite_prompts

    if aspect not in ASPECTS:
        fail(f"unknown aspect {aspect!r}; expected one of {', '.join(ASPECTS)}")
    generator_options(dtype, offload, None, None)  # one-line errors for bad values
    if per_category is not None and per_category < 1:
        fail(f"--per-category must be >= 1, got {per_category}")
    categories = None
    try:
        if prompts_file is not None:
            if per_category is not None:
                fail("give either --prompts FILE or --per-category N (suite prompts), not both")
            try:
                prompts = read_prompt_file(prompts_file)
            except PromptFileError as e:
                fail(str(e))
            source = {"kind": "file", "file": str(prompts_file)}
        else:
            if suite_split not in SPLITS:
                fail(f"unknown --suite-split {suite_split!r}; expected one of {', '.join(SPLITS)}")
            pairs = suite_prompts(aspect, suite_split, per_category)
            prompts, categories = [p for p, _ in pairs], [c for _, c in pairs]
            source = {"kind": "suite", "split": suite_split, "per_category": per_category}
        g = generate_gallery(
            out,
            aspect,
            models,
            prompts,
            categories=categories,
            prompt_source=source,
            seed=seed,
            resolution=resolution,
            steps=steps,
            guidance=guidance,
            batch_size=batch_size,
            device=device,
            progress=progress_default(progress),
            dtype=dtype,
            offload=None if offload in (None, "none") else offload,
        )
    except GalleryError as e:
        fail(str(e))
    if g is not None:
        note(f"gallery of {len(g.records)} records x {len(g.models)} models ({', '.join(g.models)}) in {out}")


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="IterComp gallery JSON (a list of records).")],
    root: Annotated[
        Path, typer.Option("--root", help="Folder the image paths are relative to; the gallery's home.")
    ],
    aspect: Annotated[
        str | None,
        typer.Option("--aspect", help="The gallery's aspect (default: inferred from the image paths)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a gallery already in --root.")] = False,
) -> None:
    """Validate an IterComp gallery file and adopt it (writes ROOT/gallery.json and its sidecars)."""
    from .itercomp import import_gallery  # lazy: loads scipy (compalign.world)

    try:
        g = import_gallery(file, root, aspect, force)
    except GalleryError as e:
        fail(str(e))
    s = g.summary()
    note(f"imported {s['records']} records x {len(s['models'])} models ({s['ranked']} ranked) into {root}")


@app.command("export")
def export_command(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder (or its gallery.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="IterComp JSON file to write.")],
    path_prefix: Annotated[
        str | None,
        typer.Option("--path-prefix", help="Prefix for the image paths (e.g. datasets/train/...)."),
    ] = None,
    absolute: Annotated[bool, typer.Option("--absolute", help="Write absolute image paths.")] = False,
) -> None:
    """Write the gallery in IterComp's exact format (index, prompt, image_<model>, [initial_rank], rank)."""
    from .itercomp import export_gallery  # lazy: loads scipy (compalign.world)

    if path_prefix and absolute:
        fail("give --path-prefix or --absolute, not both")
    try:
        g = export_gallery(gallery, out, path_prefix, absolute)
    except GalleryError as e:
        fail(str(e))
    note(f"wrote {len(g.records)} records to {out}")


@app.command("expand", cls=GalleryCommand)
def expand_command(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder (or its gallery.json).")],
    add_model: Annotated[
        list[str], typer.Option("--add-model", help="Models to add (as in generate --models); several.")
    ],
    rank: Annotated[
        str | None,
        typer.Option(
            "--rank",
            help="Merge: auto (re-rank by the judge), people (insertion questions), none "
            "[default: how the gallery was ranked].",
        ),
    ] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="Judge for --rank auto (default: the gallery's).")
    ] = None,
    tie_break: Annotated[str | None, typer.Option("--tie-break", help="world-clip or none.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Base seed when the gallery has none (imported).")
    ] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", help="Default: the gallery's.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Default: the gallery's.")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Default: the gallery's.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    device: Annotated[str | None, typer.Option("--device")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Evaluator processes for --rank auto.")] = 0,
    progress: ProgressOpt = None,
) -> None:
    """Add models to a gallery: render them for every record, keep the old rank as initial_rank and
    merge (auto: re-rank; people: binary-insertion questions in `rank serve`, then `rank export`)."""
    from .expand import expand_gallery  # lazy: loads accelerate, diffusers, transformers

    try:
        s = expand_gallery(
            gallery,
            add_model,
            mode=rank,
            judge=judge,
            tie_break=tie_break,
            seed=seed,
            resolution=resolution,
            steps=steps,
            guidance=guidance,
            batch_size=batch_size,
            device=device,
            workers=workers,
            progress=progress_default(progress),
        )
    except GalleryError as e:
        fail(str(e))
    if s is None:
        return
    for n in s["notes"]:
        note(f"note: {n}")
    msg = (
        f"added {', '.join(s['added'])} to {s['records']} records; "
        f"{s['initial_kept']} kept their rank as initial_rank"
    )
    if s["mode"] == "auto":
        msg += f"; re-ranked by {s['judge']}"
    elif s["mode"] == "people":
        msg += (
            f"; {s['insertion_jobs']} records wait for comparisons: `compalign rank serve {gallery}`, "
            f"then `compalign rank export {gallery}`"
        )
    note(msg)


@app.command("check")
def check_command(
    gallery: Annotated[Path, typer.Argument(help="Gallery folder (or its gallery.json).")],
) -> None:
    """Check a gallery (JSON, fields, models, ranks, ties, image files) and print a summary."""
    try:
        g = load_gallery(gallery_dir(gallery))
    except GalleryError as e:
        fail(str(e))
    print(json.dumps(g.summary(), indent=2))

"""`compalign` command line: one sub-command group per stage of the pipeline.

Bad input (unknown category, prompt outside the grammar, broken manifest, wrong image size) ends
with a one-line message on stderr and exit code 2, and nothing is written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from typer.core import TyperGroup

from . import __version__
from ._cli import check_out_dir, fail
from ._cli import note as _note
from .feedback.cli import app as feedback_app
from .gallery.cli import app as gallery_app
from .generators.cli import register as register_generators
from .iterate.cli import register as register_iterate
from .noise_optimization.cli import register as register_reno
from .pairs.cli import pairs_command
from .prompts_io import PromptFileError, read_prompt_file
from .ranking.cli import app as rank_app
from .rewards.cli import app as reward_app

# the world package (scipy) and rich are imported inside the commands: `compalign --help` starts fast
STAGES = {
    "world": "Prompt suites, renderer, exact evaluator; world models.",
    "generate": "Images for prompts x seeds from any generator.",
    "reward": "Reward models: the world CLIP, rewards trained on pairs.",
    "reno": "ReNO: optimise a one-step generator's noise against rewards.",
    "gallery": "The same prompts rendered by several models (IterComp).",
    "rank": "Rank a gallery: by the evaluator, a reward, or people.",
    "pairs": "Ranked galleries -> (better, worse) pairs for reward training.",
    "feedback": "Fine-tune a generator against rewards (ReFL).",
    "iterate": "IterComp's loop: gallery, rank, pairs, rewards, feedback.",
}
"""One line per stage for `compalign --help` (each group's and command's short help)."""


class _StageOrder(TyperGroup):
    """Lists the stages in the order of the data flow (`STAGES`)."""

    def list_commands(self, ctx) -> list[str]:
        order = list(STAGES)
        return sorted(self.commands, key=lambda n: (order.index(n) if n in order else len(order), n))


app = typer.Typer(
    name="compalign",
    cls=_StageOrder,
    help=(
        "Compositional text-to-image alignment: ReNO noise optimisation and IterComp feedback "
        "learning, measured on an embedded world with an exact evaluator.\n\n"
        "Data flow: prompts -> generators -> images -> evaluator / rewards -> noise optimisation and "
        "feedback training. Every stage that writes images writes a manifest.json that "
        "`compalign world eval` scores. The stages, in the order of the data flow: world, generate, "
        "reward, reno, gallery, rank, pairs, feedback, iterate."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
world_app = typer.Typer(
    help="The embedded world: prompt suites, rendering, exact evaluation, demo.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(world_app, name="world")

SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (>= 0); same seed, same output.")]


def _console():
    from rich.console import Console  # lazy: rich adds ~40 ms to `compalign --help`

    return Console(highlight=False)


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _version_callback(value: bool) -> None:
    if value:
        print(f"compalign {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    pass


# --------------------------------------------------------------------------------------------
# world


def _check_categories(categories: list[str]) -> list[str]:
    from .world.suites import CATEGORIES  # lazy: loads scipy (compalign.world)

    if any(c == "all" for c in categories):
        return list(CATEGORIES)
    out = []
    for c in categories:
        if c not in CATEGORIES:
            fail(f"unknown category {c!r}; expected 'all' or one of: {', '.join(CATEGORIES)}")
        if c not in out:
            out.append(c)
    return out


def _check_split(split: str) -> str:
    from .world.suites import SPLITS  # lazy: loads scipy (compalign.world)

    if split not in SPLITS:
        fail(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    return split


def _suite_selection(
    category: str, split: str, limit: int | None, seed: int | None
) -> tuple[list[str], list[int]]:
    """(prompts, their indices in the suite): the first `limit`, or a seeded sample of `limit`."""
    from .world.suites import load_suite  # lazy: loads scipy (compalign.world)

    prompts = load_suite(category, split)
    idx = list(range(len(prompts)))
    if seed is not None and limit is not None and limit < len(prompts):
        idx = sorted(
            np.random.default_rng([seed, 0x5E1EC7]).choice(len(prompts), limit, replace=False).tolist()
        )
    elif limit is not None:
        idx = idx[:limit]
    return [prompts[i] for i in idx], idx


def _check_counts(limit: int | None = None, seed: int | None = None, res: int | None = None) -> None:
    if limit is not None and limit < 1:
        fail(f"--limit must be >= 1, got {limit}")
    if seed is not None and seed < 0:
        fail(f"--seed must be >= 0, got {seed}")
    if res is not None and res < 16:
        fail(f"--res must be at least 16 px, got {res}")


@world_app.command("prompts")
def world_prompts(
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", help="Suite category (repeatable, or 'all')."),
    ] = None,
    split: Annotated[str, typer.Option(help="train or heldout.")] = "heldout",
    limit: Annotated[int | None, typer.Option(help="At most N prompts per category.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of one prompt per line.")
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="List the categories with their aspect and prompt counts.")
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="With --limit: a seeded random sample instead of the first N."),
    ] = None,
) -> None:
    """List the prompts of a suite (one per line), or the categories with --all."""
    # lazy: loads scipy (compalign.world)
    from .world.suites import CATEGORIES, CATEGORY_ASPECT, SUITE_VERSION, load_suite

    _check_counts(limit, seed)
    if all_:
        rows = [
            {
                "category": c,
                "aspect": CATEGORY_ASPECT[c],
                "train": len(load_suite(c, "train")),
                "heldout": len(load_suite(c, "heldout")),
            }
            for c in CATEGORIES
        ]
        if as_json:
            print(json.dumps({"suite_version": SUITE_VERSION, "categories": rows}, indent=2))
            return
        from rich.table import Table  # lazy: rich adds ~40 ms to `compalign --help`

        table = Table(title=f"world prompt suites {SUITE_VERSION}")
        for col, just in (("category", "left"), ("aspect", "left"), ("train", "right"), ("heldout", "right")):
            table.add_column(col, justify=just)
        for r in rows:
            table.add_row(r["category"], r["aspect"] or "-", str(r["train"]), str(r["heldout"]))
        _console().print(table)
        return
    if not category:
        fail("give --category C (repeatable, or 'all'), or --all to list the categories")
    cats = _check_categories(category)
    _check_split(split)
    out = []
    for c in cats:
        prompts, idx = _suite_selection(c, split, limit, seed)
        out.extend(
            {"category": c, "split": split, "index": i, "prompt": p}
            for i, p in zip(idx, prompts, strict=True)
        )
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        for r in out:
            print(r["prompt"])


def _read_prompt_file(path: Path) -> list[str]:
    try:
        return read_prompt_file(path)
    except PromptFileError as e:
        fail(str(e))


def _print_table(report: dict, title: str) -> None:
    from rich.table import Table  # lazy: rich adds ~40 ms to `compalign --help`

    table = Table(title=title)
    table.add_column("category")
    table.add_column("aspect")
    table.add_column("n", justify="right")
    table.add_column("pass rate", justify="right")
    table.add_column("mean score", justify="right")
    for c, s in report["categories"].items():
        table.add_row(c, s["aspect"] or "-", str(s["n"]), f"{s['pass_rate']:.3f}", f"{s['mean_score']:.3f}")
    o = report["overall"]
    table.add_section()
    table.add_row("overall", "", str(o["n"]), f"{o['pass_rate']:.3f}", f"{o['mean_score']:.3f}", style="bold")
    _console().print(table)


def _render(items, out: Path, res: int, seed: int, layouts=None):
    from .world.batch import RenderError, render_set  # lazy: loads scipy (compalign.world)

    if out.exists() and not out.is_dir():
        fail(f"{out}: --out must be a folder, and a file of that name exists")
    try:
        return render_set(items, out, res=res, seed=seed, progress=_show_progress(), layouts=layouts)
    except RenderError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write to {out}: {e}")


def _evaluate(directory: Path, out: Path | None):
    # lazy: loads scipy (compalign.world)
    from .world.batch import evaluate_dir
    from .world.io import ManifestError

    if out is not None and out.is_dir():
        fail(f"{out}: --out must be a file name, and a folder of that name exists")
    try:
        return evaluate_dir(directory, out, progress=_show_progress())
    except ManifestError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write the report: {e}")


@world_app.command("render")
def world_render(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (PNGs + manifest.json).")],
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", help="Suite category (repeatable, or 'all')."),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="File with one prompt per line.")
    ] = None,
    split: Annotated[str, typer.Option(help="Suite split: train or heldout.")] = "heldout",
    res: Annotated[int, typer.Option(help="Image resolution in pixels.")] = 32,
    seeds: Annotated[int, typer.Option(help="Images per prompt (different layouts).")] = 1,
    seed: SeedOpt = 0,
    limit: Annotated[
        int | None, typer.Option(help="At most N prompts per category (or of the prompt list).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run with other settings in --out.")
    ] = False,
) -> None:
    """Render suite prompts or your own prompts to PNGs plus a manifest.json."""
    from .world.batch import RenderError, layouts_for, plan  # lazy: loads scipy (compalign.world)

    _check_counts(limit, seed, res)
    if seeds < 1:
        fail(f"--seeds must be >= 1, got {seeds}")
    groups: list = []
    if category:
        _check_split(split)
        for c in _check_categories(category):
            prompts, idx = _suite_selection(c, split, limit, None)
            groups.append((c, prompts, idx))
    user = list(prompt or []) + (_read_prompt_file(prompts_file) if prompts_file else [])
    if user:
        groups.append((None, user[:limit] if limit else user, None))
    if not groups:
        fail("nothing to render: give --category, --prompt or --prompts")
    items = plan(groups, seeds)
    settings = {
        "command": "world render",
        "res": res,
        "seed": seed,
        "images": [[it.file, it.prompt, it.category] for it in items],
    }
    folder = check_out_dir(out, settings, overwrite)
    try:
        layouts = layouts_for(items, seed)  # every prompt and layout checked before anything is written
    except RenderError as e:
        fail(str(e))
    folder.start()
    t0 = time.perf_counter()
    manifest = _render(items, out, res, seed, layouts)
    _note(f"rendered {len(manifest.images)} images at {res} px to {out} in {time.perf_counter() - t0:.1f} s")


@world_app.command("eval")
def world_eval(
    directory: Annotated[Path, typer.Argument(help="Folder with manifest.json (or the manifest itself).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report file [default: DIR/eval.json].")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Accepted for uniformity; the evaluator is deterministic.")
    ] = 0,
) -> None:
    """Evaluate a folder of images against its manifest's prompts with the exact evaluator."""
    _check_counts(seed=seed)
    t0 = time.perf_counter()
    run = _evaluate(directory, out)
    _print_table(run.report, f"world evaluator on {directory}")
    n, secs = run.report["overall"]["n"], time.perf_counter() - t0
    _note(f"evaluated {n} images in {secs:.1f} s; report: {run.path}")


@world_app.command("demo")
def world_demo(
    res: Annotated[int, typer.Option(help="Image resolution in pixels.")] = 32,
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/world-demo"),
    per_category: Annotated[int, typer.Option(help="Held-out prompts per category.")] = 10,
) -> None:
    """Render held-out prompts of every category, evaluate them, print the table, save grid.png."""
    # lazy: loads scipy (compalign.world)
    from .world.batch import plan, save_grid
    from .world.suites import CATEGORIES

    _check_counts(per_category, seed, res)
    t0 = time.perf_counter()
    groups = []
    for c in CATEGORIES:
        prompts, idx = _suite_selection(c, "heldout", per_category, None)
        groups.append((c, prompts, idx))
    _render(plan(groups), out, res, seed)
    run = _evaluate(out, None)
    grid = save_grid(run.image_set, out / "grid.png", run.report)
    _print_table(run.report, f"world demo: clean renders of held-out prompts ({res} px, seed {seed})")
    _note(
        f"{run.report['overall']['n']} images with manifest.json and {run.path.name} in {out}; "
        f"contact sheet {grid}; {time.perf_counter() - t0:.1f} s"
    )


def _register_stages() -> None:
    """Stages that live in their own packages add their commands here."""
    register_generators(app, world_app)
    app.add_typer(reward_app, name="reward")
    register_reno(app)

    app.add_typer(gallery_app, name="gallery")
    app.add_typer(rank_app, name="rank")
    app.command("pairs")(pairs_command)
    app.add_typer(feedback_app, name="feedback")
    register_iterate(app)
    for info in [*app.registered_commands, *app.registered_groups]:
        name = info.name or getattr(info.callback, "__name__", "")
        if name in STAGES:
            info.short_help = STAGES[name]
    for group in [world_app, *(g.typer_instance for g in app.registered_groups)]:
        # plain help: option names are never cut at 80 columns, help text wraps
        group.rich_markup_mode = None
        group.info.context_settings = {
            "help_option_names": ["-h", "--help"],
            "max_content_width": 100,
            **(group.info.context_settings or {}),
        }


_register_stages()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

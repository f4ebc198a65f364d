"""``compalign rank ...``: rank a gallery by a judge (auto) or by people (serve, export)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .._cli import fail, note
from ..gallery.cli import progress_default
from ..gallery.format import GalleryError, gallery_dir, load_gallery

# the world package (scipy) and the stage modules are imported inside the commands, so that
# `compalign --help` starts fast

app = typer.Typer(
    help=(
        "Rank gallery records: `auto` by the exact world evaluator (or any reward), `serve` a local web "
        "tool for people, `export` people's rankings (Borda count) into gallery.json."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

GalleryArg = Annotated[Path, typer.Argument(help="Gallery folder (or its gallery.json).")]


@app.command("auto")
def auto_command(
    gallery: GalleryArg,
    judge: Annotated[
        str, typer.Option("--judge", help="world (exact evaluator) or reward:NAME (any registered reward).")
    ] = "world",
    tie_break: Annotated[
        str,
        typer.Option(
            "--tie-break", help="world judge: break evaluator ties by world-clip, or none (explicit ties)."
        ),
    ] = "world-clip",
    workers: Annotated[int, typer.Option("--workers", help="Evaluator processes.")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="Device of a reward judge (default: auto).")
    ] = None,
    rejudge: Annotated[
        bool,
        typer.Option(
            "--rejudge", help="world judge: judge every image again (default: reuse stored verdicts)."
        ),
    ] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
) -> None:
    """Rank every record's images by a judge and write the rank lists (ties kept in the sidecar)."""
    from .auto import rank_gallery  # lazy: loads scipy (compalign.world)

    try:
        g = load_gallery(gallery_dir(gallery))
        s = rank_gallery(
            g,
            judge,
            tie_break,
            workers=workers,
            device=device,
            progress=progress_default(progress),
            rejudge=rejudge,
        )
    except GalleryError as e:
        fail(str(e))
    for n in s["notes"]:
        note(f"note: {n}")
    note(
        f"ranked {s['records']} records by {judge} (tie-break: {s['tie_break']}); "
        f"{s['tie_groups']} tie group(s) kept as ties"
    )


@app.command("serve")
def serve_command(
    gallery: GalleryArg,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (keep 127.0.0.1 unless you mean it).")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port).")] = 8765,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every request.")] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Secret every request must carry (in the printed link); default: a random one off loopback, "
            "none on loopback.",
        ),
    ] = None,
) -> None:
    """Serve the web tool for people to rank the gallery (rankings go to GALLERY/rankings.sqlite).

    Off loopback (e.g. --host 0.0.0.0) every request needs the token of the printed link."""
    from .server import LOOPBACK, make_server  # lazy: http.server adds ~20 ms to `compalign --help`

    if not 0 <= port <= 65535:
        fail(f"--port must be in 0..65535, got {port}")
    try:
        server = make_server(gallery, host, port, verbose, token=token)
    except GalleryError as e:
        fail(str(e))
    if host not in LOOPBACK:
        note(
            f"listening on {host}: anyone who can reach this machine and has the link (it carries the token) "
            "can read and rank the gallery"
        )
    note(f"ranking {len(server.app.g.records)} records at {server.link}  (Ctrl-C stops)")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("export")
def export_command(gallery: GalleryArg) -> None:
    """Write people's rankings into gallery.json (Borda count over annotators, ties explicit) and
    print the agreement (mean pairwise Kendall tau-b over shared records)."""
    from .people import export_people, open_store  # lazy: sqlite3 and http.server (as above)
    from .store import DB_FILE

    try:
        g = load_gallery(gallery_dir(gallery))
    except GalleryError as e:
        fail(str(e))
    if not (g.root / DB_FILE).is_file():
        fail(f"{g.root / DB_FILE}: no rankings yet; collect some with `compalign rank serve {gallery}`")
    s = export_people(g, open_store(g))
    a = s["agreement"]
    print(
        f"exported {s['exported']} of {s['records']} records from {len(s['annotators'])} annotator(s) "
        "(Borda count; equal totals are ties)"
    )
    if s["waiting_for_comparisons"]:
        print(f"{len(s['waiting_for_comparisons'])} record(s) still wait for insertion comparisons")
    if a["mean_tau"] is None:
        print("agreement: no record ranked by two annotators yet")
    else:
        extra = f", {a['n_undefined']} undefined" if a["n_undefined"] else ""
        print(
            f"agreement: mean Kendall tau-b {a['mean_tau']:.3f} over {a['n_pairs']} (annotator pair, record) "
            f"comparisons on {a['shared_records']} shared records{extra}"
        )

"""Run noise optimization over a task and write its results (resumable).

Output folder::

    <out>/<item path>.png              best image of each (prompt, seed), in the task's layout
                                       (GenEval's, T2I-CompBench's ``samples/``, or one folder a prompt)
    <out>/manifest.json                the best images' prompts (``compalign world eval <out>``)
    <out>/_initial/<item path>.png     the image of the initial noise (the "before"), with its own
    <out>/_initial/manifest.json       manifest (``compalign world eval <out>/_initial``)
    <out>/_logs/<item path>.json       each image's log: every reward at every iteration, best
                                       iteration, exact-evaluator verdicts (world prompts)
    <out>/_iters/<item path>/NNN.png   every iteration's image (``save_iterations``)
    <out>/results.json                 run settings + one summary line per item (atomic)
    <out>/rewards.png                  mean reward curves over the items (one panel per reward)
    <out>/before_after.png             initial vs best images of the first items, labelled

Logs and iterations live outside the task's layout, so benchmark scripts that list the image
folders (GenEval, T2I-CompBench) see images only. Items whose image and log already exist are
skipped, so an interrupted run continues.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_write_bytes, atomic_write_json
from ..plots import Cell, image_grid, pyplot, save_figure, wrap
from ..world.io import ImageEntry, Manifest, write_manifest
from ..world.suites import CATEGORIES
from .reno import ReNOConfig, WeightedReward, optimize_noise
from .tasks import TaskItem, write_geneval_metadata

INITIAL_DIR = "_initial"
LOG_DIR = "_logs"
ITERS_DIR = "_iters"
GRID_ITEMS = 8
"""Items shown in ``before_after.png``."""

Judge = Callable[[np.ndarray, str], "dict | None"]
"""`judge(image [H, W, 3] uint8, prompt) -> {"passed": bool, "score": float}` or None (not judged)."""


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _to_png_bytes(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def log_path(out: Path, item: TaskItem) -> Path:
    return out / LOG_DIR / Path(item.out).with_suffix(".json")


def _done(out: Path, item: TaskItem) -> bool:
    return (out / item.out).is_file() and log_path(out, item).is_file()


def run_task(
    generator,
    rewards: Sequence[WeightedReward],
    items: Sequence[TaskItem],
    out_dir: str | Path,
    config: ReNOConfig | None = None,
    batch_size: int = 16,
    save_iterations: bool = False,
    progress: bool = True,
    settings: dict | None = None,
    judge: Judge | None = None,
    run_info: dict | None = None,
) -> dict:
    """Optimise every item (in batches), write images, logs and manifests; returns the summary.

    `judge` (world prompts: the exact evaluator) gives each initial and best image a verdict;
    `run_info` is recorded in ``results.json`` as it is (the command's options)."""
    config = config or ReNOConfig()
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_geneval_metadata(list(items), out)
    todo = [it for it in items if not _done(out, it)]
    inner = ReNOConfig(**{**config.__dict__, "progress": False, "keep_all_images": save_iterations})
    n_iter = 1 if config.search == "none" else config.iterations
    bar = tqdm(
        total=len(items) * n_iter,
        initial=(len(items) - len(todo)) * n_iter,
        desc=config.search,
        unit="img-it",
        disable=not progress,
        dynamic_ncols=True,
    )
    checkpointed: set[str] = set()
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        start = bar.n

        def tick(it: int, images: torch.Tensor, record: dict, n: int = len(batch)) -> None:
            bar.update(n)
            bar.set_postfix(loss=f"{float(np.mean(record['loss'])):.4f}")

        res = optimize_noise(
            generator,
            [it.prompt for it in batch],
            rewards,
            [it.seed for it in batch],
            inner,
            callback=tick,
            **(settings or {}),
        )
        checkpointed.update(res.checkpointed)
        for b, it in enumerate(batch):
            _write_item(out, it, res, b, save_iterations, judge)
        bar.update(start + len(batch) * n_iter - bar.n)  # samples that stopped early
    bar.close()
    info = dict(run_info or {})
    if hasattr(generator, "settings"):
        info.setdefault("generator", {"name": getattr(generator, "name", None), **generator.settings()})
    if checkpointed:
        info["checkpointed"] = sorted(checkpointed)
    return write_summary(out, items, rewards, config, info)


def _write_item(out: Path, it: TaskItem, res, b: int, save_iterations: bool, judge: Judge | None) -> None:
    path = out / it.out
    if save_iterations and res.all_images is not None:
        d = out / ITERS_DIR / Path(it.out).with_suffix("")
        for k, imgs in enumerate(res.all_images):
            atomic_write_bytes(d / f"{k:03d}.png", _to_png_bytes(imgs[b]))
    log = {
        "prompt": it.prompt,
        "seed": it.seed,
        "meta": it.meta,
        "best_iteration": res.best_iteration[b],
        "initial_loss": res.initial_loss[b],
        "best_loss": res.best_loss[b],
        "iterations_run": res.iterations_run[b],
        "rewards": {
            name: [h["rewards"][name][b] for h in res.history[: res.iterations_run[b]]]
            for name in res.history[0]["rewards"]
        },
        "loss": [h["loss"][b] for h in res.history[: res.iterations_run[b]]],
    }
    if judge is not None:
        verdicts = {
            "initial": judge(_to_uint8(res.initial_images[b]), it.prompt),
            "best": judge(_to_uint8(res.best_images[b]), it.prompt),
        }
        if all(v is not None for v in verdicts.values()):
            log["verdict"] = verdicts
    atomic_write_bytes(out / INITIAL_DIR / it.out, _to_png_bytes(res.initial_images[b]))
    atomic_write_bytes(path, _to_png_bytes(res.best_images[b]))
    atomic_write_json(log_path(out, it), log)


def write_manifests(out: Path, items: Sequence[TaskItem]) -> None:
    """``manifest.json`` of the best images in `out` and of the initial ones in ``_initial/``."""

    done = [it for it in items if _done(out, it)]
    if not done:
        return
    with Image.open(out / done[0].out) as im:
        resolution = int(im.size[1])
    for folder in (out, out / INITIAL_DIR):
        entries = []
        for it in done:
            cat = it.meta.get("category")
            extra = {k: v for k, v in it.meta.items() if k in ("index",)}
            entries.append(ImageEntry(it.out, it.prompt, cat if cat in CATEGORIES else None, it.seed, extra))
        write_manifest(folder, Manifest(resolution=resolution, images=entries))


def write_summary(out: Path, items, rewards, config, run_info: dict | None = None) -> dict:
    """``results.json``, the manifests, ``rewards.png`` and ``before_after.png`` from the logs on disk."""
    logs = []
    for it in items:
        p = log_path(out, it)
        if p.is_file():
            logs.append({"out": it.out, **json.loads(p.read_text())})
    names = [r.name for r in rewards]
    summary = {
        "config": {k: v for k, v in config.__dict__.items() if k != "progress"},
        "run": dict(run_info or {}),
        "rewards": [{"name": r.name, "weight": r.weight, "optimized": r.optimize} for r in rewards],
        "items": [
            {
                "out": lg["out"],
                "prompt": lg["prompt"],
                "seed": lg["seed"],
                "best_iteration": lg["best_iteration"],
                "iterations_run": lg["iterations_run"],
                "initial": {n: lg["rewards"][n][0] for n in names},
                "best": {n: lg["rewards"][n][lg["best_iteration"]] for n in names},
                **({"passed": {k: v["passed"] for k, v in lg["verdict"].items()}} if "verdict" in lg else {}),
            }
            for lg in logs
        ],
    }
    if summary["items"]:
        summary["mean"] = {
            n: {
                "initial": float(np.mean([x["initial"][n] for x in summary["items"]])),
                "best": float(np.mean([x["best"][n] for x in summary["items"]])),
            }
            for n in names
        }
        judged = [x["passed"] for x in summary["items"] if "passed" in x]
        if judged and len(judged) == len(summary["items"]):
            summary["evaluation"] = {
                "initial": float(np.mean([j["initial"] for j in judged])),
                "best": float(np.mean([j["best"] for j in judged])),
                "n": len(judged),
            }
    atomic_write_json(out / "results.json", summary)
    write_manifests(out, items)
    if logs:
        plot_rewards(logs, names, out / "rewards.png")
        shown = [r.name for r in rewards if r.optimize] or names
        save_before_after(out, logs[:GRID_ITEMS], shown, config.search, len(logs))
    return summary


def plot_rewards(logs: list[dict], names: list[str], path: Path) -> None:
    """Mean (and per-item, faint) reward per iteration, one panel per reward."""

    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, n in zip(axes[0], names, strict=True):
        curves = [lg["rewards"][n] for lg in logs]
        length = max(len(c) for c in curves)
        padded = np.array([c + [c[-1]] * (length - len(c)) for c in curves])
        for c in padded[:32]:
            ax.plot(c, color="0.8", lw=0.6)
        ax.plot(padded.mean(0), color="C0", lw=2, label="mean")
        ax.set_title(n)
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("reward (higher is better)")
    fig.tight_layout()
    save_figure(fig, path)


def save_before_after(out: Path, logs: list[dict], names: list[str], search: str, total: int) -> Path:
    """``before_after.png``: per item (columns) the initial image above the best one, each with
    its prompt, seed and rewards; a green / red frame where the exact evaluator judged it."""

    rows: list[list[Cell]] = [[], []]
    for lg in logs:
        before = np.asarray(Image.open(out / INITIAL_DIR / lg["out"]).convert("RGB"))
        after = np.asarray(Image.open(out / lg["out"]).convert("RGB"))
        verdict = lg.get("verdict") or {}
        b = lg["best_iteration"]
        first = "\n".join(f"{n} {lg['rewards'][n][0]:.3f}" for n in names[:3])
        best = "\n".join(
            f"{n} {lg['rewards'][n][b]:.3f} ({lg['rewards'][n][b] - lg['rewards'][n][0]:+.3f})"
            for n in names[:3]
        )
        title = f"{wrap(lg['prompt'], 24, 3)}\nseed {lg['seed']}"
        rows[0].append(Cell(before, title, first, (verdict.get("initial") or {}).get("passed")))
        rows[1].append(Cell(after, None, f"{best}\niteration {b}", (verdict.get("best") or {}).get("passed")))
    judged = any("verdict" in lg for lg in logs)
    title = f"{search}: before (initial noise) and after (best image); first {len(logs)} of {total} images"
    if judged:
        title += "; green frame: passes the exact evaluator, red: fails"
    return image_grid(rows, out / "before_after.png", title, ["before", "after"])

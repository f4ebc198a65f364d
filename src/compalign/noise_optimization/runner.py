"""Run noise optimization over a task and write its results (resumable).

Output folder::

    <out>/<item path>.png              best image of each (prompt, seed)
    <out>/<item path>.json             its log: every reward at every iteration, best iteration
    <out>/<item path>.iters/NNN.png    every iteration's image (``save_iterations``)
    <out>/_initial/<item path>.png     the image of the initial noise (the "before")
    <out>/results.json                 run settings + one summary line per item (atomic)
    <out>/rewards.png                  mean reward curves over the items (one panel per reward)
    <out>/before_after.png             initial vs best images (first 16 items)

Items whose image and log already exist are skipped, so an interrupted run continues.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..io import atomic_write_bytes, atomic_write_json
from .reno import ReNOConfig, WeightedReward, optimize_noise
from .tasks import TaskItem, write_geneval_metadata

INITIAL_DIR = "_initial"


def _to_png_bytes(image: torch.Tensor) -> bytes:
    import io

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _done(out: Path, item: TaskItem) -> bool:
    p = out / item.out
    return p.is_file() and p.with_suffix(".json").is_file()


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
) -> dict:
    """Optimise every item (in batches), write images and logs; returns the results summary."""
    config = config or ReNOConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_geneval_metadata(list(items), out)
    todo = [it for it in items if not _done(out, it)]
    inner = ReNOConfig(**{**config.__dict__, "progress": False, "keep_all_images": save_iterations})
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=config.search, disable=not progress)
    before_after: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        res = optimize_noise(
            generator,
            [it.prompt for it in batch],
            rewards,
            [it.seed for it in batch],
            inner,
            **(settings or {}),
        )
        for b, it in enumerate(batch):
            path = out / it.out
            path.parent.mkdir(parents=True, exist_ok=True)
            if save_iterations and res.all_images is not None:
                d = path.with_suffix(".iters")
                d.mkdir(exist_ok=True)
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
            init = out / INITIAL_DIR / it.out
            init.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(init, _to_png_bytes(res.initial_images[b]))
            atomic_write_bytes(path, _to_png_bytes(res.best_images[b]))
            atomic_write_json(path.with_suffix(".json"), log)
            if len(before_after) < 16:
                before_after.append((res.initial_images[b], res.best_images[b]))
        bar.update(len(batch))
    bar.close()
    return write_summary(out, items, rewards, config, before_after)


def write_summary(out: Path, items, rewards, config, before_after) -> dict:
    logs = []
    for it in items:
        p = (out / it.out).with_suffix(".json")
        if p.is_file():
            logs.append({"out": it.out, **json.loads(p.read_text())})
    names = [r.name for r in rewards]
    summary = {
        "config": {k: v for k, v in config.__dict__.items() if k != "progress"},
        "rewards": [{"name": r.name, "weight": r.weight, "optimized": r.optimize} for r in rewards],
        "items": [
            {
                "out": lg["out"],
                "prompt": lg["prompt"],
                "seed": lg["seed"],
                "best_iteration": lg["best_iteration"],
                "initial": {n: lg["rewards"][n][0] for n in names},
                "best": {n: lg["rewards"][n][lg["best_iteration"]] for n in names},
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
    atomic_write_json(out / "results.json", summary)
    if logs:
        plot_rewards(logs, names, out / "rewards.png")
    if before_after:
        save_before_after(before_after, out / "before_after.png")
    return summary


def plot_rewards(logs: list[dict], names: list[str], path: Path) -> None:
    """Mean (and per-item, faint) reward per iteration, one panel per reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def save_before_after(pairs: list[tuple[torch.Tensor, torch.Tensor]], path: Path, scale: int = 4) -> None:
    """Two rows: initial images on top, best images below."""
    tiles = []
    for row in (0, 1):
        imgs = [p[row] for p in pairs]
        tiles.append(torch.cat([torch.nn.functional.pad(im, (1, 1, 1, 1), value=1.0) for im in imgs], dim=2))
    grid = torch.cat(tiles, dim=1)
    if grid.shape[-1] < 256:
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    atomic_write_bytes(path, _to_png_bytes(grid))

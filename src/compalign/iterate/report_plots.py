"""The figures of an iteration's report (``iter_<k>/plots/*.png``, matplotlib Agg, written
atomically): accuracy bars, the feedback run's aspect rewards, the two bases' sample grid and the
progress across iterations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..plots import frame, pyplot, save_figure, wrap
from ..world.suites import CATEGORY_ASPECT
from .eval_store import eval_images_path, load_eval_images
from .workspace import Workspace


def grouped_bars(series: dict[str, dict[str, float]], groups: list[str], path: Path, title: str, ylabel: str):
    """One group of bars per entry of `groups`, one bar per series (values in [0, 1], shown in %)."""
    plt = pyplot()
    names = list(series)
    n = max(1, len(names))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.22 * len(groups) * n + 4)), 3.8))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        vals = [100 * series[name].get(g, float("nan")) for g in groups]
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_figure(fig, path)


def feedback_plot(ws: Workspace, fb: dict, path: Path) -> Path | None:
    """Each aspect reward (mean over the step's samples) and the regulariser, per feedback step."""
    log = ws.abs(fb["log"])
    if not log.is_file():
        return None
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    plt = pyplot()
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for aspect, spec in fb.get("reward_specs", {}).items():
        key = f"reward/{spec}"
        a.plot(steps, [r.get(key, float("nan")) for r in rows], label=aspect, lw=1.2)
    a.set(xlabel="step", ylabel="reward (standardised score)", title="aspect rewards on training samples")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.plot(steps, [r["reg"] for r in rows], color="tab:red", lw=1.2)
    b.set(
        xlabel="step",
        ylabel="regulariser",
        title=f"regulariser ({(fb.get('settings') or {}).get('reg_type')})",
    )
    b.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def sample_grid(ws: Workspace, check: dict | None, path: Path, per_aspect: int = 6) -> Path | None:
    """The two bases' evaluation images side by side (`check`: the reward check's output, whose
    ``files`` name the evaluations that stored their first-seed images): per aspect, one row per
    base, the same held-out prompts in the columns, prompts whose verdict changed first. A green
    frame passes the exact evaluator, a red one fails. None when the images were not stored."""
    if not check or len(check.get("files", {})) != 2 or not check.get("aspects"):
        return None
    models = check["models"]
    recs = {}
    for m in models:
        res = json.loads(ws.abs(check["files"][m]).read_text())["result"]
        recs[m] = {(r["category"], r["prompt"]): r for r in res["records"] if r["seed"] == check["seed"]}
    rows = []  # (aspect, [(category, prompt)])
    for a in check["aspects"]:
        keys = [key for key in recs[models[0]] if CATEGORY_ASPECT.get(key[0]) == a and key in recs[models[1]]]
        changed = [key for key in keys if recs[models[0]][key]["passed"] != recs[models[1]][key]["passed"]]
        rest = [key for key in keys if key not in changed]
        picked = (changed + rest)[:per_aspect]
        if picked:
            rows.append((a, picked))
    if not rows:
        return None
    images = {}
    for m in models:
        f = eval_images_path(ws.abs(check["files"][m]))
        for a, picked in rows:
            x = load_eval_images(f, [c for c, _ in picked], [p for _, p in picked])
            if x is None:
                return None
            images[(m, a)] = x.permute(0, 2, 3, 1).numpy()
    plt = pyplot()
    ncol = max(len(p) for _, p in rows)
    fig, axes = plt.subplots(2 * len(rows), ncol, figsize=(1.6 * ncol, 1.75 * 2 * len(rows)), squeeze=False)
    for i, (a, picked) in enumerate(rows):
        for j in range(ncol):
            for r, m in enumerate(models):
                ax = axes[2 * i + r][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(picked):
                    ax.axis("off")
                    continue
                ok = recs[m][picked[j]]["passed"]
                ax.imshow(np.clip(images[(m, a)][j], 0, 1), interpolation="nearest")
                frame(ax, ok)
                if r == 0:
                    ax.set_title(wrap(picked[j][1], 22), fontsize=6)
                if j == 0:
                    ax.set_ylabel(f"{a}\n{m}", fontsize=7)
    fig.suptitle(
        f"held-out samples (seed {check['seed']}): previous base / new base; green passes", fontsize=9
    )
    fig.tight_layout()
    return save_figure(fig, path)


def progress_plot(hist: list[tuple[int, str, dict]], aspects: list[str], path: Path) -> Path:
    """Held-out accuracy (overall and per aspect) of the starting base and each iteration's base
    (`hist`: (iteration, name, evaluation summary))."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [j for j, _, _ in hist]
    ax.plot(xs, [100 * m["overall"] for _, _, m in hist], "o-", lw=2, label="overall")
    for a in aspects:
        ax.plot(xs, [100 * m["aspects"].get(a, float("nan")) for _, _, m in hist], "o--", lw=1, label=a)
    ax.set(xlabel="iteration (0: the starting base)", ylabel="held-out accuracy (%)", ylim=(0, 100))
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)

"""The report of one iteration: ``iter_<k>/report.md``, ``iter_<k>/plots/*.png``,
``iter_<k>/summary.json``, and the work folder's index ``<workdir>/report.md``.

Everything is read from ``state.json`` (each stage's outputs) and the files the stages wrote; plots
use matplotlib (Agg) and are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..plots import frame, pyplot, save_figure, wrap
from .config import STAGES, base_name
from .eval_store import eval_images_path, load_eval_images


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path)


def _plt():
    return pyplot()


def grouped_bars(series: dict[str, dict[str, float]], groups: list[str], path: Path, title: str, ylabel: str):
    """One group of bars per entry of `groups`, one bar per series (values in [0, 1], shown in %)."""
    import numpy as np

    plt = _plt()
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
    return _save(fig, path)


def _read_result(run, rel: str) -> dict:
    return json.loads(run.abs(rel).read_text())["result"]


def _series(result: dict, cats: list[str]) -> dict[str, float]:
    out = {c: result["categories"][c]["accuracy"] for c in cats if c in result["categories"]}
    out["overall"] = result["overall"]
    return out


def _feedback_plot(run, k: int, fb: dict, path: Path) -> Path | None:
    """Each aspect reward (mean over the step's samples) and the regulariser, per feedback step."""
    log = run.abs(fb["log"])
    if not log.is_file():
        return None
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    plt = _plt()
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
    return _save(fig, path)


def aspect_mean(result: dict) -> float | None:
    """Mean of the aspects' accuracies (the issue's headline figure); None without aspects."""
    vals = [v for v in (result.get("aspects") or {}).values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def reward_check_verdict(reward_delta: float, accuracy_delta: float, agreement: float | None) -> str:
    """One sentence on whether a reward model saw what feedback training changed (`reward_delta`
    in the reward's units, `accuracy_delta` a fraction, `agreement` its pair accuracy on the
    evaluator-decided (previous, new) image pairs)."""
    if reward_delta <= 0:
        text = "the reward did not rise on held-out prompts: feedback training did not move this aspect"
    elif accuracy_delta < 0:
        text = "the reward rose while accuracy fell: feedback training exploited this reward model"
    elif accuracy_delta == 0:
        text = "the reward rose, accuracy did not: the reward's gain is not compositional"
    else:
        text = "reward and accuracy rose together"
    if agreement is not None and agreement <= 0.6:
        text += f"; on the images that changed verdict the reward is near chance ({100 * agreement:.0f}%)"
    return text


def _reward_check_lines(check: dict | None, k: int) -> list[str]:
    if not check or not check.get("aspects"):
        return []
    prev, new = check["models"]
    lines = [
        "### Do the reward models see what feedback training changed?",
        "",
        f"Both bases render the held-out evaluation prompts (seed {check['seed']}); each image gets its "
        f"aspect's reward model (iteration {k}'s, the one feedback training raised) and the exact "
        "evaluator's verdict. *Agreement*: over the (prompt, seed) pairs whose verdicts differ, how often "
        "the reward prefers the base the evaluator prefers.",
        "",
        f"| aspect | images | reward: {prev} -> {new} | accuracy: {prev} -> {new} | decided pairs "
        "| agreement | reading |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for a, v in check["aspects"].items():
        r0, r1 = v["reward"][prev], v["reward"][new]
        a0, a1 = v["accuracy"][prev], v["accuracy"][new]
        agree = "-" if v["agreement"] is None else _pct(v["agreement"])
        lines.append(
            f"| {a} | {v['images']} | {r0:.3f} -> {r1:.3f} | {_pct(a0)} -> {_pct(a1)} | "
            f"{v['decided_pairs']} | {agree} | {reward_check_verdict(r1 - r0, a1 - a0, v['agreement'])} |"
        )
    return [*lines, ""]


def sample_grid(run, check: dict | None, path: Path, per_aspect: int = 6) -> Path | None:
    """The two bases' evaluation images side by side (`check`: the reward check's output, whose
    ``files`` name the evaluations that stored their first-seed images): per aspect, one row per
    base, the same held-out prompts in the columns, prompts whose verdict changed first. A green
    frame passes the exact evaluator, a red one fails. None when the images were not stored."""
    import numpy as np

    from ..world.suites import CATEGORY_ASPECT

    if not check or len(check.get("files", {})) != 2 or not check.get("aspects"):
        return None
    models = check["models"]
    recs = {}
    for m in models:
        res = _read_result(run, check["files"][m])
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
        f = eval_images_path(run.abs(check["files"][m]))
        for a, picked in rows:
            x = load_eval_images(f, [c for c, _ in picked], [p for _, p in picked])
            if x is None:
                return None
            images[(m, a)] = x.permute(0, 2, 3, 1).numpy()
    plt = _plt()
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
                    ax.set_title(_wrap(picked[j][1]), fontsize=6)
                if j == 0:
                    ax.set_ylabel(f"{a}\n{m}", fontsize=7)
    fig.suptitle(
        f"held-out samples (seed {check['seed']}): previous base / new base; green passes", fontsize=9
    )
    fig.tight_layout()
    return _save(fig, path)


def _wrap(text: str, width: int = 22) -> str:
    return wrap(text, width)


def write_report(run, k: int) -> dict:
    """Write iteration k's report and plots; returns the stage's outputs (relative paths)."""
    from ..io import atomic_write_json, atomic_write_text
    from ..world.quality import format_table

    c, state = run.config, run.state
    d = run.iter_dir(k)
    plots = d / "plots"
    cats = c.evaluation_categories()
    gal, rank, pairs = state.outputs(k, "gallery"), state.outputs(k, "rank"), state.outputs(k, "pairs")
    rewards, fb = state.outputs(k, "rewards"), state.outputs(k, "feedback")
    ev, reno = state.outputs(k, "evaluate"), state.outputs(k, "reno")
    made: list[Path] = []
    prev_name, _, prev_spec = run.current_base(k)
    new = base_name(k)

    # ------------------------------------------------------------------ evaluation
    results = [_read_result(run, ev["models"][m]["file"]) for m in ev["order"]]
    for r, m in zip(results, ev["order"], strict=True):
        r["model"] = m
    made.append(
        grouped_bars(
            {r["model"]: _series(r, cats) for r in results},
            [*cats, "overall"],
            plots / "accuracy.png",
            f"iteration {k}: held-out exact-evaluator accuracy",
            "images passing every clause (%)",
        )
    )
    n_img = c.eval_per_category * len(c.eval_seeds)
    lines = [
        f"# IterComp iteration {k}",
        "",
        f"Work folder `{run.root}`. Base `{prev_spec}` ({prev_name}) fine-tuned against the aspect reward "
        f"models into **{new}** (`base/`). Generated by `compalign iterate`.",
        "",
        "## Held-out accuracy (exact world evaluator)",
        "",
        f"Percentage of images that pass every clause of their prompt: the first {c.eval_per_category} "
        f"held-out prompts of each category x {len(c.eval_seeds)} seed(s) ({n_img} images per cell), each "
        "model with its own default sampler settings. Rows in italics average the categories of an aspect.",
        "",
        format_table(results),
        "| **overall** | " + " | ".join(f"**{_pct(r['overall'])}**" for r in results) + " |",
        "",
        "![held-out accuracy](plots/accuracy.png)",
        "",
    ]
    by_name = {r["model"]: r for r in results}
    prev_label = run.spec_label(run.current_base(k)[1])
    prev_name = next((m for m in ev["order"] if ev["models"][m]["spec"] == prev_label), prev_name)
    if prev_name in by_name and new in by_name:
        p, n = by_name[prev_name], by_name[new]
        delta = n["overall"] - p["overall"]
        text = (
            f"Feedback training moved the base from {_pct(p['overall'])}% ({prev_name}) to "
            f"{_pct(n['overall'])}% ({new}) overall: {100 * delta:+.1f} points"
        )
        ma, mb = aspect_mean(p), aspect_mean(n)
        if ma is not None and mb is not None:
            text += f"; mean of the aspects {_pct(ma)} -> {_pct(mb)} ({100 * (mb - ma):+.1f})"
        so_a, so_b = (r["categories"].get("single_object", {}).get("accuracy") for r in (p, n))
        if so_a is not None and so_b is not None:
            text += f"; single_object {_pct(so_a)} -> {_pct(so_b)} ({100 * (so_b - so_a):+.1f})"
        lines += [text + ".", ""]

    lines += _reward_check_lines(ev.get("reward_check"), k)
    grid = sample_grid(run, ev.get("reward_check"), plots / "samples.png")
    if grid is not None:
        made.append(grid)
        lines += [
            "The two bases' images of the same held-out prompts (prompts whose verdict changed first; "
            "green frame: passes the exact evaluator):",
            "",
            "![samples](plots/samples.png)",
            "",
        ]

    # ------------------------------------------------------------------ ReNO
    lines += ["## Noise optimisation (ReNO)", ""]
    if not reno.get("enabled"):
        lines += ["Off (`--no-reno`).", ""]
    else:
        plain = _read_result(run, reno["plain"]["file"])
        with_reno = _read_result(run, reno["reno"]["file"])
        plain["model"], with_reno["model"] = reno["generator"], f"{reno['generator']} + ReNO"
        table = [plain, with_reno]
        if reno["generator"] != new and new in by_name:
            table.append(by_name[new])
        made.append(
            grouped_bars(
                {r["model"]: _series(r, cats) for r in table},
                [*cats, "overall"],
                plots / "reno.png",
                f"iteration {k}: ReNO with the aspect reward models",
                "images passing every clause (%)",
            )
        )
        per = c.reno_prompts_per_category()
        rl = reno.get("reward_loss") or {}
        lines += [
            reno["note"],
            "",
            f"{c.reno_iterations} ReNO iterations (lr {c.reno_lr}) per image, rewards: "
            + ", ".join(f"{a} reward model x {c.reno_weight(a):g}" for a in c.aspects)
            + f"; {per} held-out prompts per category x {len(c.eval_seeds)} seed(s).",
            "",
            format_table(table),
            "| **overall** | " + " | ".join(f"**{_pct(r['overall'])}**" for r in table) + " |",
            "",
        ]
        if rl:
            lines += [
                f"Mean weighted reward loss: {_fmt(rl.get('initial_mean'))} (initial noise) -> "
                f"{_fmt(rl.get('best_mean'))} (best of the trajectory).",
                "",
            ]
        lines += ["![ReNO](plots/reno.png)", ""]

    # ------------------------------------------------------------------ reward models
    rew_series = {
        "held-out pair accuracy": {
            a: v["heldout_accuracy"] for a, v in rewards.items() if v["heldout_accuracy"] is not None
        }
    }
    if rew_series["held-out pair accuracy"]:
        made.append(
            grouped_bars(
                rew_series,
                list(rewards),
                plots / "reward_accuracy.png",
                f"iteration {k}: reward models on held-out pairs (chance 50%)",
                "pairs ordered right (%)",
            )
        )
    lines += [
        "## Reward models",
        "",
        f"One composition reward model per aspect (backbone `{c.reward_backbone}`, "
        f"{c.reward_epochs} epoch(s), batch {c.reward_batch_size}, lr {c.reward_lr}, freeze ratio "
        f"{c.reward_freeze_ratio}), trained on the train pairs. Held-out pairs come from held-out prompts "
        "only (split by prompt); the epoch kept is the best on them, so with several epochs the accuracy "
        "below is slightly optimistic.",
        "",
        "| aspect | train pairs | held-out pairs | held-out accuracy | Spearman vs evaluator | kept step "
        "| curves |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for a, v in rewards.items():
        sel = v.get("selection") or {}
        lines.append(
            f"| {a} | {v['train_pairs']} | {v['heldout_pairs']} | {_pct(v['heldout_accuracy'])} | "
            f"{_fmt(v.get('spearman_vs_evaluator'))} | {sel.get('step', '-')} | "
            f"[curves]({Path(v['curves']).relative_to(f'iter_{k}').as_posix()}) |"
        )
    lines.append("")
    if rew_series["held-out pair accuracy"]:
        lines += ["![reward accuracy](plots/reward_accuracy.png)", ""]

    # ------------------------------------------------------------------ feedback
    fb_plot = _feedback_plot(run, k, fb, plots / "feedback_rewards.png")
    if fb_plot is not None:
        made.append(fb_plot)
    settings = fb.get("settings") or {}
    expanded = (
        f" The gallery is iteration {k - 1}'s, expanded with {base_name(k - 1)}; its earlier rank is kept as "
        "`initial_rank`."
        if k > 1
        else ""
    )
    lines += [
        "## Feedback training",
        "",
        f"{fb.get('steps')} steps x {c.feedback_batch_size} samples (ReFL: stop index in "
        f"{settings.get('stop_indices')} of {settings.get('total_steps')} steps, "
        f"lr {settings.get('learning_rate')}), "
        f"rewards: " + ", ".join(f"{a} x {c.weight(a)}" for a in c.aspects) + "; regulariser "
        f"{settings.get('reg_type')} x {c.reg_weight} (final value {_fmt(fb.get('final_reg'), 4)}); "
        f"{fb.get('wall_time_s')} s.",
        "",
        "| aspect reward | first steps | last steps |",
        "|---|---:|---:|",
    ]
    for a, v in (fb.get("reward_first_last") or {}).items():
        lines.append(f"| {a} | {_fmt(v['first'])} | {_fmt(v['last'])} |")
    lines += ["", "The trainer's curves:", "", "![feedback curves](feedback/curves.png)", ""]
    if fb_plot is not None:
        lines += ["By aspect:", "", "![feedback rewards](plots/feedback_rewards.png)", ""]

    # ------------------------------------------------------------------ gallery, ranking, pairs
    lines += [
        "## Gallery, ranking, pairs",
        "",
        f"Models: {', '.join(gal.get('models') or [])}. Prompts per aspect: the first {c.per_category} train "
        f"prompts of each category, plus the last {c.reward_heldout_per_category} held-out prompts of each "
        "(for the reward models' held-out pairs only; never the evaluation prompts)."
        + expanded,
        "",
        "| aspect | records | ranked by | tie groups | pairs (train / held-out) | tied pairs skipped |",
        "|---|---:|---|---:|---:|---:|",
    ]  # fmt: skip
    for a in c.aspects:
        r, p = rank.get(a, {}), pairs.get(a, {})
        by = "people" if c.rank == "people" else f"world evaluator (tie-break: {r.get('tie_break')})"
        lines.append(
            f"| {a} | {gal['records'][a]} | {by} | {r.get('tie_groups', '-')} | "
            f"{p.get('train')} / {p.get('heldout')} | {p.get('tied_skipped')} |"
        )
    notes = sorted({n for r in rank.values() for n in (r.get("notes") or [])})
    lines += [""] + [f"Note: {n}" for n in notes] + ([""] if notes else [])

    # ------------------------------------------------------------------ across iterations
    hist = []
    for j in range(1, k + 1):
        evj = state.outputs(j, "evaluate")
        if not evj:
            continue
        if j == 1:
            start = run.spec_label(run.current_base(1)[1])
            for name in evj["order"]:
                if evj["models"][name]["spec"] == start:
                    hist.append((0, name, evj["models"][name]))
                    break
        hist.append((j, base_name(j), evj["models"][base_name(j)]))
    aspects = list(c.aspects)
    lines += [
        "## Across iterations",
        "",
        "| iteration | base | overall | mean of the aspects | " + " | ".join(aspects) + " | single_object |",
        "|---:|---|---:|---:|" + "---:|" * (len(aspects) + 1),
    ]
    for j, name, m in hist:
        cells = [_pct(m["aspects"].get(a)) for a in aspects]
        so = m["categories"].get("single_object")
        lines.append(
            f"| {j} | {name} | {_pct(m['overall'])} | {_pct(aspect_mean(m))} | "
            + " | ".join(cells)
            + f" | {_pct(so) if so is not None else '-'} |"
        )
    lines.append("")
    if len(hist) > 1:
        plt = _plt()
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
        made.append(_save(fig, plots / "progress.png"))
        lines += ["![progress](plots/progress.png)", ""]

    # ------------------------------------------------------------------ stages
    lines += ["## Stages", "", "| stage | seconds (all sessions) | sessions |", "|---|---:|---:|"]
    total = 0.0
    for s in STAGES:
        e = state.entry(k, s)
        if e is None or s == "report":
            continue
        total += float(e.get("seconds", 0))
        lines.append(f"| {s} | {e.get('seconds', 0):.1f} | {e.get('sessions', 1)} |")
    lines += [f"| total (before the report) | {total:.1f} | |", ""]
    lines += [
        "## Files",
        "",
        "- `gallery/<aspect>/`: galleries (`gallery.json`, IterComp's format, with `rank`"
        + (" and `initial_rank`" if k > 1 else "")
        + ")",
        "- `pairs/<aspect>.jsonl`: preference pairs (split by prompt)",
        "- `rewards/<aspect>/final/`: reward models (`composition:<folder>`)",
        "- `feedback/`: feedback run (log, curves, checkpoints); `base/`: the fine-tuned base",
        "- `eval/<model>.json`, `reno/`: evaluation results with every image's verdict",
        "- `summary.json`: the numbers of this report",
        "",
    ]
    report = d / "report.md"
    atomic_write_text(report, "\n".join(lines))
    summary = {
        "iteration": k,
        "base_before": prev_name,
        "base_after": new,
        "evaluation": {m: ev["models"][m] for m in ev["order"]},
        "reno": reno,
        "rewards": rewards,
        "feedback": fb,
        "pairs": pairs,
        "rank": rank,
    }
    atomic_write_json(d / "summary.json", summary)
    write_index(run, k, hist)
    return {
        "report": run.rel(report),
        "summary": run.rel(d / "summary.json"),
        "plots": [run.rel(p) for p in made],
    }


def write_index(run, k: int, hist) -> Path:
    """``<workdir>/report.md``: one line per iteration, linking its report."""
    from ..io import atomic_write_text

    lines = [
        "# compalign iterate",
        "",
        f"IterComp loop in `{run.root}`: {k} iteration(s) reported.",
        "",
        "| iteration | base | held-out accuracy | report |",
        "|---:|---|---:|---|",
    ]
    for j, name, m in hist:
        link = f"[iter_{j}/report.md](iter_{j}/report.md)" if j else "-"
        lines.append(f"| {j} | {name} | {_pct(m['overall'])} | {link} |")
    lines.append("")
    path = run.root / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path

"""A/B study of world-model denoisers: which architecture learns relations from data.

Arms are presets (``world-ab-<arm>``): the same data (scene pool, data seed, categories), batch,
learning-rate schedule shape and seed, from scratch; only the denoiser differs, each at about
world-base's parameter count. The arms' step counts give each the same training compute (one
thread of a 2-core x86 CPU as measured by ``bench``), and every arm checkpoints at each tenth of its run.

    python scripts/ab_world_arch.py bench --arms unet coord pos dit   # s/step at batch 64, one thread
    python scripts/ab_world_arch.py train --parallel 3     # train (or resume) every arm, logs in runs/ab/
    python scripts/ab_world_arch.py evaluate --watch       # held-out accuracy at each checkpoint
    python scripts/ab_world_arch.py plot                   # learning curves + table

Evaluation results are cached per checkpoint and keyed by a hash of the evaluator and the suites,
so running ``evaluate`` again after the evaluator changes re-evaluates every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from compalign.world.quality import evaluator_key

ARMS = ("unet", "coord", "dit")
EXTRA_ARMS = ("pos", "dit4", "coordt5", "clipt5")
RELATION_CATEGORIES = ("spatial", "position", "non_spatial")
EVAL_CATEGORIES = ("single_object", "two_object", "color", "color_attr", "spatial", "position", "non_spatial")
PANELS = (
    ("spatial_relationship", "spatial relationship (spatial, position)"),
    ("non_spatial_relationship", "non-spatial relationship"),
    ("attribute_binding", "attribute binding (color, color_attr)"),
    ("two_object", "two_object"),
    ("single_object", "single_object"),
)
BENCH_PROMPTS = [
    "a red circle to the left of a blue square",
    "a small green triangle above a yellow star",
    "a striped purple square touching an orange circle",
    "two blue circles",
]


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def preset(arm: str) -> str:
    """The preset of an arm: ``world-ab-ARM`` for the A/B's arms, else ARM itself (any preset's run,
    e.g. ``--root runs --arms world-web`` evaluates ``runs/world-web``'s checkpoints)."""
    from compalign.generators.world.config import list_presets

    return f"world-ab-{arm}" if f"world-ab-{arm}" in list_presets() else arm


def run_dir(root: Path, arm: str) -> Path:
    return root / arm


# ------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> None:
    import torch

    from compalign.generators.world.config import create_preset
    from compalign.generators.world.models import build_training_scheduler, count_parameters
    from compalign.generators.world.train import _new_pipeline, diffusion_loss
    from compalign.io import atomic_write_json

    torch.set_num_threads(args.threads)
    out = {}
    for arm in args.arms:
        config = create_preset(preset(arm), batch_size=args.batch, seed=args.seed)
        pipe = _new_pipeline(config)
        model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sched = build_training_scheduler(pipe.scheduler.config)
        g = torch.Generator().manual_seed(args.seed)
        batch = {
            "images": torch.rand(args.batch, 3, 32, 32, generator=g) * 2 - 1,
            "prompts": [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(args.batch)],
        }
        train_s = []
        for s in range(args.steps + 1):  # the first step warms up
            t0 = time.perf_counter()
            loss = diffusion_loss(config, model, pipe, sched, batch, s)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            train_s.append(time.perf_counter() - t0)
        model.eval()
        text, mask = pipe.encode_prompt(batch["prompts"])
        x = pipe.fold(batch["images"])
        infer_s = []
        with torch.no_grad():
            for _ in range(args.steps + 1):
                t0 = time.perf_counter()
                pipe.predict(x, torch.tensor(500), text, mask)
                infer_s.append(time.perf_counter() - t0)
        med = sorted(train_s[1:])[len(train_s[1:]) // 2]
        inf = sorted(infer_s[1:])[len(infer_s[1:]) // 2]
        out[arm] = {
            "preset": preset(arm),
            "params_denoiser": count_parameters(pipe.unet),
            "params_text_encoder": count_parameters(pipe.text_encoder),
            "s_per_step": med,
            "steps_per_s": 1 / med,
            "train_step_s": train_s[1:],
            "ms_per_image_forward": 1000 * inf / args.batch,
            "batch_size": args.batch,
            "threads": args.threads,
            "max_steps": config.max_steps,
            "planned_s": config.max_steps * med,
        }
        print(
            f"{arm:6s} {preset(arm):16s} denoiser {out[arm]['params_denoiser'] / 1e6:.3f}M + text "
            f"{out[arm]['params_text_encoder'] / 1e6:.3f}M  {med:.2f} s/step ({1 / med:.2f} steps/s)  "
            f"inference {out[arm]['ms_per_image_forward']:.1f} ms/image-forward  "
            f"preset {config.max_steps} steps = {config.max_steps * med / 60:.0f} min",
            flush=True,
        )
    meta = {"load_avg": os.getloadavg(), "cpu": _cpu_name(), "torch": torch.__version__}
    atomic_write_json(args.root / "bench.json", {"arms": out, **meta})
    print(f"wrote {args.root / 'bench.json'} (load average {meta['load_avg'][0]:.1f})")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# ------------------------------------------------------------------------------------- train
def train_command(args: argparse.Namespace, arm: str) -> list[str]:
    cmd = [
        sys.executable,
        "-c",
        "from compalign.cli import main; main()",
        "world",
        "train",
        "--preset",
        preset(arm),
    ]
    cmd += ["-o", str(run_dir(args.root, arm)), "--threads", "1", "--workers", "1", "--no-progress"]
    cmd += ["--seed", str(args.seed)]
    if args.pool_dir:
        cmd += ["--set", f"pool_dir={args.pool_dir}"]
    if args.budget_minutes:
        steps = budget_steps(args, arm)
        cmd += ["--set", f"max_steps={steps}", "--set", f"checkpoint_every={max(1, steps // 10)}"]
    return cmd


def budget_steps(args: argparse.Namespace, arm: str) -> int:
    """Steps that give `arm` `--budget-minutes` of one thread at its time per step in bench.json."""
    path = args.root / "bench.json"
    try:
        arms = json.loads(path.read_text())["arms"]
    except (OSError, ValueError, KeyError) as err:
        fail(f"--budget-minutes needs {path} ({err}); run: {Path(__file__).name} bench --root {args.root}")
    if arm not in arms:
        fail(f"{path} has no time per step for arm {arm!r}; bench it: --arms {arm}")
    return max(10, int(args.budget_minutes * 60 / arms[arm]["s_per_step"]))


def cmd_train(args: argparse.Namespace) -> None:
    """Build the scene pool once, then train (or resume) the arms, `parallel` at a time."""
    from compalign.generators.world.config import create_preset
    from compalign.generators.world.data import ScenePool

    args.root.mkdir(parents=True, exist_ok=True)
    if args.budget_minutes:
        for arm in args.arms:
            print(f"{arm}: {budget_steps(args, arm)} steps in {args.budget_minutes:g} min", flush=True)
    c = create_preset(preset(args.arms[0]), pool_dir=args.pool_dir)
    pool = ScenePool(c.pool_root, c.categories, c.pool_per_category, c.pool_shard_size, c.data_seed)
    print(f"scene pool {pool.dir}: {len(pool.missing())} shards to build", flush=True)
    pool.build(workers=args.pool_workers, progress=False)
    pending, running = list(args.arms), {}

    def stop(signum, frame):
        pending.clear()  # no new arm starts
        for p in running.values():
            p.send_signal(signal.SIGTERM)  # each run checkpoints and exits

    signal.signal(signal.SIGTERM, stop)
    while pending or running:
        while pending and len(running) < args.parallel:
            arm = pending.pop(0)
            log = (args.root / f"{arm}.out").open("a")
            cmd = train_command(args, arm)
            print(f"start {arm}: {' '.join(cmd)} (log {args.root / f'{arm}.out'})", flush=True)
            running[arm] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            print(f"{arm} pid {running[arm].pid}", flush=True)
        time.sleep(5)
        for arm, p in list(running.items()):
            if p.poll() is not None:
                print(f"{arm} exited with {p.returncode}", flush=True)
                del running[arm]


# ------------------------------------------------------------------------------------- evaluate
def eval_dir(args: argparse.Namespace, key: str | None = None, root: Path | None = None) -> Path:
    """``EVAL_ROOT/<evaluator key>[-<tag>]`` (``EVAL_ROOT``: `--eval-root`, else ``ROOT/eval`` of
    `root` or ``--root``): results of one evaluator and one set of settings."""
    key = key or evaluator_key()
    base = args.eval_root if args.eval_root is not None else (root or args.root) / "eval"
    return base / (f"{key}-{args.tag}" if args.tag else key)


def result_path(args: argparse.Namespace, arm: str, step: int) -> Path:
    return eval_dir(args) / arm / f"step_{step:07d}.json"


def evaluate_checkpoint(args: argparse.Namespace, arm: str, ckpt: Path) -> dict | None:
    import torch

    from compalign.generators.world.generator import WorldGenerator
    from compalign.generators.world.train import checkpoint_pipeline
    from compalign.io import atomic_write_json
    from compalign.world.quality import evaluate_generator

    path = result_path(args, arm, step_of(ckpt))
    if path.exists():
        return None
    t0 = time.perf_counter()
    pipe, step = checkpoint_pipeline(ckpt)
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    gen = WorldGenerator(pipe, name=f"{arm}@{step}", device="cpu")
    seeds = list(range(args.seed, args.seed + args.n))
    settings = {"num_inference_steps": args.sample_steps} if args.sample_steps else {}
    res = evaluate_generator(gen, list(args.categories), args.per_category, seeds, progress=False, **settings)
    res.update(
        arm=arm,
        preset=preset(arm),
        step=step,
        max_steps=state["config"]["max_steps"],
        train_wall_time_s=state["wall_time_s"],
        evaluator_key=evaluator_key(),
        sample_steps=args.sample_steps or int(pipe.config.default_steps),
        guidance_scale=float(pipe.config.default_guidance_scale),
        eval_s=time.perf_counter() - t0,
    )
    atomic_write_json(path, res)
    asp = res["aspects"]
    print(
        f"{arm} step {step}: overall {100 * res['overall']:.1f}, "
        + ", ".join(f"{k} {100 * v:.1f}" for k, v in asp.items())
        + f" ({res['eval_s']:.0f} s)",
        flush=True,
    )
    return res


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[1])


def run_config(args: argparse.Namespace, arm: str) -> dict:
    return json.loads((run_dir(args.root, arm) / "config.json").read_text())


def wanted(args: argparse.Namespace, arm: str, ckpt: Path) -> bool:
    """Every `args.every`-th regular checkpoint, and the last step of the run (or only the
    checkpoints of `args.at_steps` when given)."""
    c = run_config(args, arm)
    step = step_of(ckpt)
    if args.at_steps:
        return step in args.at_steps
    return step == c["max_steps"] or (
        step % c["checkpoint_every"] == 0 and (step // c["checkpoint_every"]) % args.every == 0
    )


def finished(args: argparse.Namespace, arm: str) -> bool:
    return (run_dir(args.root, arm) / "final" / "model_index.json").is_file()


def cmd_evaluate(args: argparse.Namespace) -> None:
    import torch

    from compalign.generators.world.train import list_checkpoints

    torch.set_num_threads(args.threads)
    while True:
        todo = [(arm, c) for arm in args.arms for c in list_checkpoints(run_dir(args.root, arm))]
        todo = [
            (a, c) for a, c in todo if wanted(args, a, c) and not result_path(args, a, step_of(c)).exists()
        ]
        todo.sort(key=lambda ac: step_of(ac[1]) / run_config(args, ac[0])["max_steps"])  # earliest first
        for arm, ckpt in todo:
            try:
                evaluate_checkpoint(args, arm, ckpt)
            except FileNotFoundError:  # deleted while we looked (keep_checkpoints)
                continue
        if not args.watch:
            break
        if not todo:
            if all(finished(args, a) for a in args.arms):
                break
            time.sleep(60)


# ------------------------------------------------------------------------------------- plot
def load_results(args: argparse.Namespace) -> dict[str, list[dict]]:
    out = {}
    for arm in args.arms:
        folder = eval_dir(args, args.evaluator_key) / arm
        rs = [json.loads(p.read_text()) for p in sorted(folder.glob("step_*.json"))]
        if rs:
            out[arm] = sorted(rs, key=lambda r: r["step"])
    return out


def panel_value(r: dict, key: str, metric: str = "accuracy") -> float | None:
    """A panel's figure in %: a category's `metric` (``accuracy``: images passing every clause;
    ``score``: mean fraction of clauses passed; ``relation_given_objects``: of the images of a
    relation prompt whose objects are all drawn right, those whose relations hold too), or an
    aspect's mean over its evaluated categories (None where no category has the figure)."""
    from compalign.world.suites import CATEGORY_ASPECT

    cats = r["categories"]
    keys = [key] if key in cats else [c for c in cats if CATEGORY_ASPECT.get(c) == key]
    values = [cats[c][metric] for c in keys if cats[c].get(metric) is not None]
    return 100 * sum(values) / len(values) if values else None


def cmd_plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compalign.io import atomic_path, atomic_write_text

    results = load_results(args)
    if not results:
        fail(f"no evaluation results under {eval_dir(args, args.evaluator_key)} for {', '.join(args.arms)}")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    steps = [r["step"] for rs in results.values() for r in rs]
    log_x = max(steps) >= 10 * min(steps)  # a log axis shows no tick within one decade
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6), sharey=True)
    top = 0.0
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for arm, rs in results.items():
            pts = [(r["step"], v) for r in rs if (v := panel_value(r, key, args.metric)) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{arm} ({preset(arm)})")
                top = max(top, *(v for _, v in pts))
        ax.set_title(title, fontsize=10)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training steps (batch 64" + (", log scale)" if log_x else ")"))
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, min(100.0, 1.1 * top + 2))
    axes[0].set_ylabel(
        {
            "accuracy": "held-out accuracy (%)",
            "score": "held-out clause score (%)",
            "relation_given_objects": "relations right | objects right (%)",
        }[args.metric]
    )
    axes[0].legend(fontsize=8)
    r0 = next(iter(results.values()))[0]
    fig.suptitle(
        f"world denoiser A/B at equal one-thread CPU compute: held-out, {r0['per_category']} prompts x "
        f"{len(r0['seeds'])} seeds per category, {r0['sample_steps']} sampling steps "
        f"(evaluator {r0['evaluator_key']})",
        fontsize=10,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, suffix=args.out.suffix) as tmp:
        fig.savefig(tmp, dpi=110, format=args.out.suffix.lstrip(".") or "png")
    lines = [
        "| arm | step | wall (min) | " + " | ".join(k for k, _ in PANELS) + " |",
        "|---|---:|---:|" + "---:|" * len(PANELS),
    ]
    for arm, rs in results.items():
        for r in rs:
            cells = [
                f"{v:.1f}" if (v := panel_value(r, k, args.metric)) is not None else "" for k, _ in PANELS
            ]
            lines.append(
                f"| {arm} | {r['step']} | {r['train_wall_time_s'] / 60:.0f} | " + " | ".join(cells) + " |"
            )
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def cmd_table(args: argparse.Namespace) -> None:
    """One markdown table: accuracy per category and, for the relation categories, the share of
    images whose objects are drawn right and of those, the share whose relations hold."""
    from compalign.io import atomic_write_text

    results = load_results(args)
    if not results:
        fail(f"no evaluation results under {eval_dir(args, args.evaluator_key)} for {', '.join(args.arms)}")
    cats = [c for c in EVAL_CATEGORIES if c not in RELATION_CATEGORIES]
    head = ["arm", "step", "images seen", *cats, *RELATION_CATEGORIES]
    head += [f"{c}: objects / given" for c in RELATION_CATEGORIES]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(head) - 3)]
    for arm, rs in results.items():
        for r in rs:
            k = r["categories"]
            cells = [arm, str(r["step"]), f"{r['step'] * 64 / 1000:.0f}k"]
            cells += [
                f"{100 * k[c]['accuracy']:.0f}" if c in k else "" for c in [*cats, *RELATION_CATEGORIES]
            ]
            for c in RELATION_CATEGORIES:
                v = k.get(c, {})
                if v.get("objects") is None:
                    cells.append("")
                    continue
                n = round(v["objects"] * v["n"])
                given = (
                    "-"
                    if v.get("relation_given_objects") is None
                    else f"{100 * v['relation_given_objects']:.0f}"
                )
                cells.append(f"{100 * v['objects']:.0f} / {given} (n={n})")
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")


# ------------------------------------------------------------------------------------- bound
def parse_curve(text: str) -> tuple[Path, str, int]:
    """``ROOT:ARM`` or ``ROOT:ARM+OFFSET`` -> (root, arm, step offset)."""
    root, sep, rest = text.rpartition(":")
    arm, plus, off = rest.partition("+")
    if not sep or not root or not arm or (plus and not off.isdigit()):
        fail(f"--curve {text!r}: expected ROOT:ARM or ROOT:ARM+OFFSET (OFFSET: steps before this run)")
    return Path(root), arm, int(off) if plus else 0


def log_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of ``acc = a + b ln(step)``: (a, b)."""
    import numpy as np

    x = np.log([s for s, _ in points])
    y = np.array([v for _, v in points])
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def cmd_bound(args: argparse.Namespace) -> None:
    """Extrapolate the learning curve (one model's runs joined, steps counted from the first run's
    start) of each target category: ``acc = a + b ln(step)`` fitted on the evaluations from
    `--from-step` on; the accuracy it predicts at `--budget-steps` and the steps it needs to reach
    each target. A bound from the curve's own trend: a schedule's last decay or a change of recipe
    can beat it, a plateau falls short of it."""
    import math

    from compalign.io import atomic_write_text

    targets = {}
    for t in args.targets:
        cat, _, v = t.partition("=")
        try:
            targets[cat] = float(v)
        except ValueError:
            fail(f"--targets {t!r}: expected CATEGORY=ACCURACY")
    points: dict[str, list[tuple[int, float]]] = {c: [] for c in targets}
    for text in args.curve:
        root, arm, offset = parse_curve(text)
        folder = eval_dir(args, root=root) / arm
        results = [json.loads(f.read_text()) for f in sorted(folder.glob("step_*.json"))]
        if not results:
            fail(f"--curve {text}: no evaluation results in {folder}")
        for r in results:
            for c in targets:
                if c in r["categories"] and r["step"] + offset >= args.from_step:
                    points[c].append((r["step"] + offset, 100 * r["categories"][c]["accuracy"]))
    lines = [
        f"| category | points (steps {args.from_step}+) | last measured | points per doubling of steps "
        f"| predicted at {args.budget_steps} steps | target | steps to reach it |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, target in targets.items():
        pts = sorted(points[c])
        if len(pts) < 2:
            fail(f"{c}: {len(pts)} evaluation(s) from step {args.from_step} on; a fit needs two")
        a, b = log_fit(pts)
        at_budget = a + b * math.log(args.budget_steps)
        reach = f"{math.exp((target - a) / b):.0f}" if b > 0 else "never (no rise)"
        lines.append(
            f"| {c} | {len(pts)} | {pts[-1][1]:.1f} at {pts[-1][0]} | {b * math.log(2):+.1f} "
            f"| {at_budget:.1f} | {target:g} | {reach} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root", type=Path, default=Path("runs/ab"), help="Folder of the arms' runs and results."
    )
    common.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        help=f"Arms (presets world-ab-ARM: {ARMS + EXTRA_ARMS}, or any preset's run under --root).",
    )
    common.add_argument(
        "--eval-root",
        type=Path,
        default=None,
        help="Folder of the evaluation results (default ROOT/eval), e.g. a committed results folder.",
    )
    common.add_argument(
        "--tag",
        default="",
        help="evaluate / plot: results kept apart under eval/<evaluator key>-TAG (for settings other "
        "than the learning curves', e.g. '--tag final -n 4 --sample-steps 25').",
    )
    common.add_argument(
        "--seed", type=int, default=0, help="Training seed (train); first noise seed (evaluate); bench data."
    )
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    b = add("bench", "s/step of each arm at batch 64 on one thread, and parameters.")
    b.add_argument("--steps", type=int, default=4)
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--threads", type=int, default=1)
    t = add("train", "Train or resume the arms (background-safe; SIGTERM checkpoints).")
    t.add_argument("--parallel", type=int, default=3, help="Arms trained at once (one thread each).")
    t.add_argument("--pool-dir", default=None, help="Scene pool folder (default: the per-user cache).")
    t.add_argument("--pool-workers", type=int, default=1, help="Processes building missing pool shards.")
    t.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="Give every arm this much one-thread time instead of its preset's steps: steps from "
        "ROOT/bench.json (s/step), a checkpoint at each tenth.",
    )
    e = add("evaluate", "Held-out accuracy of every checkpoint not yet evaluated.")
    e.add_argument("--per-category", type=int, default=25)
    e.add_argument("-n", type=int, default=2, help="Seeds per prompt (--seed, --seed+1, ...).")
    e.add_argument("--categories", nargs="+", default=list(EVAL_CATEGORIES))
    e.add_argument("--sample-steps", type=int, default=None, help="Sampling steps (default: the model's).")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument(
        "--every", type=int, default=1, help="Only every k-th checkpoint of a run (and its last step)."
    )
    e.add_argument(
        "--watch", action="store_true", help="Keep evaluating new checkpoints until every arm is done."
    )
    e.add_argument(
        "--at-steps", type=int, nargs="+", default=None, help="Only the checkpoints of these steps."
    )
    pl = add("plot", "Learning curves (one panel per aspect, one line per arm) and a table.")
    pl.add_argument("--out", type=Path, default=Path("runs/ab/learning_curves.png"))
    pl.add_argument(
        "--metric",
        choices=("accuracy", "score", "relation_given_objects"),
        default="accuracy",
        help="accuracy: images passing every clause; score: mean fraction of clauses passed; "
        "relation_given_objects: relations right among images whose objects are right (relation "
        "categories; results evaluated before this figure existed lack it).",
    )
    pl.add_argument(
        "--evaluator-key", default=None, help="Results of another evaluator version (a key under eval/)."
    )
    tb = add("table", "A markdown table of every result: accuracy, and objects / relations given objects.")
    tb.add_argument("--out", type=Path, default=None, help="Also write the table here.")
    tb.add_argument("--evaluator-key", default=None, help="Results of another evaluator version.")
    bd = add("bound", "Extrapolate a model's learning curve to a step budget and to target accuracies.")
    bd.add_argument(
        "--curve", nargs="+", required=True, help="ROOT:ARM[+OFFSET]: one model's runs, in order (OFFSET: "
        "steps trained before the run, e.g. runs:world-base-v2+14062 for a continuation)."
    )  # fmt: skip
    bd.add_argument("--targets", nargs="+", default=["spatial=65", "position=50", "non_spatial=50"])
    bd.add_argument("--from-step", type=int, default=5000, help="Fit the evaluations from this step on.")
    bd.add_argument("--budget-steps", type=int, required=True, help="Where to read the fitted curve.")
    bd.add_argument("--out", type=Path, default=None, help="Also write the table here.")
    args = p.parse_args(argv)

    from compalign.generators.world.config import list_presets

    bad = [a for a in args.arms if preset(a) not in list_presets()]
    if bad:
        fail(
            f"--arms: no preset world-ab-{bad[0]} or {bad[0]}; "
            f"expected some of {', '.join(ARMS + EXTRA_ARMS)} or a preset name"
        )
    if args.command == "evaluate":
        from compalign.world.suites import CATEGORIES

        wrong = [c for c in args.categories if c not in CATEGORIES]
        if wrong:
            fail(f"--categories: unknown category {wrong[0]!r}; expected some of {', '.join(CATEGORIES)}")
        if args.per_category < 1 or args.n < 1 or args.every < 1:
            fail("--per-category, -n and --every must be at least 1")
    commands = {
        "bench": cmd_bench,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "plot": cmd_plot,
        "table": cmd_table,
        "bound": cmd_bound,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()

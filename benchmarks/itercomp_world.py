"""IterComp on the world, side by side: measure every row and write ``benchmarks/itercomp_world.json``.

    python benchmarks/itercomp_world.py --root runs/itercomp_world --train-seeds 0 1 \\
        --reference world-base --json benchmarks/itercomp_world.json -- \\
        --base world-web --gallery-models ... --iterations 2

The check before the loop (the base and its headroom probe only, no ``--``):

    python benchmarks/itercomp_world.py --root runs/itercomp_world --train-seeds 0 \\
        --headroom-only world-web --json runs/itercomp_world/headroom.json

Everything after ``--`` is passed to ``compalign iterate`` (its config); this command sets the
work folder (``ROOT/seed<s>``), the training seed and the evaluation protocol (held-out, 25 prompts
x seeds 0-3 per category, the exact evaluator as the judge, never as a reward). Rows:

1. ``world-web`` (the loop's base), ``iter1``, ``iter2``, ... and ``iter<k>+reno``: `compalign
   iterate`, once per training seed (resumable: finished stages are only read back), measures them
   in its ``evaluate`` and ``reno`` stages; the base is one entry (its images do not depend on the
   training seed), the rest one entry per seed
2. ``headroom``: the rejection-sampling probe (`compalign.generators.world.rejection_sampling`):
   the base fine-tuned on its own evaluator-passing samples of train prompts, one entry per seed
3. ``reference``: the perfect-caption reference model, the ceiling
4. the aims of the IterComp issue checked on the seed means, then the JSON (atomic) and, with
   ``--md``, a Markdown table

Every result is cached under ROOT (keyed by the model's weights, the settings and the evaluator),
so an interrupted run resumes and a finished one rewrites the JSON in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from compalign.io import atomic_write_json, atomic_write_text
from compalign.iterate.config import IterateConfig
from compalign.iterate.eval_store import fingerprint
from compalign.iterate.report import aspect_mean
from compalign.iterate.state import State
from compalign.iterate.workspace import Workspace, abs_spec
from compalign.world.quality import evaluator_key

DEFAULT_PROTOCOL = {"split": "heldout", "per_category": 25, "seeds": [0, 1, 2, 3]}
"""The issue's evaluation protocol (``--per-category`` and ``--eval-seeds`` change it)."""
AIMS = {
    "iter1 - world-web (mean of the aspects)": 10.0,
    "iter2 - iter1": 0.0,
    "|iter1 - world-web| (single_object), at most": 2.0,
    "iter1+reno - iter1": 5.0,
    "headroom - world-web": 15.0,
}
"""The IterComp issue's aims (points, on the seed means); "at most" marks an upper bound."""


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def row(name: str, result: dict, *, seed: int | None, model: str, command: str, settings: dict) -> dict:
    """One row: held-out accuracy (%) per aspect, their mean and single_object."""
    cats = {c: v["accuracy"] if isinstance(v, dict) else v for c, v in result["categories"].items()}
    mean = aspect_mean(result)
    return {
        "row": name,
        "train_seed": seed,
        "model": model,
        "aspects": {a: round(100 * v, 2) for a, v in result["aspects"].items() if v is not None},
        "aspect_mean": None if mean is None else round(100 * mean, 2),
        "single_object": None if "single_object" not in cats else round(100 * cats["single_object"], 2),
        "categories": {c: round(100 * v, 2) for c, v in cats.items()},
        "command": command,
        "settings": settings,
    }


# ------------------------------------------------------------------------------------ 1. the loop
def run_loop(args: argparse.Namespace, seed: int) -> Path:
    """`compalign iterate` (in this process) for one training seed (resumes); its work folder."""
    from compalign.cli import app

    workdir = args.root / f"seed{seed}"
    cmd = [
        "iterate", *args.iterate_args,
        "--workdir", str(workdir), "--seed", str(seed),
        "--eval-per-category", str(args.protocol["per_category"]),
        "--eval-seeds", *map(str, args.protocol["seeds"]),
    ]  # fmt: skip
    print(f"[loop seed {seed}] compalign {shlex.join(cmd)}", flush=True)
    try:
        app(cmd, prog_name="compalign")
        rc = 0
    except SystemExit as e:  # click's standalone mode always exits
        rc = e.code or 0
    if rc != 0:
        fail(f"compalign iterate (seed {seed}) exited with {rc}; fix it and rerun (it resumes)")
    return workdir


def loop_rows(workdir: Path, seed: int, command: str) -> tuple[list[dict], dict, IterateConfig]:
    """Rows of one finished loop: iter<k> and iter<k>+reno per iteration, and the base's row."""
    state = State(workdir)
    config = IterateConfig.from_dict({**state.data["config"], "workdir": str(workdir)})
    base_label = Workspace(config).spec_label(abs_spec(config.base))
    rows, base_row = [], None
    for k in range(1, config.iterations + 1):
        ev = state.outputs(k, "evaluate")
        if not ev:
            fail(f"{workdir}: iteration {k} has no evaluation (state.json); the loop did not finish")
        names = ev["order"]
        settings = (state.entry(k, "evaluate") or {}).get("settings") or {}
        minutes = sum(
            (state.entry(k, s) or {}).get("seconds", 0) or 0 for s in state.data["iterations"][str(k)]
        )
        new = ev["models"][names[-1]]
        r = row(
            f"iter{k}",
            new,
            seed=seed,
            model=str(workdir / f"iter_{k}" / "base"),
            command=command,
            settings={**settings, "iteration_minutes": round(minutes / 60, 1)},
        )
        r["diagnostics"] = signal_diagnostics(state, k)
        rows.append(r)
        if k == 1:
            base = [m for n, m in ev["models"].items() if m["spec"] == base_label and n != names[-1]]
            if not base:
                fail(f"{workdir}: iteration 1's evaluation lacks the base {config.base}")
            base_row = row(
                "world-web", base[0], seed=None, model=config.base, command=command, settings=settings
            )
        reno = state.outputs(k, "reno")
        if reno.get("enabled"):
            rs = (state.entry(k, "reno") or {}).get("settings") or {}
            rows.append(
                row(
                    f"iter{k}+reno",
                    reno["reno"],
                    seed=seed,
                    model=f"{reno['generator']} ({reno['spec']})",
                    command=command,
                    settings={**rs, "note": reno.get("note")},
                )
            )
    return rows, base_row, config


def signal_diagnostics(state: State, k: int) -> dict:
    """Where iteration k's signal could be lost, per aspect: the reward model's held-out pair
    accuracy (on the gallery's pairs) and the reward check's agreement with the evaluator on the
    images whose verdict changed from the previous base to the new one."""
    rewards = state.outputs(k, "rewards")
    check = state.outputs(k, "evaluate").get("reward_check") or {}
    out = {}
    for a, v in rewards.items():
        c = (check.get("aspects") or {}).get(a) or {}
        out[a] = {
            "reward_heldout_pair_accuracy": v.get("heldout_accuracy"),
            "reward_evaluator_agreement_on_changed": c.get("agreement"),
            "changed_verdicts": c.get("decided_pairs"),
        }
    return out


# ------------------------------------------------------------------------------------ 2. headroom
def headroom_setup(args: argparse.Namespace, base: str, categories: list[str], seed: int):
    """(probe config, its samples' cache file, its result file) of the headroom probe of `base`."""
    from compalign.generators.world.rejection_sampling import RejectionSamplingConfig

    train_cats = args.headroom_categories or [c for c in categories if c != "single_object"]
    cfg = RejectionSamplingConfig(
        categories=train_cats,
        prompts_per_category=args.headroom_prompts,
        samples_per_prompt=args.headroom_samples,
        steps=args.headroom_steps,
        learning_rate=args.headroom_lr,
        balanced=args.headroom_balanced,
        train_text_encoder=args.headroom_text_encoder,
        seed=seed,
    )
    sampled = {
        "base": base,
        "weights": fingerprint(base),
        "categories": train_cats,
        "prompts": cfg.prompts_per_category,
        "samples": cfg.samples_per_prompt,
    }
    settings = {
        **vars(cfg),
        "evaluator": evaluator_key(),
        "protocol": args.protocol,
        "eval_categories": categories,
    }
    folder = args.root / "headroom"
    return (
        cfg,
        folder / f"samples-{_key(sampled)}.npz",
        folder / f"seed{seed}-{_key([sampled, settings])}.json",
    )


def headroom(args: argparse.Namespace, base: str, categories: list[str], seed: int) -> dict:
    """The rejection-sampling probe of `base`: its held-out result (cached under ROOT/headroom)."""
    import torch

    from compalign.generators import create_generator
    from compalign.generators.world.rejection_sampling import finetune_on_samples, passing, sample_and_judge

    cfg, samples_file, out = headroom_setup(args, base, categories, seed)
    if out.is_file():
        return json.loads(out.read_text())
    torch.manual_seed(seed)
    gen = create_generator(base)
    samples = sample_and_judge(gen, cfg, cache=samples_file)
    keep = passing(samples)
    if len(keep) == 0:
        fail(f"headroom: none of {base}'s {len(samples['passed'])} train samples passes the evaluator")
    print(
        f"[headroom seed {seed}] fine-tuning on {len(keep)} of {len(samples['passed'])} samples", flush=True
    )
    finetune_on_samples(
        gen.pipe,
        samples["images"][keep],
        samples["prompts"][keep].tolist(),
        cfg,
        categories=samples["cats"][keep],
    )
    res = held_out(args, gen, categories)
    res["settings"] = {**vars(cfg), "passing_samples": int(len(keep)), "samples": int(len(samples["passed"]))}
    atomic_write_json(out, res)
    return res


# ------------------------------------------------------------------------------------ 3. reference
def held_out(args: argparse.Namespace, gen, categories: list[str]) -> dict:
    """`gen`'s held-out result under the protocol (without the per-image records)."""
    from compalign.world.quality import evaluate_generator

    res = evaluate_generator(
        gen, categories, args.protocol["per_category"], args.protocol["seeds"], progress=False
    )
    res.pop("records")
    return res


def evaluate_cached(args: argparse.Namespace, spec: str, categories: list[str]) -> dict:
    from compalign.generators import create_generator

    ident = {
        "spec": spec,
        "weights": fingerprint(spec),
        "categories": categories,
        "protocol": args.protocol,
        "evaluator": evaluator_key(),
    }
    out = args.root / "eval" / f"{Path(spec).name}-{_key(ident)}.json"
    if out.is_file():
        return json.loads(out.read_text())
    res = held_out(args, create_generator(spec), categories)
    atomic_write_json(out, res)
    return res


# ------------------------------------------------------------------------------------ 4. aims, report
def seed_mean(rows: list[dict], name: str, field: str) -> float | None:
    vals = [r[field] for r in rows if r["row"] == name and r[field] is not None]
    return float(np.mean(vals)) if vals else None


def check_aims(rows: list[dict]) -> dict:
    """Each aim: its figure (seed means, points) and whether it is met (None: a row is missing)."""
    m = {
        n: seed_mean(rows, n, "aspect_mean")
        for n in ("world-web", "iter1", "iter2", "iter1+reno", "headroom")
    }
    so = {n: seed_mean(rows, n, "single_object") for n in ("world-web", "iter1")}

    def diff(a, b):
        return None if a is None or b is None else round(a - b, 2)

    figures = {
        "iter1 - world-web (mean of the aspects)": diff(m["iter1"], m["world-web"]),
        "iter2 - iter1": diff(m["iter2"], m["iter1"]),
        "|iter1 - world-web| (single_object), at most": None
        if diff(so["iter1"], so["world-web"]) is None
        else abs(diff(so["iter1"], so["world-web"])),
        "iter1+reno - iter1": diff(m["iter1+reno"], m["iter1"]),
        "headroom - world-web": diff(m["headroom"], m["world-web"]),
    }
    out = {}
    for name, target in AIMS.items():
        v = figures[name]
        met = None if v is None else (v <= target if "at most" in name else v >= target)
        out[name] = {"figure": v, "target": target, "met": met}
    return out


def markdown(rows: list[dict], aims: dict, aspects: list[str]) -> str:
    head = ["row", "seed", *aspects, "mean", "single_object"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for r in rows:
        vals = [r["aspects"].get(a) for a in aspects] + [r["aspect_mean"], r["single_object"]]
        seed = "-" if r["train_seed"] is None else str(r["train_seed"])
        lines.append(
            f"| {r['row']} | {seed} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |"
        )
    lines += ["", "| aim | figure (points) | target | met |", "|---|---:|---:|---|"]
    for name, a in aims.items():
        fig = "-" if a["figure"] is None else f"{a['figure']:+.1f}"
        lines.append(f"| {name} | {fig} | {a['target']:g} | {'-' if a['met'] is None else a['met']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    iterate_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s [options] -- ITERATE-OPTIONS"
    )
    ap.add_argument(
        "--root", type=Path, default=Path("runs/itercomp_world"), help="Work folder of every run."
    )
    ap.add_argument(
        "--train-seeds", type=int, nargs="+", default=[0, 1], help="Seeds of the loop and the probe."
    )
    ap.add_argument(
        "--reference", default=None, help="The perfect-caption reference model (a row when given)."
    )
    ap.add_argument("--no-headroom", action="store_true", help="Skip the rejection-sampling probe.")
    ap.add_argument(
        "--headroom-only",
        metavar="BASE",
        default=None,
        help="Measure only BASE and its headroom probe (the check before the loop); no `--`.",
    )
    ap.add_argument(
        "--headroom-categories",
        nargs="+",
        default=None,
        help="Train categories of the probe (default: the evaluated ones but single_object).",
    )
    ap.add_argument("--headroom-prompts", type=int, default=100, help="Train prompts per category.")
    ap.add_argument("--headroom-samples", type=int, default=8, help="Samples per train prompt.")
    ap.add_argument("--headroom-steps", type=int, default=400, help="Fine-tuning steps.")
    ap.add_argument("--headroom-lr", type=float, default=5e-5, help="Fine-tuning learning rate.")
    ap.add_argument(
        "--headroom-balanced", action="store_true", help="Draw a category uniformly, then a passing image."
    )
    ap.add_argument("--headroom-text-encoder", action="store_true", help="Fine-tune the text encoder too.")
    ap.add_argument(
        "--per-category",
        type=int,
        default=DEFAULT_PROTOCOL["per_category"],
        help="Held-out prompts per category of every evaluation.",
    )
    ap.add_argument(
        "--eval-seeds",
        type=int,
        nargs="+",
        default=DEFAULT_PROTOCOL["seeds"],
        help="Seeds per held-out prompt.",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of the probe and reference.")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/itercomp_world.json"))
    ap.add_argument("--md", type=Path, default=None, help="Also write the table as Markdown here.")
    args = ap.parse_args(own)
    args.iterate_args = iterate_args
    args.protocol = {"split": "heldout", "per_category": args.per_category, "seeds": list(args.eval_seeds)}
    if any(a in ("--workdir", "--seed", "--eval-per-category", "--eval-seeds") for a in iterate_args):
        fail(
            "--workdir, --seed, --eval-per-category and --eval-seeds are set by this command; leave them out"
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    own_command = shlex.join([Path(sys.argv[0]).as_posix(), *argv])

    # 1. the loop, per training seed (or, with --headroom-only, the base alone)
    rows, base_row, config = [], None, None
    if args.headroom_only:
        if iterate_args:
            fail("--headroom-only runs no loop: leave out `--` and the iterate options")
        config = IterateConfig.from_dict({"workdir": str(args.root), "base": args.headroom_only})
        res = evaluate_cached(args, config.base, config.evaluation_categories())
        settings = {"protocol": args.protocol}
        base_row = row("world-web", res, seed=None, model=config.base, command=own_command, settings=settings)
    loop_command = shlex.join(["compalign", "iterate", *iterate_args])
    for s in [] if args.headroom_only else args.train_seeds:
        seed_rows, b, config = loop_rows(run_loop(args, s), s, loop_command)
        rows += seed_rows
        base_row = base_row or b
    categories = config.evaluation_categories()
    rows.insert(0, base_row)

    # 2. the headroom probe of the base, per training seed
    if not args.no_headroom:
        for s in args.train_seeds:
            res = headroom(args, config.base, categories, s)
            rows.append(
                row("headroom", res, seed=s, model=config.base, command=own_command, settings=res["settings"])
            )

    # 3. the reference
    if args.reference:
        res = evaluate_cached(args, args.reference, categories)
        rows.append(
            row(
                "reference",
                res,
                seed=None,
                model=args.reference,
                command=own_command,
                settings={"protocol": args.protocol},
            )
        )

    # 4. aims and the files
    aims = check_aims(rows)
    out = {
        "protocol": {**args.protocol, "categories": categories, "evaluator": evaluator_key()},
        "command": own_command,
        "rows": rows,
        "aims": aims,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": version("torch"),
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    }
    atomic_write_json(args.json, out)
    table = markdown(rows, aims, list(config.aspects))
    if args.md:
        atomic_write_text(args.md, table)
    print(table)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

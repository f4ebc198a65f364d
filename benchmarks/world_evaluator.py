"""Measure the exact evaluator on held-out prompts: two renderers, clean / perturbed / wrong, and an
adversarial set.

    python benchmarks/world_evaluator.py --res 32 64 --per-category 100 --adversarial 40 --seed 0

Per renderer, resolution and category (the first `--per-category` held-out prompts of the suite):
- clean: fraction of clean renders accepted (target >= 99%)
- perturbed: fraction accepted after the world's perturbation (shift up to 1 px, Gaussian blur sigma
  1 px, brightness and gain jitter, Gaussian noise sigma 0.1); for the second renderer half of
  these renders also draw every object 1 px larger (target >= 95%)
- wrong: fraction rejected among renders of a scene that truly contradicts the prompt (target
  >= 99%). World renderer: colours swapped, relation reversed, count off by one, shape swapped.
  Second renderer: the same kinds plus near-threshold ones (touching / on top of with a 2-4 px gap,
  next to at a 0.26-0.32 gap, just outside the container, counts off by one with two objects
  2-3 px apart, sizes just across a class boundary).

The world renderer is `compalign.world.render`; the second renderer is independently written
(`tests/world/second_renderer.py`, which states the meanings it encodes). Adversarial images
(uniform canvases, blurred colour noise, pixel noise, blurred and overlapping blobs, off-grammar
shapes) are scored against every prompt of every suite, train and held-out (targets: uniform
canvases and pixel noise pass no prompt, blurred colour noise <= 0.5% of single_object prompts);
true scenes among 8-10 distractors count as accepted or not.

Prints Markdown tables and writes every figure, the failing cases, the command, the seed and the
machine to `--json` (default benchmarks/evaluator_world.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.world import figures  # noqa: E402
from tests.world import second_renderer as sr  # noqa: E402

from compalign.io import atomic_write_json  # noqa: E402
from compalign.world.suites import CATEGORIES  # noqa: E402

MAX_PER_CATEGORY = 100  # held-out prompts per category in the shipped suites


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"error: {message}\n")


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores}-core {platform.machine()} CPU, torch {version('torch')}, numpy {np.__version__}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=[32, 64], help="resolutions (px), e.g. 32 64")
    ap.add_argument(
        "--per-category", type=int, default=MAX_PER_CATEGORY, help="held-out prompts per category"
    )
    ap.add_argument("--adversarial", type=int, default=40, help="images per adversarial kind (0: none)")
    ap.add_argument("--renderers", nargs="+", default=list(figures.RENDERERS), help="world and/or second")
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), help="suite categories")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "evaluator_world.json"), help="output file")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="measure nothing: combine result files of runs made per resolution, renderer or set of "
        "--categories (e.g. in parallel processes; one of them with the adversarial set) into --json "
        "and print the summary tables",
    )
    args = ap.parse_args(argv)
    for path in args.merge or ():
        if not Path(path).is_file():
            ap.error(f"--merge: no such file {path}")
    for r in args.res:
        if r < 16:
            ap.error(f"--res: resolution must be at least 16 px, got {r}")
    if not 1 <= args.per_category <= MAX_PER_CATEGORY:
        ap.error(f"--per-category: expected 1..{MAX_PER_CATEGORY}, got {args.per_category}")
    if args.adversarial < 0:
        ap.error(f"--adversarial: expected >= 0, got {args.adversarial}")
    for name in args.renderers:
        if name not in figures.RENDERERS:
            ap.error(f"--renderers: unknown renderer {name!r}; expected {' or '.join(figures.RENDERERS)}")
    for name in args.categories:
        if name not in CATEGORIES:
            ap.error(f"--categories: unknown category {name!r}; expected one of {', '.join(CATEGORIES)}")
    out = Path(args.json).resolve().parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        ap.error(f"--json: cannot create the folder {out}: {err.strerror}")
    if not os.access(out, os.W_OK):
        ap.error(f"--json: the folder {out} is not writable")
    return args


def _pct(x: float) -> str:
    return f"{x:.1%}"


def category_table(renderer: str, res: int, rows: list[dict]) -> str:
    lines = [
        f"| category ({renderer} renderer, {res} px) | n | clean accepted | perturbed accepted "
        "| wrong rejected (n) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['category']} | {r['n']} | {_pct(r['clean_accept'])} | {_pct(r['perturbed_accept'])} "
            f"| {_pct(r['wrong_reject'])} ({r['wrong_n']}) |"
        )
    n, wn = sum(r["n"] for r in rows), sum(r["wrong_n"] for r in rows)
    keys = ("clean_accept", "perturbed_accept", "wrong_reject")
    clean, pert, wrong = (figures.pooled(rows, k) for k in keys)
    lines.append(f"| **all** | {n} | {_pct(clean)} | {_pct(pert)} | {_pct(wrong)} ({wn}) |")
    return "\n".join(lines)


def wrong_kind_table(res: int, rows: list[dict]) -> str:
    tally: dict[str, list[int]] = {}
    for r in rows:
        for kind, (rej, n) in r["wrong_by_kind"].items():
            t = tally.setdefault(kind, [0, 0])
            t[0] += rej
            t[1] += n
    grown = [sum(r["perturbed_grown"][k] for r in rows) for k in (0, 1)]
    lines = [f"| wrong kind (second renderer, {res} px) | n | rejected |", "|---|---|---|"]
    for kind in sr.WRONG_KINDS:
        if kind in tally:
            rej, n = tally[kind]
            lines.append(f"| {kind} | {n} | {_pct(rej / n)} |")
    lines.append(f"\nPerturbed renders drawn 1 px larger: {grown[0]}/{grown[1]} accepted.")
    return "\n".join(lines)


def adversarial_table(res: int, adv: dict) -> str:
    lines = [
        f"| adversarial ({res} px) | images | pass >= 1 prompt | prompts passed | single_object passed "
        "| objects found |",
        "|---|---|---|---|---|---|",
    ]
    for kind in sr.ADVERSARIAL_KINDS:
        if kind not in adv or kind == "many_distractors":
            continue
        a = adv[kind]
        lines.append(
            f"| {kind} | {a['n']} | {a['passing_images']} | {a['prompt_pass_fraction']:.2%} "
            f"| {a['single_object_pass_fraction']:.2%} | {a['objects_found']:.1f} |"
        )
    if "many_distractors" in adv:
        a = adv["many_distractors"]
        lines.append(
            f"\nTrue scenes among 8-10 distractors: {a['accepted']}/{a['n']} accepted "
            f"({_pct(a['accepted_fraction'])}; {a['skipped']} without room)."
        )
    return "\n".join(lines)


def _entry(r: dict) -> dict:
    return {
        "n": r["n"],
        "clean": r["clean_accept"],
        "perturbed": r["perturbed_accept"],
        "wrong": r["wrong_reject"],
        "wrong_n": r["wrong_n"],
        "wrong_by_kind": {k: {"rejected": v[0], "n": v[1]} for k, v in r["wrong_by_kind"].items()},
        "perturbed_grown": {"accepted": r["perturbed_grown"][0], "n": r["perturbed_grown"][1]},
        "skipped": r["skipped"],
    }


def summary_tables(result: dict) -> str:
    """README tables from a result: per resolution, both renderers side by side, then adversarial."""
    out = []
    for res in sorted({r for fig in result["figures"].values() for r in fig}, key=int):
        renderers = [r for r in figures.RENDERERS if res in result["figures"].get(r, {})]
        head = " | ".join(f"{r}: clean / perturbed / wrong rejected (n)" for r in renderers)
        lines = [f"| category ({res} px) | {head} |", "|---" * (1 + len(renderers)) + "|"]
        cats = list(result["figures"][renderers[0]][res])
        for c in [*cats, "all"]:
            cells = []
            for r in renderers:
                if c == "all":
                    p = result["pooled"][r][res]
                    wn = sum(e["wrong_n"] for e in result["figures"][r][res].values())
                    vals = (p["clean_accept"], p["perturbed_accept"], p["wrong_reject"], wn)
                else:
                    e = result["figures"][r][res][c]
                    vals = (e["clean"], e["perturbed"], e["wrong"], e["wrong_n"])
                cells.append(f"{_pct(vals[0])} / {_pct(vals[1])} / {_pct(vals[2])} ({vals[3]})")
            name = "**all**" if c == "all" else c
            lines.append(
                f"| {name} ({result['figures'][renderers[0]][res][cats[0]]['n']}) | "
                + " | ".join(cells)
                + " |"
            )
        out.append("\n".join(lines))
        if res in result["adversarial"]:
            out.append(adversarial_table(int(res), result["adversarial"][res]))
    return "\n\n".join(out)


def merge(paths: list[str], out: str) -> dict:
    """Combine result files into one result written to `out`: runs made per resolution, per
    renderer or per set of categories (a resolution split by `--categories` into several
    processes; at most one of them measures the adversarial set). Pooled figures are recomputed
    from the per-category ones."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    for p, path in zip(parts, paths, strict=True):
        if (p["seed"], p["per_category"]) != (parts[0]["seed"], parts[0]["per_category"]):
            raise SystemExit(
                f"error: --merge: {path} has seed / per_category {p['seed']} / {p['per_category']}, "
                f"{paths[0]} {parts[0]['seed']} / {parts[0]['per_category']}"
            )
    result = {k: parts[0][k] for k in ("seed", "per_category", "machine")}
    result["command"] = " && ".join(p["command"] for p in parts)
    result["res"] = sorted({r for p in parts for r in p["res"]})
    figs: dict = {}
    timing: dict = {}  # renderer -> res -> [seconds x images, images]
    for p in parts:
        for renderer, by_res in p["figures"].items():
            for res, by_cat in by_res.items():
                cats = figs.setdefault(renderer, {}).setdefault(res, {})
                for c in by_cat:
                    if c in cats:
                        raise SystemExit(f"error: --merge: {renderer} {res} px {c} is in more than one file")
                cats.update(by_cat)
                n = sum(e["n"] for e in by_cat.values())
                t = timing.setdefault(renderer, {}).setdefault(res, [0.0, 0])
                t[0] += p["seconds_per_image"][renderer][res] * n
                t[1] += n
    result["figures"] = {
        r: {
            res: dict(sorted(cats.items(), key=lambda kv: CATEGORIES.index(kv[0])))
            for res, cats in by_res.items()
        }
        for r, by_res in figs.items()
    }
    result["pooled"] = {
        r: {
            res: {
                "clean_accept": sum(e["clean"] * e["n"] for e in cats.values())
                / max(1, sum(e["n"] for e in cats.values())),
                "perturbed_accept": sum(e["perturbed"] * e["n"] for e in cats.values())
                / max(1, sum(e["n"] for e in cats.values())),
                "wrong_reject": sum(e["wrong"] * e["wrong_n"] for e in cats.values())
                / max(1, sum(e["wrong_n"] for e in cats.values())),
            }
            for res, cats in by_res.items()
        }
        for r, by_res in result["figures"].items()
    }
    result["seconds_per_image"] = {
        r: {res: t[0] / max(1, t[1]) for res, t in by_res.items()} for r, by_res in timing.items()
    }
    result["adversarial"] = {}
    for p in parts:
        for res, adv in p["adversarial"].items():
            if res in result["adversarial"]:
                raise SystemExit(f"error: --merge: the adversarial set at {res} px is in more than one file")
            result["adversarial"][res] = adv
            result["seconds_per_image"].setdefault("adversarial", {})[res] = p["seconds_per_image"][
                "adversarial"
            ][res]
    result["failures"] = [f for p in parts for f in p["failures"]]
    result["misses"] = target_misses_of(result)
    result["wall_seconds"] = sum(p["wall_seconds"] for p in parts)
    atomic_write_json(out, result)
    return result


def target_misses_of(result: dict) -> list[str]:
    """The issue's targets missed by a result (see `figures.target_misses`), every resolution."""
    misses = []
    for res in result["res"]:
        key = str(res)
        rows = [
            {"renderer": r, "category": c, "n": e["n"], "wrong_n": e["wrong_n"]}
            | {"clean_accept": e["clean"], "perturbed_accept": e["perturbed"], "wrong_reject": e["wrong"]}
            for r, by_res in result["figures"].items()
            for c, e in by_res.get(key, {}).items()
        ]
        misses += figures.target_misses(rows, result["adversarial"].get(key), int(res))
    return misses


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        result = merge(args.merge, args.json)
        print(summary_tables(result))
        print("\nTargets missed:\n" + ("\n".join(result["misses"]) or "none"))
        print(f"\nmerged {len(args.merge)} files into {args.json}")
        return result
    n_adv = sum(figures.adversarial_counts(args.adversarial).values()) if args.adversarial else 0
    total = len(args.res) * (len(args.renderers) * len(args.categories) * args.per_category + n_adv)
    result: dict = {
        "command": "python benchmarks/world_evaluator.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "per_category": args.per_category,
        "res": args.res,
        "machine": machine(),
        "figures": {},
        "pooled": {},
        "adversarial": {},
        "seconds_per_image": {},
        "failures": [],
    }
    t_start = time.time()
    bar = tqdm(total=total, desc="evaluator figures", unit="prompt", file=sys.stderr, dynamic_ncols=True)
    tables = []
    for res in args.res:
        for renderer in args.renderers:
            rows = []
            for category in args.categories:
                bar.set_postfix_str(f"{renderer} {res}px {category}")
                rows.append(
                    figures.measure(renderer, category, res, args.per_category, args.seed, tick=bar.update)
                )
            seconds = sum(r["eval_seconds"] for r in rows) / max(1, sum(r["images"] for r in rows))
            result["figures"].setdefault(renderer, {})[str(res)] = {r["category"]: _entry(r) for r in rows}
            result["pooled"].setdefault(renderer, {})[str(res)] = {
                k: figures.pooled(rows, k) for k in ("clean_accept", "perturbed_accept", "wrong_reject")
            }
            result["seconds_per_image"].setdefault(renderer, {})[str(res)] = seconds
            result["failures"] += [f for r in rows for f in r["failures"]]
            tables.append(category_table(renderer, res, rows))
            if renderer == "second":
                tables.append(wrong_kind_table(res, rows))
            tables.append(
                f"Evaluator time: {seconds * 1000:.1f} ms per image ({renderer} renderer, {res} px)."
            )
            tqdm.write("\n\n".join(tables[-3 if renderer == "second" else -2 :]) + "\n", file=sys.stdout)
        if args.adversarial:
            bar.set_postfix_str(f"adversarial {res}px")
            adv = figures.measure_adversarial(res, args.adversarial, args.seed, tick=bar.update)
            seconds = adv.pop("_eval_seconds") / max(1, adv.pop("_images"))
            result["adversarial"][str(res)] = adv
            result["seconds_per_image"].setdefault("adversarial", {})[str(res)] = seconds
            tables.append(adversarial_table(res, adv))
            tqdm.write(
                tables[-1] + f"\n\nAdversarial: {seconds * 1000:.1f} ms per image (evaluator + scoring).\n"
            )
    bar.close()
    result["wall_seconds"] = time.time() - t_start
    result["misses"] = target_misses_of(result)
    print(f"{result['wall_seconds']:.0f} s in all; {len(result['failures'])} failing cases in {args.json}")
    atomic_write_json(args.json, result)
    print("\n" + summary_tables(result))
    print("\nTargets missed:\n" + ("\n".join(result["misses"]) or "none"))
    return result


if __name__ == "__main__":
    main()

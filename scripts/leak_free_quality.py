"""Held-out accuracy on the whole suites next to the leak-free subset, from `world quality --json`.

    python scripts/leak_free_quality.py runs/quality.json [--model world-base]

World models trained on suite v1's split (per wording) may have seen, in another wording, the
meaning of some held-out prompts (`compalign.world.suites.leaked_under_v1`). This prints, per
category and aspect, the accuracy on all held-out prompts and on the leak-free ones (the prompts no
wording of which was ever a training scene), with the number of images behind each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compalign.world.suites import CATEGORY_ASPECT, leaked_under_v1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="a `compalign world quality --json` file")
    ap.add_argument("--model", action="append", help="models to report (default: all in the file)")
    args = ap.parse_args()
    path = Path(args.json)
    if not path.is_file():
        sys.exit(f"error: no such file {path}")
    data = json.loads(path.read_text())
    results = [r for r in data["results"] if not args.model or r["model"] in args.model]
    leaked: dict[str, bool] = {}
    print("| model | category | all held-out (n) | leak-free (n) |")
    print("|---|---|---:|---:|")
    for r in results:
        by_cat: dict[str, list[list[int]]] = {}
        for rec in r["records"]:
            if rec["prompt"] not in leaked:
                leaked[rec["prompt"]] = leaked_under_v1(rec["prompt"])
            t = by_cat.setdefault(rec["category"], [[0, 0], [0, 0]])
            t[0][0] += rec["passed"]
            t[0][1] += 1
            if not leaked[rec["prompt"]]:
                t[1][0] += rec["passed"]
                t[1][1] += 1
        aspects: dict[str, list[list[float]]] = {}
        for cat, (full, free) in by_cat.items():
            acc = [100 * full[0] / full[1], 100 * free[0] / free[1] if free[1] else float("nan")]
            print(f"| {r['model']} | {cat} | {acc[0]:.1f} ({full[1]}) | {acc[1]:.1f} ({free[1]}) |")
            if CATEGORY_ASPECT.get(cat):
                aspects.setdefault(CATEGORY_ASPECT[cat], []).append(acc)
        for aspect, accs in aspects.items():
            full = sum(a[0] for a in accs) / len(accs)
            free = [a[1] for a in accs if a[1] == a[1]]
            free_s = f"{sum(free) / len(free):.1f}" if free else "-"
            print(f"| {r['model']} | *{aspect}* | {full:.1f} | {free_s} |")


if __name__ == "__main__":
    main()

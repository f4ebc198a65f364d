"""Time the iterate loop's reward check on a finished work folder: rendering the two bases' images
again (folders from before evaluations kept them) vs. scoring the evaluation's stored images.

    python scripts/time_reward_check.py WORKDIR OUT [--threads 2]

The stored images are made by evaluating both bases of iteration 1 again into OUT, as the evaluate
stage now does. Prints both times and, per aspect, the two checks' accuracies, rewards and agreement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from compalign.iterate.config import IterateConfig, base_name
from compalign.iterate.loop import IterateRun, State, _abs_spec, eval_images_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wd = args.workdir
    state = json.loads((wd / "state.json").read_text())
    config = IterateConfig.from_dict({**state["config"], "workdir": str(wd)})
    run = IterateRun(config, log=lambda m: None)
    run.state = State(wd)

    t = time.perf_counter()
    rendered = run._reward_check(1)
    t_rendered = time.perf_counter() - t

    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    prev_name, prev_spec, _ = run.current_base(1)
    for name, spec in [(prev_name, prev_spec), (base_name(1), str(run.base_dir(1).resolve()))]:
        f = args.out / f"{name}.json"
        res = run._evaluate(name, spec, config.eval_per_category, keep_images=eval_images_path(f))
        f.write_text(json.dumps({"result": res}))
        files[_abs_spec(spec)] = f
    t = time.perf_counter()
    stored = run._reward_check(1, files)
    t_stored = time.perf_counter() - t

    print(f"rendered again: {t_rendered:.1f} s (rendered {rendered['rendered']})")
    print(f"stored images:  {t_stored:.1f} s (rendered {stored['rendered']})")
    for a, r in rendered["aspects"].items():
        s = stored["aspects"][a]
        print(f"{a}: accuracy {r['accuracy']} / {s['accuracy']}")
        print(f"  reward {r['reward']} / {s['reward']}; agreement {r['agreement']} / {s['agreement']}")


if __name__ == "__main__":
    main()

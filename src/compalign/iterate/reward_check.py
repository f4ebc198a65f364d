"""The reward check of the evaluate stage: do iteration k's reward models see what feedback
training changed?

The previous and the new base's images of the held-out evaluation prompts of each aspect (the
first evaluation seed: the evaluation's own images, read from its ``eval/<model>.images.npz``
when `files` names the evaluation file of the model's spec, rendered again otherwise) each get the
aspect reward model's score and the exact evaluator's verdict (from the evaluation's records). Per
aspect: mean reward and accuracy of both bases, and, over the (prompt, seed) pairs whose verdicts
differ, how often the reward prefers the base the evaluator prefers (its pair accuracy on exactly
the changes feedback training made). `report_lines` is the report's section on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..generators import create_generator
from ..rewards.registry import create_reward
from ..world.quality import evaluate_generator
from ..world.suites import list_categories
from .config import base_name
from .eval_store import eval_images_path, load_eval_images
from .state import IterateError
from .workspace import Workspace, abs_spec


def reward_check(ws: Workspace, k: int, files: dict[str, Path] | None = None) -> dict:
    """The check of iteration k (`files`: absolute spec -> its evaluation file); see the module doc."""
    c = ws.config
    seed = c.eval_seeds[0]
    prev_name, prev_spec, _ = ws.current_base(k)
    models = {prev_name: prev_spec, base_name(k): str(ws.base_dir(k).resolve())}
    files = files or {}
    records = {}  # name -> the evaluation's first-seed records, when it stored its images
    for n, spec in models.items():
        f = files.get(abs_spec(spec))
        if f is not None and f.is_file() and eval_images_path(f).is_file():
            recs = json.loads(f.read_text())["result"]["records"]
            records[n] = (eval_images_path(f), [r for r in recs if r["seed"] == seed])
    gens: dict = {}
    out: dict = {"seed": seed, "models": list(models), "aspects": {}, "rendered": []}
    # the evaluation files whose stored images were scored (the report's sample grid shows them)
    out["files"] = {n: ws.rel(files[abs_spec(models[n])]) for n in records}
    evaluated = set(c.evaluation_categories())
    for aspect in c.aspects:
        cats = [x for x in list_categories(aspect) if x in evaluated]
        if not cats:
            continue
        score = _scorer(ws.reward_model(k, aspect))
        per: dict = {}  # name -> (reward scores, verdicts (passed, score), prompts)
        for name, spec in models.items():
            got, recs = None, []
            if name in records:
                got, recs = _score_stored(*records[name], cats, score)
            if got is None:  # no stored images (a work folder from before they were kept): render again
                if name not in out["rendered"]:
                    out["rendered"].append(name)
                got, recs = _score_rendered(ws, gens, name, spec, cats, seed, score)
            per[name] = (got, [(r["passed"], r["score"]) for r in recs], [r["prompt"] for r in recs])
        (r0, v0, p0), (r1, v1, p1) = per[prev_name], per[base_name(k)]
        if p0 != p1:
            raise IterateError(f"reward check: the two bases' {aspect} images are not of the same prompts")
        decided = [(a > b, x > y) for a, b, x, y in zip(v1, v0, r1, r0, strict=True) if a != b]
        out["aspects"][aspect] = {
            "images": len(v0),
            "reward": {n: sum(r) / len(r) for n, (r, _, _) in per.items()},
            "accuracy": {n: sum(ok for ok, _ in v) / len(v) for n, (_, v, _) in per.items()},
            "decided_pairs": len(decided),
            "agreement": (sum(e == w for e, w in decided) / len(decided)) if decided else None,
        }
    return out


def _scorer(model: Path):
    """score(images, prompts) -> rewards of the composition reward model at `model`."""

    reward = create_reward(f"composition:{model}")
    reward.eval()
    dev = next(reward.parameters()).device

    def score(images, prompts) -> list[float]:
        with torch.no_grad():
            return reward(images.float().to(dev), prompts).float().tolist()

    return score


def _score_stored(path: Path, recs: list[dict], cats: list[str], score):
    """(scores, records) of the stored images of `cats`, or (None, []) when they cannot be read."""
    # in rendering order: category by category (the aspect's order), then prompts
    recs = sorted((r for r in recs if r["category"] in cats), key=lambda r: cats.index(r["category"]))
    stored = load_eval_images(path, [r["category"] for r in recs], [r["prompt"] for r in recs])
    if stored is None:
        return None, []
    prompts = [r["prompt"] for r in recs]
    got = [x for i in range(0, len(recs), 256) for x in score(stored[i : i + 256], prompts[i : i + 256])]
    return got, recs


def _score_rendered(ws: Workspace, gens: dict, name: str, spec: str, cats: list[str], seed: int, score):
    """(scores, records) of the model's images of `cats` rendered and judged again (`gens`: the
    generators loaded so far, by name)."""

    c = ws.config
    if name not in gens:
        gens[name] = create_generator(spec, device=c.device)
    got: list[float] = []

    def generate(prompts, seeds, gen=gens[name]):
        with torch.no_grad():
            images = gen.generate(prompts, seeds=seeds).float()
        got.extend(score(images, prompts))
        return images

    recs = evaluate_generator(
        gens[name], cats, c.eval_per_category, [seed], batch_size=c.eval_batch_size,
        workers=c.workers, progress=False, generate=generate,
    )["records"]  # fmt: skip
    return got, recs


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


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


def report_lines(check: dict | None, k: int) -> list[str]:
    """The report's section on the check (a table per aspect with its `reward_check_verdict`)."""
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

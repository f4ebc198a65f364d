"""Evaluation of a composition reward model on a pairs file.

- pair accuracy (a tie counts one half) and mean Bradley-Terry loss, overall and per
  (better model, worse model) combination;
- for world galleries (every prompt parses with the world grammar): the Spearman rank correlation
  between the model's scores and the exact evaluator's clause score
  (`compalign.world.evaluator.evaluate(image, prompt).score`) over every distinct image (with its
  prompt) of the selected pairs. The evaluator reads the image files at their own resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compalign.world.evaluator import evaluate
from compalign.world.grammar import PromptError, parse_prompt

from .data import PairSet, read_pairs
from .train import bt_loss, pair_accuracy, score_items


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr  # lazy: loads scipy (compalign.world)

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def is_world_prompts(prompts) -> bool:
    try:
        for p in set(prompts):
            parse_prompt(p)
    except (PromptError, ValueError):
        return False
    return True


def evaluate_reward_on_pairs(
    model,
    pairs_file: str | Path,
    split: str | None = "heldout",
    aspect: str | None = None,
    batch_size: int = 128,
    world: bool | None = None,
    progress: bool = False,
) -> dict:
    """Accuracy (and, for world prompts, the Spearman correlation with the exact evaluator) of
    `model` (a `CompositionRewardModel`) on the pairs of `split` (None: all) and `aspect` (None:
    the model's). `world`: None detects world prompts; False skips the correlation."""

    aspect = aspect or model.aspect
    pairs = read_pairs(pairs_file, aspect=aspect, split=split)
    ps = PairSet(pairs, model.image_size, progress=progress)
    items = ps.items()
    scores = score_items(model, ps.images, items, batch_size, normalized=True)
    pos = {it: i for i, it in enumerate(items)}
    sb = torch.stack([scores[pos[(i, p)]] for i, p in zip(ps.better.tolist(), ps.prompts, strict=True)])
    sw = torch.stack([scores[pos[(i, p)]] for i, p in zip(ps.worse.tolist(), ps.prompts, strict=True)])
    report = {
        "model": getattr(model, "source", "<model>"),
        "aspect": aspect,
        "split": split or "all",
        "pairs": len(ps),
        "prompts": len(set(ps.prompts)),
        "images": len(items),
        "accuracy": pair_accuracy(sb, sw),
        "loss": float(bt_loss(sb, sw).mean()),
        "mean_score": float(scores.mean()),
        "std_score": float(scores.std(unbiased=False)) if len(scores) > 1 else 0.0,
    }
    by_models: dict[tuple[str, str], list[int]] = {}
    for n, p in enumerate(ps.pairs):
        by_models.setdefault((p.better_model, p.worse_model), []).append(n)
    report["by_models"] = [
        {"better_model": b, "worse_model": w, "pairs": len(ix), "accuracy": pair_accuracy(sb[ix], sw[ix])}
        for (b, w), ix in sorted(by_models.items())
    ]
    if world is None:
        world = is_world_prompts(ps.prompts)
    report["world"] = bool(world)
    if world:
        exact, keys = [], {}
        for img_idx, prompt in items:
            with Image.open(ps.paths[img_idx]) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            v = evaluate(arr, prompt)
            exact.append(v.score)
            keys[(img_idx, prompt)] = (v.passed, v.score)
        report["evaluator_mean_score"] = float(np.mean(exact))
        report["spearman_vs_evaluator"] = spearman(scores.numpy(), exact)
        report["spearman_images"] = len(items)
        # The pairs whose exact-evaluator verdicts differ (passes every clause, then the fraction of
        # clauses), oriented by the evaluator: the accuracy the issue asks for. Pairs only ordered
        # by a tie-break (same verdict on both images) are left out here.
        right, n = [], 0
        triples = zip(ps.better.tolist(), ps.worse.tolist(), ps.prompts, strict=True)
        for k, (bi, wi, prompt) in enumerate(triples):
            kb, kw = keys[(bi, prompt)], keys[(wi, prompt)]
            if kb == kw:
                continue
            n += 1
            hi, lo = (sb[k], sw[k]) if kb > kw else (sw[k], sb[k])
            right.append(1.0 if hi > lo else 0.5 if hi == lo else 0.0)
        report["evaluator_decided_pairs"] = n
        report["evaluator_decided_accuracy"] = float(np.mean(right)) if right else float("nan")
    return report


def format_report(report: dict) -> str:
    """A plain-text summary of `evaluate_reward_on_pairs`."""
    lines = [
        f"model     {report['model']}",
        f"aspect    {report['aspect']}   split {report['split']}",
        f"pairs     {report['pairs']} ({report['prompts']} prompts, {report['images']} images)",
        f"accuracy  {report['accuracy']:.4f}   (Bradley-Terry loss {report['loss']:.4f})",
    ]
    if report.get("world"):
        lines.append(
            f"spearman  {report['spearman_vs_evaluator']:.4f}   (scores vs exact evaluator clause score, "
            f"{report['spearman_images']} images; evaluator mean {report['evaluator_mean_score']:.3f})"
        )
        lines.append(
            f"decided   {report['evaluator_decided_accuracy']:.4f}   (accuracy on the "
            f"{report['evaluator_decided_pairs']} pairs whose exact-evaluator verdicts differ)"
        )
    else:
        lines.append("spearman  -        (prompts outside the world grammar: no exact evaluator)")
    if len(report["by_models"]) > 1:
        lines.append("by model pair (better > worse): pairs, accuracy")
        for r in report["by_models"]:
            lines.append(f"  {r['better_model']} > {r['worse_model']}: {r['pairs']}, {r['accuracy']:.4f}")
    return "\n".join(lines)

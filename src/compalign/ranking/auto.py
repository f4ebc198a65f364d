"""Ranking by machines: order each record's images by a judge and write the ``rank`` lists.

Judges

- ``world`` (default): the exact world evaluator. Images are ordered by (passes every clause,
  fraction of clauses that hold), then, to break what is still equal, by the ``world-clip`` reward
  (cosine of image and prompt embeddings) unless ``tie_break="none"``. When the world-clip weights
  are missing the tie-break falls back to none, and says so. Models still equal on every key are an
  explicit tie (``rank_ties``), listed in the record's model order.
- ``reward:SPEC``: any registered `Reward` (``reward:world-clip``, ``reward:clip:/path``, ...),
  higher score first; exactly equal scores tie.

The scores are kept in the rank sidecar (``gallery_ranks.json``, per record ``scores``). The world
judge also keeps each image's verdict under ``judged`` (which a later expansion does not clear), so
re-ranking after ``gallery expand`` judges only the new models' images (``rejudge=True``: all).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..gallery.format import Gallery, GalleryError, Record
from ..rewards.registry import create_reward
from ..world.grammar import PromptError, parse_prompt
from ..world.quality import judge_images
from .order import Tiers


@dataclass
class JudgeResult:
    keys: dict[int, dict[str, tuple]]  # record index -> model -> sort key (higher is better)
    key_names: list[str]
    tie_break: str
    notes: list[str] = field(default_factory=list)


def load_rgb(path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise GalleryError(f"{path}: cannot read the image: {e}") from None


def tiers_from_keys(keys: dict[str, tuple], models: Sequence[str]) -> Tiers:
    """Models sorted by key (higher first); equal keys share a tier, in model order."""
    levels = sorted(set(keys.values()), reverse=True)
    return [[m for m in models if keys[m] == lv] for lv in levels]


def _world_keys(
    g: Gallery, pairs: Sequence[tuple[Record, str]], workers: int, progress: bool
) -> dict[int, dict]:
    for r in {r.index: r for r, _ in pairs}.values():
        try:
            parse_prompt(r.prompt)
        except PromptError as e:
            raise GalleryError(
                f"{g.gallery_file}: record index {r.index}, field prompt: not a world prompt ({e}); "
                "the world judge needs world prompts, use --judge reward:NAME"
            ) from None
    out: dict[int, dict] = {}
    bar = tqdm(total=len(pairs), desc="judging", unit="img", disable=not progress, file=sys.stderr)
    with bar:
        chunk = 32 * max(1, workers)
        for s in range(0, len(pairs), chunk):
            part = pairs[s : s + chunk]
            arrs = [load_rgb(g.image_file(r, m)) for r, m in part]
            shapes = {a.shape for a in arrs}
            if len(shapes) == 1:
                verdicts = judge_images(np.stack(arrs), [r.prompt for r, _ in part], workers=workers)
            else:
                verdicts = [
                    judge_images(a[None], [r.prompt])[0] for a, (r, _) in zip(arrs, part, strict=True)
                ]
            for (r, m), (passed, score) in zip(part, verdicts, strict=True):
                out.setdefault(r.index, {})[m] = (int(bool(passed)), round(float(score), 6))
            bar.update(len(part))
    return out


def _reward_keys(g: Gallery, pairs: Sequence[tuple[Record, str]], reward, progress: bool) -> dict[int, dict]:
    out: dict[int, dict] = {}
    dev = next((p.device for p in reward.parameters()), torch.device("cpu"))
    per_record: dict[int, tuple[Record, list[str]]] = {}
    for r, m in pairs:
        per_record.setdefault(r.index, (r, []))[1].append(m)
    for r, models in tqdm(
        per_record.values(), desc="reward", unit="record", disable=not progress, file=sys.stderr
    ):
        arrs = {m: load_rgb(g.image_file(r, m)) for m in models}
        groups: dict[tuple, list[str]] = {}
        for m, a in arrs.items():
            groups.setdefault(a.shape, []).append(m)
        for ms in groups.values():
            x = torch.from_numpy(np.stack([arrs[m] for m in ms])).permute(0, 3, 1, 2).float().div(255).to(dev)
            with torch.no_grad():
                s = reward(x, [r.prompt] * len(ms)).float().cpu().tolist()
            for m, v in zip(ms, s, strict=True):
                out.setdefault(r.index, {})[m] = round(float(v), 6)
    return out


def _judged(g: Gallery, records: Sequence[Record], names: list[str]) -> dict[int, dict[str, tuple]]:
    """World-judge keys stored by an earlier ranking with the same key names (``judged``)."""
    if g.ranks.get("judged_keys") != names:
        return {}
    out: dict[int, dict[str, tuple]] = {}
    for r in records:
        stored = g.judged(r.index)
        for m in r.models:
            if isinstance(stored.get(m), list) and len(stored[m]) == len(names):
                out.setdefault(r.index, {})[m] = tuple(stored[m])
    return out


def _create_reward(spec: str, device):
    return create_reward(spec, device=device).eval()


def judge_gallery(
    g: Gallery,
    judge: str = "world",
    tie_break: str = "world-clip",
    records: Sequence[Record] | None = None,
    workers: int = 0,
    device: str | None = None,
    progress: bool = False,
    rejudge: bool = False,
) -> JudgeResult:
    records = list(records if records is not None else g.records)
    pairs = [(r, m) for r in records for m in r.models]
    if judge == "world":
        if tie_break not in ("world-clip", "none"):
            raise GalleryError(f"unknown --tie-break {tie_break!r}; expected world-clip or none")
        names = ["passed", "clause_score"] + (["world_clip"] if tie_break == "world-clip" else [])
        reused = {} if rejudge else _judged(g, records, names)
        todo = [(r, m) for r, m in pairs if m not in reused.get(r.index, {})]
        keys = _world_keys(g, todo, workers, progress)
        notes = []
        if reused:
            n = sum(len(d) for d in reused.values())
            notes.append(f"{n} image(s) kept the verdicts stored by the last ranking; {len(todo)} judged")
        used = "none"
        if tie_break == "world-clip":
            try:
                reward = _create_reward("world-clip", device) if todo else None
            except (LookupError, FileNotFoundError, ImportError, OSError) as e:
                notes.append(
                    f"world-clip weights missing ({str(e).split(';')[0]}): models equal on the evaluator "
                    "keep the model order in rank and are stored as ties"
                )
                used = "model order (world-clip missing): ties"
                names = names[:2]
                reused = {i: {m: k[:2] for m, k in d.items()} for i, d in reused.items()}
            else:
                clip = _reward_keys(g, todo, reward, progress) if todo else {}
                keys = {i: {m: (*k, clip[i][m]) for m, k in d.items()} for i, d in keys.items()}
                used = "world-clip"
        for i, d in reused.items():
            keys.setdefault(i, {}).update(d)
        g.ranks["judged_keys"] = names
        for r in records:
            g.set_judged(r.index, {m: list(keys[r.index][m]) for m in r.models})
        return JudgeResult(keys, names, used, notes)
    if judge.startswith("reward:") and len(judge) > len("reward:"):
        spec = judge[len("reward:") :]
        try:
            reward = _create_reward(spec, device)
        except (LookupError, FileNotFoundError, ImportError, OSError, ValueError, TypeError) as e:
            raise GalleryError(f"--judge {judge}: {str(e).splitlines()[0]}") from None
        vals = _reward_keys(g, pairs, reward, progress)
        return JudgeResult({i: {m: (v,) for m, v in d.items()} for i, d in vals.items()}, [spec], "none")
    raise GalleryError(f"unknown --judge {judge!r}; expected 'world' or 'reward:NAME' (a registered reward)")


def rank_gallery(
    g: Gallery,
    judge: str = "world",
    tie_break: str = "world-clip",
    workers: int = 0,
    device: str | None = None,
    progress: bool = False,
    save: bool = True,
    rejudge: bool = False,
) -> dict:
    """Rank every record by `judge`; writes ``rank`` and the sidecar (when `save`). Returns a summary.
    The world judge reuses the verdicts an earlier ranking stored (``judged``) unless `rejudge`."""
    res = judge_gallery(
        g, judge, tie_break, workers=workers, device=device, progress=progress, rejudge=rejudge
    )
    n_ties = 0
    for r in g.records:
        keys = res.keys[r.index]
        tiers = tiers_from_keys(keys, r.models)
        n_ties += sum(len(t) > 1 for t in tiers)
        g.set_tiers(r, tiers, scores={m: list(keys[m]) for m in r.models}, source=f"auto:{judge}")
    g.ranks.update(
        method="auto",
        judge=judge,
        tie_break=res.tie_break if judge == "world" else "none",
        keys=res.key_names,
        rule=(
            "higher first by " + ", then ".join(res.key_names) + "; models equal on every key are tied "
            "(rank_ties) and listed in model order"
        ),
        notes=res.notes,
    )
    if save:
        g.add_history("rank-auto", judge=judge, tie_break=res.tie_break)
        g.save()
    return {"records": len(g.records), "tie_groups": n_ties, "notes": res.notes, "tie_break": res.tie_break}

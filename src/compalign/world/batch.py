"""Batch jobs on image folders: render prompt sets, evaluate a folder, draw a contact sheet.

These are the library side of `compalign world render | eval | demo`; the CLI only parses options
and prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..io import atomic_save_image, atomic_write_json
from .evaluator import check, evaluate, find_objects
from .grammar import PromptError, Scene, parse_prompt
from .io import MANIFEST_VERSION, ImageEntry, ImageSet, Manifest, validate_dir, write_manifest
from .layout import LayoutError, sample_layout
from .render import Placed, render, to_uint8
from .suites import CATEGORIES, CATEGORY_ASPECT, SUITE_VERSION

EVAL_NAME = "eval.json"
NO_CATEGORY = "(none)"


class RenderError(ValueError):
    """A prompt set that cannot be rendered (a prompt outside the grammar, or no layout fits)."""


@dataclass(frozen=True)
class RenderItem:
    prompt: str
    category: str | None  # a suite category, or None for user prompts
    index: int  # position of the prompt in its suite / in the user's list
    sample: int  # 0 .. seeds-1

    @property
    def file(self) -> str:
        return f"{self.category or 'prompts'}/{self.index:04d}_{self.sample:02d}.png"


def image_rng(seed: int, item: RenderItem) -> np.random.Generator:
    """The random stream of one image: a function of (seed, category, prompt index, sample index) only,
    so an image does not change when other prompts are added to or removed from the set."""
    cat = CATEGORIES.index(item.category) + 1 if item.category in CATEGORIES else 0
    return np.random.default_rng([seed, cat, item.index, item.sample])


def plan(
    groups: Iterable[tuple[str | None, Sequence[str], Sequence[int] | None]], seeds: int = 1
) -> list[RenderItem]:
    """Items for (category, prompts, indices) groups; `indices` default to 0..len-1."""
    items = []
    for category, prompts, indices in groups:
        idx = list(indices) if indices is not None else list(range(len(prompts)))
        for i, p in zip(idx, prompts, strict=True):
            items.extend(RenderItem(p, category, i, s) for s in range(seeds))
    return items


def layouts_for(items: Sequence[RenderItem], seed: int, progress: bool = False) -> list[list[Placed]]:
    """Parse every prompt and sample every layout before anything is written."""
    scenes: dict[str, Scene] = {}
    for it in items:
        if it.prompt not in scenes:
            try:
                scenes[it.prompt] = parse_prompt(it.prompt)
            except PromptError as e:
                where = f"{it.category} prompt {it.index}" if it.category else f"prompt {it.index + 1}"
                raise RenderError(f"{where} is outside the world grammar: {e}") from None
    out = []
    for it in tqdm(items, desc="layout", unit="img", disable=not progress, leave=False):
        try:
            out.append(sample_layout(scenes[it.prompt], image_rng(seed, it)))
        except LayoutError as e:
            raise RenderError(f"no layout fits prompt {it.prompt!r}: {e}") from None
    return out


def render_set(
    items: Sequence[RenderItem],
    out_dir: str | os.PathLike,
    res: int = 32,
    seed: int = 0,
    progress: bool = True,
    layouts: Sequence[list[Placed]] | None = None,
) -> Manifest:
    """Render items to `out_dir` as PNGs plus `manifest.json` (written last, atomically).

    Deterministic: the same items, resolution and seed give byte-identical files. Prompts and
    layouts are all checked first, so a bad prompt raises `RenderError` with nothing written
    (`layouts`: those `layouts_for(items, seed)` already returned).
    """
    if res < 16:
        raise RenderError(f"resolution must be at least 16 px, got {res}")
    if seed < 0:
        raise RenderError(f"seed must be >= 0, got {seed}")
    if not items:
        raise RenderError("no prompts to render")
    if layouts is None:
        layouts = layouts_for(items, seed, progress)
    out = Path(out_dir)
    entries = []
    for it, objects in tqdm(
        list(zip(items, layouts, strict=True)), desc="render", unit="img", disable=not progress, leave=False
    ):
        atomic_save_image(out / it.file, to_uint8(render(objects, res)))
        entries.append(
            ImageEntry(it.file, it.prompt, it.category, seed, {"index": it.index, "sample": it.sample})
        )
    manifest = Manifest(resolution=res, images=entries, version=MANIFEST_VERSION)
    write_manifest(out, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# evaluation


def _summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    passed = sum(r["passed"] for r in records)
    return {
        "n": n,
        "passed": passed,
        "pass_rate": passed / n if n else 0.0,
        "mean_score": float(np.mean([r["score"] for r in records])) if n else 0.0,
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-category, per-aspect and overall pass rate and mean score of per-image records."""
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        by_cat.setdefault(r.get("category") or NO_CATEGORY, []).append(r)
    order = [c for c in CATEGORIES if c in by_cat] + sorted(c for c in by_cat if c not in CATEGORIES)
    categories = {c: {"aspect": CATEGORY_ASPECT.get(c), **_summary(by_cat[c])} for c in order}
    by_aspect: dict[str, list[dict]] = {}
    for c in order:
        if CATEGORY_ASPECT.get(c):
            by_aspect.setdefault(CATEGORY_ASPECT[c], []).extend(by_cat[c])
    aspects = {a: _summary(rs) for a, rs in by_aspect.items()}
    return {"overall": _summary(records), "categories": categories, "aspects": aspects}


def evaluate_set(image_set: ImageSet, progress: bool = True) -> dict[str, Any]:
    """Evaluate every image of a validated set; returns the report (see `evaluate_dir`)."""
    records = []
    pairs = list(zip(image_set.manifest.images, image_set.images, image_set.scenes, strict=True))
    for entry, img, scene in tqdm(pairs, desc="eval", unit="img", disable=not progress, leave=False):
        verdict = check(scene, find_objects(img), entry.prompt)
        rec = {"file": entry.file, "category": entry.category, "seed": entry.seed}
        rec.update(verdict.to_dict())
        records.append(rec)
    return {
        "version": 1,
        "manifest": str(image_set.manifest_file),
        "manifest_sha256": image_set.manifest_sha256,
        "resolution": image_set.manifest.resolution,
        "suite_version": SUITE_VERSION,
        **summarize(records),
        "images": records,
    }


@dataclass
class EvalRun:
    report: dict[str, Any]
    path: Path  # where the report was written
    image_set: ImageSet


def evaluate_dir(
    directory: str | os.PathLike, out: str | os.PathLike | None = None, progress: bool = True
) -> EvalRun:
    """Validate a folder (raises `ManifestError`, nothing written), evaluate it, write the report.

    The report goes to `out` (default `directory/eval.json`), atomically.
    """
    image_set = validate_dir(directory)
    report = evaluate_set(image_set, progress)
    path = Path(out) if out is not None else image_set.directory / EVAL_NAME
    atomic_write_json(path, report)
    return EvalRun(report, path, image_set)


def verdict(image, prompt: str) -> dict[str, Any] | None:
    """``{"passed", "score"}`` of the exact evaluator on one image (None: the prompt is outside the
    grammar, nothing to judge). For grids and logs of stages that write images."""
    try:
        v = evaluate(image, prompt)
    except PromptError:
        return None
    return {"passed": bool(v.passed), "score": float(v.score)}


# --------------------------------------------------------------------------------------------
# contact sheet


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + " ..."
    return lines


def make_grid(
    image_set: ImageSet,
    report: dict[str, Any] | None = None,
    per_row: int = 4,
    tile: int = 128,
):
    """A contact sheet: one row per category, up to `per_row` images each, captioned with the
    prompt (and PASS/FAIL in green/red when a report is given). Returns a PIL image."""
    font = _font(11)
    label_font = _font(13)
    line_h = 13
    cap_lines = 4
    pad = 6
    label_w = 112
    cell_w, cell_h = tile + pad, tile + pad + line_h * (cap_lines + 1)
    verdicts = {(r["file"], r["prompt"]): r for r in (report or {}).get("images", [])}
    rows: dict[str, list[int]] = {}
    for i, e in enumerate(image_set.manifest.images):
        rows.setdefault(e.category or NO_CATEGORY, [])
        if len(rows[e.category or NO_CATEGORY]) < per_row:
            rows[e.category or NO_CATEGORY].append(i)
    sheet = Image.new("RGB", (label_w + per_row * cell_w + pad, len(rows) * cell_h + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for r, (category, idx) in enumerate(rows.items()):
        y0 = pad + r * cell_h
        draw.text((pad, y0 + tile // 2 - 8), category, fill=(20, 20, 20), font=label_font)
        aspect = CATEGORY_ASPECT.get(category)
        for k, line in enumerate(
            _wrap(aspect.replace("_", " ") if aspect else "", font, label_w - 2 * pad, 2)
        ):
            draw.text((pad, y0 + tile // 2 + 8 + k * line_h), line, fill=(110, 110, 110), font=font)
        for c, i in enumerate(idx):
            x0 = label_w + c * cell_w
            entry = image_set.manifest.images[i]
            img = Image.fromarray(image_set.images[i]).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(img, (x0, y0))
            ty = y0 + tile + 2
            v = verdicts.get((entry.file, entry.prompt))
            if v is not None:
                ok = v["passed"]
                draw.text(
                    (x0, ty),
                    f"{'PASS' if ok else 'FAIL'}  {v['score']:.2f}",
                    fill=(0, 140, 0) if ok else (200, 0, 0),
                    font=font,
                )
                ty += line_h
            for line in _wrap(entry.prompt, font, tile, cap_lines):
                draw.text((x0, ty), line, fill=(40, 40, 40), font=font)
                ty += line_h
    return sheet


def save_grid(image_set: ImageSet, path: str | os.PathLike, report: dict[str, Any] | None = None) -> Path:
    return atomic_save_image(path, make_grid(image_set, report))

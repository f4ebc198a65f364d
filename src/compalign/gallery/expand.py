"""Gallery expansion: add models (e.g. the fine-tuned model of the last iteration) to a gallery.

The new models render every record with the record's own seed and the gallery's settings
(resumable, several processes as in `generate`); their images are appended to each record
(``image_<new>`` after the old ones), and the ranking is merged:

- every ranked record keeps its old order as ``initial_rank`` (and ``initial_rank_ties``); an
  initial rank of an earlier expansion moves to ``initial_rank_history`` in the rank sidecar;
- ``auto`` (galleries ranked by a judge): every record is re-ranked over all models by the same
  judge;
- ``people`` (galleries ranked by people, or imported IterComp ranks): each ranked record gets an
  insertion job in ``rankings.sqlite``: the old order (with its ties) plus the new models, which
  the web tool (``rank serve``) turns into "new vs. existing" questions, binary insertion with
  every place reachable (`ranking.order.binary_insertion`). ``rank`` is removed until
  ``rank export`` writes the merged order; unranked records are ranked in full as usual;
- ``none``: ranks are removed (``initial_rank`` kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..ranking.auto import rank_gallery
from ..ranking.people import open_store
from .format import GalleryError, gallery_dir, image_path, load_gallery
from .generate import (
    check_model_spec,
    check_sampling,
    check_world_prompts,
    clean_stale_tmp,
    dist_state,
    parse_models,
    render_models,
)

MODES = ("auto", "people", "none")


def default_mode(method: str | None) -> str:
    if method == "auto":
        return "auto"
    if method in ("people", "imported"):
        return "people"
    return "none"


def expand_gallery(
    path: str | Path,
    add_models: Sequence[str],
    *,
    mode: str | None = None,
    judge: str | None = None,
    tie_break: str | None = None,
    seed: int | None = None,
    resolution: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
    device: str | None = None,
    workers: int = 0,
    progress: bool = False,
) -> dict | None:
    """Render `add_models` for every record and merge them into the ranking; returns a summary on
    the main process (None on the others)."""
    g = load_gallery(gallery_dir(path))
    if not add_models:
        raise GalleryError("no models to add: give --add-model NAME ...")
    specs = parse_models(add_models, existing=g.models)
    for m in specs:
        check_model_spec(m)
    check_sampling(steps, guidance, batch_size)
    check_world_prompts([r.prompt for r in g.records], specs)
    mode = mode or default_mode(g.ranks.get("method"))
    if mode not in MODES:
        raise GalleryError(f"unknown ranking mode {mode!r}; expected one of {', '.join(MODES)}")
    meta_seeds = g.meta.get("seeds") or {}
    seeds = {}
    for r in g.records:
        s = meta_seeds.get(str(r.index))
        if s is None:
            if seed is None:
                raise GalleryError(
                    f"{g.meta_file}: record index {r.index} has no seed (an imported gallery); give --seed S "
                    "to render record i with seed S + i"
                )
            s = seed + r.index
        seeds[r.index] = int(s)
    settings = dict(g.meta.get("settings") or {})
    resolution = resolution if resolution is not None else settings.get("resolution")
    steps = steps if steps is not None else settings.get("steps")
    guidance = guidance if guidance is not None else settings.get("guidance")
    judge = judge or g.ranks.get("judge") or "world"
    tie_break = tie_break or (
        "world-clip" if g.ranks.get("tie_break", "world-clip") == "world-clip" else "none"
    )

    state = dist_state(device)
    if state.is_main_process:
        clean_stale_tmp(g.root, [m.name for m in specs])
    state.wait_for_everyone()
    info = render_models(
        g.root,
        g.records,
        specs,
        seeds,
        resolution=resolution,
        steps=steps,
        guidance=guidance,
        batch_size=batch_size,
        device=device,
        progress=progress,
        state=state,
    )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return merge_models(g, specs, info, mode, judge, tie_break, seeds, workers=workers, device=device)


def merge_models(g, specs, info, mode, judge, tie_break, seeds, workers=0, device=None) -> dict:
    """Main process: add the rendered models to the records and merge the ranking."""
    names = [m.name for m in specs]
    for r in g.records:
        for m in names:
            if not (g.root / image_path(m, r.index)).is_file():
                raise GalleryError(
                    f"{g.root}: record index {r.index} has no image of model {m} after rendering"
                )
    notes = []
    jobs = []
    store = None
    if mode == "people":
        store = open_store(g)
        exported = g.ranks.get("store_rankings_at_export", 0)
        if store.count() > exported:
            notes.append(
                f"{store.count() - exported} ranking(s) in rankings.sqlite were saved after the last "
                "`rank export`; the insertion starts from the gallery's rank, not from them"
            )
    kept = 0
    for r in g.records:
        old_tiers = g.tiers(r)
        kept += r.rank is not None
        g.keep_initial(r)
        for m in names:
            r.images[m] = image_path(m, r.index)
        if old_tiers is not None and mode == "people":
            jobs.append((r.index, old_tiers, list(names)))
        g.clear_rank(r)
    for m in specs:
        g.meta["models"].append({**m.to_meta(), **info.get(m.name, {})})
    g.meta.setdefault("seeds", {}).update({str(i): s for i, s in seeds.items()})
    g.add_history("expand", models=names, mode=mode)
    g.validate(check_images=True)
    summary = {"added": names, "records": len(g.records), "mode": mode, "initial_kept": kept, "notes": notes}
    if mode == "auto":
        g.save()
        res = rank_gallery(g, judge=judge, tie_break=tie_break, workers=workers, device=device)
        summary.update(judge=judge, tie_break=res["tie_break"], notes=notes + res["notes"])
    elif mode == "people":
        store.add_jobs(jobs)
        g.ranks["method"] = "people"
        g.save()
        summary["insertion_jobs"] = len(jobs)
    else:
        g.save()
    return summary

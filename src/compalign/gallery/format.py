"""The gallery on disk: IterComp's record list plus two sidecars.

A gallery folder holds

- ``gallery.json``: IterComp's format, a JSON list of records
  ``{"index", "prompt", "image_<model>": path, ..., "initial_rank": [...], "rank": [...]}``.
  Paths are relative to the folder ('/'-separated). The record's models are its ``image_`` keys
  in order; ``rank[i] = j`` says the j-th of them (1-based) is ranked i-th. ``initial_rank``
  (after an expansion) ranks the first models, those the gallery had before.
- ``gallery_meta.json``: aspect, models in order (name, generator spec, resolution, settings),
  base seed and the seed of every record (``seed + index``), prompt source, history.
- ``gallery_ranks.json``: how the ranks were made (method, judge, tie-break rule) and per record
  the explicit ties (``rank_ties``, ``initial_rank_ties``: groups of 1-based model numbers, each
  group contiguous in its rank list) and the judge's scores. Pairs skip tied models. After a
  second expansion, the initial ranks it replaced are in ``initial_rank_history`` (oldest first,
  each with the models it ranks, its rank list and ties).
- ``images/<model>/<index:05d>.png`` for generated galleries; ``rankings.sqlite`` once people rank.

`load_gallery` checks everything (JSON, record fields, duplicate indices, unknown or missing
models, rank permutations, ties, paths inside the folder, image files) and raises `GalleryError`
with one line naming the file, the record and the field. `Gallery.save` writes the sidecars and
then ``gallery.json``, each atomically.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from ..io import atomic_write_json
from ..ranking.order import RankError, Tiers, check_rank, check_ties, is_int, rank_to_tiers, tiers_to_rank

GALLERY_FILE = "gallery.json"
META_FILE = "gallery_meta.json"
RANKS_FILE = "gallery_ranks.json"
IMAGES_DIR = "images"
IMAGE_PREFIX = "image_"
META_VERSION = 1
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_RECORD_KEYS = ("index", "prompt", "rank", "initial_rank")


class GalleryError(ValueError):
    """A gallery (or its input) is unusable; the one-line message names the file, record and field."""


def image_key(model: str) -> str:
    return IMAGE_PREFIX + model


def image_path(model: str, index: int) -> str:
    """Where a generated gallery keeps the image of `model` for record `index` (relative)."""
    return f"{IMAGES_DIR}/{model}/{index:05d}.png"


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise GalleryError(
            f"model name {name!r} must start with a letter or digit and hold only letters, digits, "
            "'.', '_', '+' and '-'"
        )
    return name


@dataclass
class Record:
    index: int
    prompt: str
    images: dict[str, str]  # model -> path relative to the gallery folder, in the record's order
    rank: list[int] | None = None
    initial_rank: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.images)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "prompt": self.prompt}
        d.update({image_key(m): p for m, p in self.images.items()})
        d.update(self.extra)
        if self.initial_rank is not None:
            d["initial_rank"] = list(self.initial_rank)
        if self.rank is not None:
            d["rank"] = list(self.rank)
        return d


def _where(source: str, pos: int, rec: Any, fld: str | None = None) -> str:
    idx = rec.get("index") if isinstance(rec, dict) else None
    who = f"record index {idx}" if is_int(idx) else f"record #{pos}"
    return f"{source}: {who}" + (f", field {fld}" if fld else "")


def _check_path(source: str, pos: int, rec: dict, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GalleryError(f"{_where(source, pos, rec, key)}: must be a non-empty path string")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise GalleryError(
            f"{_where(source, pos, rec, key)}: path {value!r} must be relative to the gallery folder and "
            "stay inside it (no absolute paths, no '..')"
        )
    return p.as_posix()


def parse_records(data: Any, source: str = GALLERY_FILE) -> list[Record]:
    """Records of an IterComp gallery list, checked field by field (not the image files)."""
    if not isinstance(data, list):
        raise GalleryError(f"{source}: must be a JSON list of records, got {type(data).__name__}")
    if not data:
        raise GalleryError(f"{source}: holds no records")
    records: list[Record] = []
    seen: dict[int, int] = {}
    for pos, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise GalleryError(f"{source}: record #{pos} must be a JSON object, got {type(rec).__name__}")
        idx = rec.get("index")
        if "index" not in rec:
            raise GalleryError(f"{_where(source, pos, rec, 'index')}: missing")
        if not is_int(idx) or idx < 0:
            raise GalleryError(f"{_where(source, pos, rec, 'index')}: must be an integer >= 0, got {idx!r}")
        if idx in seen:
            raise GalleryError(
                f"{_where(source, pos, rec, 'index')}: duplicate index {idx} (also record #{seen[idx]})"
            )
        seen[idx] = pos
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise GalleryError(f"{_where(source, pos, rec, 'prompt')}: must be a non-empty string")
        images: dict[str, str] = {}
        for key, value in rec.items():
            if key.startswith(IMAGE_PREFIX):
                model = key[len(IMAGE_PREFIX) :]
                if not MODEL_NAME.match(model):
                    raise GalleryError(
                        f"{_where(source, pos, rec, key)}: {model!r} is not a valid model name"
                    )
                images[model] = _check_path(source, pos, rec, key, value)
        if not images:
            raise GalleryError(f"{_where(source, pos, rec)}: has no image_<model> fields")
        rank = initial = None
        if rec.get("rank") is not None:
            try:
                rank = check_rank(rec["rank"], len(images))
            except RankError as e:
                raise GalleryError(f"{_where(source, pos, rec, 'rank')}: {e}") from None
        if rec.get("initial_rank") is not None:
            ir = rec["initial_rank"]
            n = len(ir) if isinstance(ir, list) else 0
            try:
                if n > len(images):
                    raise RankError(f"ranks {n} models but the record has {len(images)}")
                initial = check_rank(ir, n)
            except RankError as e:
                raise GalleryError(f"{_where(source, pos, rec, 'initial_rank')}: {e}") from None
        extra = {k: v for k, v in rec.items() if k not in _RECORD_KEYS and not k.startswith(IMAGE_PREFIX)}
        records.append(Record(idx, prompt, images, rank, initial, extra))
    return records


def check_models(records: list[Record], models: list[str], source: str = GALLERY_FILE) -> None:
    """Every record must hold exactly the gallery's models (in any order)."""
    known = set(models)
    for pos, r in enumerate(records):
        rec = {"index": r.index}
        for m in r.images:
            if m not in known:
                raise GalleryError(
                    f"{_where(source, pos, rec, image_key(m))}: unknown model {m!r} "
                    f"(the gallery's models: {', '.join(models)})"
                )
        for m in models:
            if m not in r.images:
                raise GalleryError(
                    f"{_where(source, pos, rec, image_key(m))}: missing (no image of model {m})"
                )


def check_image_files(
    records: list[Record], root: Path, source: str = GALLERY_FILE, decode: bool = False
) -> None:
    """Every image path must name a file inside `root` (symlinks may not lead out of it); with
    `decode`, every file must also decode as an image (whatever its name says)."""
    base = root.resolve()
    for pos, r in enumerate(records):
        for m, p in r.images.items():
            where = _where(source, pos, {"index": r.index}, image_key(m))
            f = root / p
            if not f.is_file():
                raise GalleryError(f"{where}: image {p} not found in {root}")
            if not f.resolve().is_relative_to(base):
                raise GalleryError(f"{where}: image {p} leads outside the gallery folder {root}")
            if decode:
                problem = image_problem(f)
                if problem is not None:
                    raise GalleryError(f"{where}: {p} is not a readable image ({problem})")


def image_problem(path: Path) -> str | None:
    """Why `path` does not decode as an image (its checksums, then every pixel), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.verify()  # chunk checksums and the end marker (PNG), without decoding
            with Image.open(path) as im:
                im.load()
                if im.width < 1 or im.height < 1:
                    return "no pixels"
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as e:
        return " ".join(str(e).split()) or type(e).__name__
    return None


def read_json(path: Path, what: str = "file") -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GalleryError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GalleryError(f"{path}: cannot read the {what}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GalleryError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def gallery_dir(path: str | Path) -> Path:
    """The gallery folder of a folder or of its gallery.json."""
    path = Path(path)
    if path.is_file() or path.name == GALLERY_FILE:
        return path.parent
    return path


@dataclass
class Gallery:
    root: Path
    records: list[Record]
    meta: dict[str, Any]
    ranks: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ paths and fields
    @property
    def gallery_file(self) -> Path:
        return self.root / GALLERY_FILE

    @property
    def meta_file(self) -> Path:
        return self.root / META_FILE

    @property
    def ranks_file(self) -> Path:
        return self.root / RANKS_FILE

    @property
    def models(self) -> list[str]:
        return [m["name"] for m in self.meta.get("models", [])]

    @property
    def aspect(self) -> str | None:
        return self.meta.get("aspect")

    def record(self, index: int) -> Record:
        for r in self.records:
            if r.index == index:
                return r
        raise KeyError(f"no record with index {index}")

    def by_index(self) -> dict[int, Record]:
        return {r.index: r for r in self.records}

    def image_file(self, record: Record, model: str) -> Path:
        return self.root / record.images[model]

    def seed_of(self, record: Record) -> int | None:
        seeds = self.meta.get("seeds") or {}
        s = seeds.get(str(record.index))
        return int(s) if s is not None else None

    # ------------------------------------------------------------------ ranks and ties
    def _rank_info(self, index: int, create: bool = False) -> dict:
        recs = self.ranks.setdefault("records", {}) if create else self.ranks.get("records", {})
        if create:
            return recs.setdefault(str(index), {})
        return recs.get(str(index), {})

    def ties(self, index: int, key: str = "rank_ties") -> list[list[int]]:
        return [list(g) for g in self._rank_info(index).get(key, [])]

    def tiers(self, record: Record) -> Tiers | None:
        """The record's ranking as tiers of model names (None when unranked)."""
        if record.rank is None:
            return None
        return rank_to_tiers(record.rank, self.ties(record.index), record.models)

    def initial_tiers(self, record: Record) -> Tiers | None:
        if record.initial_rank is None:
            return None
        m = len(record.initial_rank)
        return rank_to_tiers(
            record.initial_rank, self.ties(record.index, "initial_rank_ties"), record.models[:m]
        )

    def set_tiers(self, record: Record, tiers: Tiers, **info: Any) -> None:
        """Set the record's rank (and explicit ties) from tiers over all its models."""
        rank, ties = tiers_to_rank(tiers, record.models)
        record.rank = rank
        entry = self._rank_info(record.index, create=True)
        entry["rank_ties"] = ties
        for k in ("scores", "annotators", "borda", "source"):
            entry.pop(k, None)
        entry.update(info)

    def clear_rank(self, record: Record) -> None:
        record.rank = None
        entry = self._rank_info(record.index, create=True)
        for k in ("rank_ties", "scores", "annotators", "borda", "source"):
            entry.pop(k, None)

    def keep_initial(self, record: Record) -> None:
        """Before an expansion: the current rank (and ties) become the initial ones.

        An initial rank it replaces (from an earlier expansion) goes to the record's
        ``initial_rank_history`` in the rank sidecar, oldest first, with the models it ranks. A
        record without a rank (e.g. still waiting for insertion comparisons) keeps its initial rank.
        """
        if record.rank is None:
            return
        entry = self._rank_info(record.index, create=True)
        if record.initial_rank is not None:
            entry.setdefault("initial_rank_history", []).append(
                {
                    "models": record.models[: len(record.initial_rank)],
                    "rank": list(record.initial_rank),
                    "ties": self.ties(record.index, "initial_rank_ties"),
                }
            )
        record.initial_rank = list(record.rank)
        entry["initial_rank_ties"] = self.ties(record.index)

    def judged(self, index: int) -> dict[str, list]:
        """Verdicts a world-judge ranking stored per model (kept through an expansion)."""
        return dict(self._rank_info(index).get("judged", {}))

    def set_judged(self, index: int, verdicts: dict[str, list]) -> None:
        self._rank_info(index, create=True)["judged"] = verdicts

    def add_history(self, event: str, **info: Any) -> None:
        self.meta.setdefault("history", []).append(
            {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        )

    # ------------------------------------------------------------------ checks and writes
    def validate(self, check_images: bool = True) -> None:
        check_models(self.records, self.models, str(self.gallery_file))
        check_rank_sidecar(self)
        if check_images:
            check_image_files(self.records, self.root, str(self.gallery_file))

    def save(self) -> None:
        """Sidecars first, gallery.json last; each file atomically."""
        self.ranks.setdefault("version", META_VERSION)
        atomic_write_json(self.ranks_file, self.ranks)
        atomic_write_json(self.meta_file, self.meta)
        atomic_write_json(self.gallery_file, [r.to_json() for r in self.records])

    def summary(self) -> dict:
        ranked = sum(r.rank is not None for r in self.records)
        return {
            "records": len(self.records),
            "models": self.models,
            "aspect": self.aspect,
            "ranked": ranked,
            "method": self.ranks.get("method"),
        }


def check_rank_sidecar(g: Gallery) -> None:
    source = str(g.ranks_file)
    recs = g.ranks.get("records", {})
    if not isinstance(recs, dict):
        raise GalleryError(f"{source}: field records must be an object keyed by record index")
    by_index = g.by_index()
    for key, entry in recs.items():
        r = by_index.get(int(key)) if str(key).isdigit() else None
        if r is None:
            raise GalleryError(f"{source}: record index {key}: no such record in {GALLERY_FILE}")
        for fld, rank in (("rank_ties", r.rank), ("initial_rank_ties", r.initial_rank)):
            groups = entry.get(fld) or []
            if groups and rank is None:
                raise GalleryError(f"{source}: record index {key}, field {fld}: ties given but no rank")
            if groups:
                try:
                    check_ties(groups, rank)
                except RankError as e:
                    raise GalleryError(f"{source}: record index {key}, field {fld}: {e}") from None


def load_gallery(path: str | Path, check_images: bool = True) -> Gallery:
    """Load and check a gallery folder (or its gallery.json)."""
    root = gallery_dir(path)
    gfile = root / GALLERY_FILE
    if not root.is_dir() or not gfile.is_file():
        raise GalleryError(
            f"{root}: no {GALLERY_FILE} here; make one with `compalign gallery generate` or adopt an "
            "IterComp file with `compalign gallery import`"
        )
    records = parse_records(read_json(gfile, "gallery"), str(gfile))
    mfile = root / META_FILE
    if not mfile.is_file():
        raise GalleryError(
            f"{mfile}: not found; adopt an IterComp gallery file with "
            "`compalign gallery import FILE --root DIR`"
        )
    meta = read_json(mfile, "gallery metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("models"), list) or not meta["models"]:
        raise GalleryError(f"{mfile}: field models must be a non-empty list of {{'name': ...}} objects")
    for m in meta["models"]:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not MODEL_NAME.match(m["name"]):
            raise GalleryError(f"{mfile}: field models holds an entry without a valid name: {m!r}")
    rfile = root / RANKS_FILE
    ranks = read_json(rfile, "rank sidecar") if rfile.is_file() else {}
    if not isinstance(ranks, dict):
        raise GalleryError(f"{rfile}: must be a JSON object")
    g = Gallery(root, records, meta, ranks)
    g.validate(check_images=check_images)
    return g


def new_meta(aspect: str | None, models: list[dict], **fields: Any) -> dict:
    return {"version": META_VERSION, "aspect": aspect, "models": models, **fields}


def tiers_of(g: Gallery, index: int) -> Tiers | None:
    return g.tiers(g.record(index))

"""``compalign rank serve``: a small local web tool for people to rank a gallery.

Standard library only (`http.server`, `sqlite3`) plus one HTML/JS page (`page.PAGE`).

Routes

- ``GET /``: the page. ``GET /api/info``: gallery summary.
- ``GET /api/task?annotator=A[&index=I | &after=I]``: the annotator's next task (the first record,
  in gallery order and after record I if given, that they have not finished), or record I itself:
  ``kind`` ``rank`` (all images of the record, the saved order if any), ``compare`` (one question
  of a pending insertion after ``gallery expand``: the new model's image vs. one of the existing
  order) or ``done``.
- ``POST /api/rank`` ``{"annotator", "index", "order": [models best first], "ties": [[models]]}``.
- ``POST /api/compare`` ``{"annotator", "index", "job", "step", "new", "existing", "outcome"}``
  with outcome ``new`` / ``existing`` / ``tie``; ``POST /api/undo`` ``{"annotator", "job"}``.
- ``GET /images/<path>``: an image of the gallery; only the paths ``gallery.json`` lists are
  served (anything else is 404) and a file that resolves outside the gallery folder is 403.

Bad payloads (not JSON, not an object, a missing or wrong-typed field, an order that is not a
permutation of the record's models, ties that are not contiguous groups of it, an unknown record
or job) get a 4xx answer with ``{"error": ...}`` and nothing is stored; a stale compare answer gets
409. POSTs must be ``application/json`` (a cross-site form cannot send that without CORS, which
this server never grants) and, when a browser names an ``Origin``, come from this server's own
page; when bound to a loopback address, requests must name a loopback host (no DNS rebinding).
Malformed integers (``index=--1``, ``²``, thousands of digits), bodies nested thousands deep and
a malformed ``Content-Length`` are 400s.

Off loopback (``--host 0.0.0.0``) every request must carry the server's token, as Jupyter's do:
``?token=`` (the printed link has it), ``Authorization: token T``, or the cookie that opening the
link sets. Every answer has a Content-Security-Policy (the page's own inline script and style by
hash, nothing from elsewhere, ``frame-ancestors 'none'``) and ``X-Frame-Options: DENY``.

Requests run on a fixed pool of worker threads behind a deep listen backlog: 100 clients saving at
once are all answered (the standard library's backlog of 5 reset most of them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mimetypes
import random
import re
import secrets
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..gallery.format import Gallery, GalleryError, Record, gallery_dir, load_gallery
from .order import OUTCOMES, RankError, is_int, order_ties_to_tiers
from .page import PAGE
from .people import annotator_orders, open_store, task_list, valid_jobs
from .store import StaleError

MAX_BODY = 64 * 1024
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A decimal integer as the query string and Content-Length carry it: ASCII digits only (no "²",
# no "--1") and at most 18 of them (no 4,400-digit conversions).
INT_TEXT = re.compile(r"-?[0-9]{1,18}")
TOKEN_COOKIE = "compalign_rank_token"
TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~-]{8,200}")
# The page is one inline script and one inline style; everything else comes from this server.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _csp() -> str:
    """Content-Security-Policy of every answer: the page's own inline script and style (by hash),
    images and API calls from this origin only, no frames, forms, plugins or base URLs."""

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", PAGE, re.S)
        if body is None:  # pragma: no cover - the page always has both
            return "'none'"
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()).decode() + "'"

    return (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
        "img-src 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _annotator(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "annotator must be a non-empty string")
    name = value.strip()
    if len(name) > 100 or any(ord(c) < 32 for c in name):
        raise ApiError(400, "annotator must be at most 100 printable characters")
    return name


def _int(payload: dict, key: str) -> int:
    v = payload.get(key)
    if not is_int(v):
        raise ApiError(400, f"{key} must be an integer")
    return v


def _int_text(key: str, value: str | None) -> int | None:
    """An optional integer of the query string; None when absent or empty."""
    if value is None or value == "":
        return None
    if not INT_TEXT.fullmatch(value):
        raise ApiError(400, f"{key} must be an integer")
    return int(value)


def _shuffled(models: list[str], index: int) -> list[str]:
    """A fixed display order per record, so position does not follow the model order."""
    out = list(models)
    seed = int.from_bytes(hashlib.sha256(f"display|{index}".encode()).digest()[:8], "big")
    random.Random(seed).shuffle(out)
    return out


class RankingApp:
    """The gallery, its image paths and the ranking store behind the HTTP handler."""

    def __init__(self, gallery: Gallery):
        self.g = gallery
        self.store = open_store(gallery)
        self.by_index = gallery.by_index()
        self.images = {p: (r.index, m) for r in gallery.records for m, p in r.images.items()}
        self.root = gallery.root.resolve()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return "/images/" + quote(path)

    def record(self, index: int) -> Record:
        r = self.by_index.get(index)
        if r is None:
            raise ApiError(404, f"no record with index {index}")
        return r

    # ------------------------------------------------------------------ reads
    def info(self) -> dict:
        return {
            "gallery": self.g.root.name,
            "aspect": self.g.aspect,
            "records": len(self.g.records),
            "models": len(self.g.models),
        }

    def _progress(self, tasks) -> dict:
        done = sum(ok for _, _, ok in tasks)
        pending = sum(1 for _, job, ok in tasks if job is not None and not ok)
        return {"done": done, "total": len(tasks), "comparisons_pending": pending}

    def task(self, annotator: str, index: int | None = None, after: int | None = None) -> dict:
        tasks = task_list(self.g, self.store, annotator)
        progress = self._progress(tasks)
        positions = {r.index: k for k, (r, _, _) in enumerate(tasks)}
        if index is not None:
            self.record(index)
            k = positions[index]
        else:
            start = positions[after] + 1 if after is not None and after in positions else 0
            if after is not None and after not in positions:
                raise ApiError(404, f"no record with index {after}")
            order = list(range(start, len(tasks))) + list(range(0, start))
            k = next((i for i in order if not tasks[i][2]), None)
            if k is None:
                return {"kind": "done", "progress": progress, "first_index": tasks[0][0].index}
        r, job, complete = tasks[k]
        nav = {
            "prev_index": tasks[k - 1][0].index if k > 0 else None,
            "next_index": tasks[k + 1][0].index if k + 1 < len(tasks) else None,
            "position": k,
        }
        if job is not None and not complete:
            state, _ = self.store.insertion_state(job, annotator)
            q = state.question
            new_left = hashlib.sha256(f"{r.index}|{q.new}|{q.existing}".encode()).digest()[0] % 2 == 0
            return {
                "kind": "compare",
                "index": r.index,
                "prompt": r.prompt,
                "job": job.id,
                "step": q.step,
                "new": {"model": q.new, "url": self.url(r.images[q.new])},
                "existing": {"model": q.existing, "url": self.url(r.images[q.existing])},
                "left": "new" if new_left else "existing",
                "progress": progress,
                **nav,
            }
        saved = annotator_orders(self.g, self.store, annotator).get(annotator, {}).get(r.index)
        return {
            "kind": "rank",
            "index": r.index,
            "prompt": r.prompt,
            "images": [{"model": m, "url": self.url(r.images[m])} for m in _shuffled(r.models, r.index)],
            "saved": {"tiers": saved[0], "time": saved[1], "kind": saved[2]} if saved else None,
            "progress": progress,
            **nav,
        }

    # ------------------------------------------------------------------ writes
    def save_rank(self, payload: dict) -> dict:
        annotator = _annotator(payload.get("annotator"))
        r = self.record(_int(payload, "index"))
        order, ties = payload.get("order"), payload.get("ties", [])
        try:
            tiers = order_ties_to_tiers(order, ties, r.models)
        except RankError as e:
            raise ApiError(400, f"record {r.index}: {e}") from None
        flat = [m for t in tiers for m in t]
        groups = [t for t in tiers if len(t) > 1]
        self.store.add_ranking(annotator, r.index, r.models, flat, groups)
        return {"ok": True, "index": r.index, "tiers": tiers}

    def _job(self, payload: dict, r: Record):
        job_id = _int(payload, "job")
        job = valid_jobs(self.g, self.store).get(r.index)
        if job is None or job.id != job_id:
            raise ApiError(404, f"record {r.index} has no pending comparison job {job_id}")
        return job

    def save_compare(self, payload: dict) -> dict:
        annotator = _annotator(payload.get("annotator"))
        r = self.record(_int(payload, "index"))
        step = _int(payload, "step")
        new, existing, outcome = payload.get("new"), payload.get("existing"), payload.get("outcome")
        if outcome not in OUTCOMES:
            raise ApiError(400, f"outcome must be one of {', '.join(OUTCOMES)}")
        for key, v in (("new", new), ("existing", existing)):
            if not isinstance(v, str) or v not in r.images:
                raise ApiError(400, f"{key} must be one of the record's models")
        job = self._job(payload, r)
        try:
            state = self.store.answer(job, annotator, step, new, existing, outcome)
        except StaleError as e:
            raise ApiError(409, str(e)) from None
        return {"ok": True, "index": r.index, "done": state.done}

    def undo(self, payload: dict) -> dict:
        annotator = _annotator(payload.get("annotator"))
        r = self.record(_int(payload, "index"))
        job = self._job(payload, r)
        return {"ok": True, "undone": self.store.undo(job, annotator)}

    # ------------------------------------------------------------------ images
    def image(self, raw: str) -> tuple[bytes, str]:
        rel = unquote(raw)
        if rel not in self.images:
            raise ApiError(404, "not an image of this gallery")
        f = (self.g.root / rel).resolve()
        if not f.is_relative_to(self.root):
            raise ApiError(403, "outside the gallery folder")
        ctype = IMAGE_TYPES.get(f.suffix.lower()) or mimetypes.guess_type(f.name)[0] or ""
        if not ctype.startswith("image/"):
            raise ApiError(403, "not an image file")
        try:
            return f.read_bytes(), ctype
        except OSError:
            raise ApiError(404, "image missing") from None


class Handler(BaseHTTPRequestHandler):
    server_version = "compalign-rank/1"
    app: RankingApp  # set on the subclass made by `make_server`
    verbose = False
    loopback_only = True
    token: str | None = None  # required on every request when set (off loopback)
    csp = ""
    timeout = 60  # seconds a silent client may hold a worker

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", self.csp)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _host_ok(self) -> bool:
        if not self.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            name = host[1:].split("]")[0]
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return name in LOOPBACK

    def _origin_ok(self) -> bool:
        """A write from a browser names its page's origin: it must be this server as the request
        addressed it (the Host header, already checked); clients that send no Origin pass."""
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        return bool(host) and origin.strip().lower() == f"http://{host}"

    def _token_ok(self) -> bool:
        """Off loopback: the server's token as ``?token=``, ``Authorization: token T`` or the cookie
        that opening the link sets."""
        if self.token is None:
            return True
        given = []
        given += parse_qs(urlsplit(self.path).query).get("token", [])[:1]
        auth = (self.headers.get("Authorization") or "").split(None, 1)
        if len(auth) == 2 and auth[0].lower() in ("token", "bearer"):
            given.append(auth[1].strip())
        try:
            morsel = SimpleCookie(self.headers.get("Cookie") or "").get(TOKEN_COOKIE)
        except CookieError:
            morsel = None
        if morsel is not None:
            given.append(morsel.value)
        want = self.token.encode()
        return any(hmac.compare_digest(g.encode("utf-8", "replace"), want) for g in given)

    def _guard(self, fn, write: bool = False) -> None:
        try:
            if not self._host_ok():
                raise ApiError(403, "requests must name a loopback host (localhost / 127.0.0.1)")
            if not self._token_ok():
                raise ApiError(
                    403, "this server needs its token: open the link it printed at start (/?token=...)"
                )
            if write and not self._origin_ok():
                raise ApiError(403, "cross-origin writes are refused (the Origin is not this server)")
            fn()
        except ApiError as e:
            self._json(e.status, {"error": str(e)})
        except BrokenPipeError:  # pragma: no cover - the client went away
            pass
        except Exception as e:  # pragma: no cover - a bug; answer instead of hanging the client
            print(f"rank serve: internal error: {e!r}", file=sys.stderr)
            self._json(500, {"error": "internal error"})

    def do_GET(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post, write=True)

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path in ("/", "/index.html"):
            extra = {}
            if self.token is not None:  # the link's token, kept for the page's API and image requests
                extra["Set-Cookie"] = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            self._send(200, PAGE.encode(), "text/html; charset=utf-8", extra)
            return
        if path.startswith("/images/"):
            data, ctype = self.app.image(path[len("/images/") :])
            self._send(200, data, ctype)
            return
        if path == "/api/info":
            self._json(200, self.app.info())
            return
        if path == "/api/task":
            q = parse_qs(url.query)
            annotator = _annotator((q.get("annotator") or [""])[0])
            index, after = (_int_text(k, (q.get(k) or [None])[0]) for k in ("index", "after"))
            self._json(200, self.app.task(annotator, index, after))
            return
        raise ApiError(404, "not found")

    def _read_json(self) -> dict:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "send the payload as application/json")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "Content-Length required")
        if not INT_TEXT.fullmatch(length.strip()) or length.strip().startswith("-"):
            raise ApiError(400, "Content-Length must be a non-negative decimal integer")
        n = int(length)
        if n > MAX_BODY:
            raise ApiError(413, f"payload larger than {MAX_BODY} bytes")
        raw = self.rfile.read(n)
        try:
            payload = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # not UTF-8, not JSON, or an integer of more than 4,300 digits
            raise ApiError(400, f"payload is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "payload is nested too deeply") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "payload must be a JSON object")
        return payload

    def _post(self) -> None:
        path = urlsplit(self.path).path
        routes = {
            "/api/rank": self.app.save_rank,
            "/api/compare": self.app.save_compare,
            "/api/undo": self.app.undo,
        }
        fn = routes.get(path)
        if fn is None:
            raise ApiError(404, "not found")
        self._json(200, fn(self._read_json()))


class RankingServer(ThreadingHTTPServer):
    """Requests run on a fixed pool of worker threads; connections beyond it wait in the listen
    backlog and the pool's queue instead of being reset."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog (the kernel caps it at net.core.somaxconn)
    workers = 32

    def server_activate(self) -> None:
        super().server_activate()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rank-serve")

    def process_request(self, request, client_address) -> None:
        self.pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def make_server(
    gallery: str | Path | Gallery,
    host: str = "127.0.0.1",
    port: int = 8765,
    verbose: bool = False,
    token: str | None = None,
):
    """A ready (not yet serving) server; ``server.server_address`` has the bound port.

    Off loopback every request must carry a token (``server.token``: `token`, or a random one);
    on loopback only when `token` is given. ``server.link`` is the address to open.
    """
    if token is not None and not TOKEN_TEXT.fullmatch(token):
        raise GalleryError(f"--token must be 8 to 200 of the characters A-Z a-z 0-9 . _ ~ -, got {token!r}")
    if token is None and host not in LOOPBACK:
        token = secrets.token_urlsafe(24)
    g = gallery if isinstance(gallery, Gallery) else load_gallery(gallery_dir(gallery))
    app = RankingApp(g)
    handler = type(
        "GalleryHandler",
        (Handler,),
        {"app": app, "verbose": verbose, "loopback_only": host in LOOPBACK, "token": token, "csp": _csp()},
    )
    try:
        server = RankingServer((host, port), handler)
    except OSError as e:
        raise GalleryError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.app = app
    server.token = token
    h, p = server.server_address[:2]
    shown = f"[{h}]" if ":" in h else h
    server.link = f"http://{shown}:{p}/" + (f"?token={quote(token, safe='')}" if token else "")
    return server


def serve_in_thread(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return t


__all__ = ["RankingApp", "make_server", "serve_in_thread"]

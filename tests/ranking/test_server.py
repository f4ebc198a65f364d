"""The ranking web tool's HTTP API: saves, reloads, bad payloads, path traversal, concurrency,
export (Borda + agreement), and the compare mode fed by insertion jobs after an expansion."""

from __future__ import annotations

import http.client
import json
import threading

import pytest

from compalign.gallery.format import load_gallery
from compalign.ranking.server import make_server, serve_in_thread
from compalign.ranking.store import DB_FILE, RankingStore
from tests.factories import read


@pytest.fixture
def server(gallery_dir):
    srv = make_server(gallery_dir, "127.0.0.1", 0)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


class Client:
    def __init__(self, srv):
        self.host, self.port = srv.server_address[:2]

    def request(self, method, path, body=None, headers=None, raw=False):
        con = http.client.HTTPConnection(self.host, self.port, timeout=10)
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        con.request(method, path, body=data, headers=h)
        r = con.getresponse()
        payload = r.read()
        con.close()
        if raw:
            return r.status, payload, r.getheader("Content-Type")
        try:
            return r.status, json.loads(payload)
        except ValueError:
            return r.status, payload

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)


def test_rank_save_reload_and_export(server, gallery_dir, cli):
    c = Client(server)
    status, page, ctype = c.get("/", raw=True)
    assert status == 200 and b"compalign ranking" in page and ctype.startswith("text/html")
    status, t = c.get("/api/task?annotator=ann")
    assert status == 200 and t["kind"] == "rank" and t["index"] == 0 and t["saved"] is None
    assert sorted(im["model"] for im in t["images"]) == ["bad", "bad2", "good"]
    assert t["progress"] == {"done": 0, "total": 4, "comparisons_pending": 0}
    status, img, ctype = c.get(t["images"][0]["url"], raw=True)
    assert status == 200 and ctype == "image/png" and img[:4] == b"\x89PNG"
    body = {"annotator": "ann", "index": 0, "order": ["good", "bad", "bad2"], "ties": [["bad", "bad2"]]}
    assert c.post("/api/rank", body)[0] == 200
    status, t = c.get("/api/task?annotator=ann")
    assert t["index"] == 1 and t["progress"]["done"] == 1  # next unranked
    status, t = c.get("/api/task?annotator=ann&index=0")  # reload: the saved order is back
    assert t["saved"]["tiers"] == [["good"], ["bad", "bad2"]]
    status, t = c.get("/api/task?annotator=other")  # annotators are separate
    assert t["index"] == 0 and t["saved"] is None
    # a second annotator disagrees on record 0, and both rank record 1
    c.post("/api/rank", {"annotator": "other", "index": 0, "order": ["bad", "good", "bad2"], "ties": []})
    c.post("/api/rank", {"annotator": "ann", "index": 1, "order": ["good", "bad", "bad2"], "ties": []})
    c.post("/api/rank", {"annotator": "other", "index": 1, "order": ["good", "bad", "bad2"], "ties": []})
    # re-saving replaces the annotator's earlier ranking
    c.post("/api/rank", {"annotator": "other", "index": 1, "order": ["good", "bad2", "bad"], "ties": []})
    r = cli("rank", "export", gallery_dir)
    assert r.exit_code == 0, r.output
    data = read(gallery_dir / "gallery.json")
    # record 0: Borda ann good 2, bad 0.5, bad2 0.5; other bad 2, good 1, bad2 0 -> good 3, bad 2.5, bad2 .5
    assert data[0]["rank"] == [2, 1, 3]
    # record 1: ann good > bad > bad2, other good > bad2 > bad -> bad and bad2 tie (1.5 each)
    assert data[1]["rank"] == [2, 1, 3]
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert ranks["records"]["1"]["rank_ties"] == [[1, 3]] and ranks["records"]["0"]["rank_ties"] == []
    assert ranks["records"]["1"]["annotators"] == ["ann", "other"] and ranks["method"] == "people"
    assert "rank" not in data[2]
    assert "exported 2 of 4 records from 2 annotator(s)" in r.stdout
    assert "agreement: mean Kendall tau-b" in r.stdout and "on 2 shared records" in r.stdout
    assert ranks["agreement"]["n_pairs"] == 2


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        ({"annotator": "", "index": 0, "order": ["good", "bad", "bad2"]}, 400),
        ({"annotator": "a", "index": "0", "order": ["good", "bad", "bad2"]}, 400),
        ({"annotator": "a", "index": 99, "order": ["good", "bad", "bad2"]}, 404),
        ({"annotator": "a", "index": 0, "order": ["good", "bad"]}, 400),
        ({"annotator": "a", "index": 0, "order": ["good", "bad", "bad"]}, 400),
        ({"annotator": "a", "index": 0, "order": ["good", "bad", "evil"]}, 400),
        ({"annotator": "a", "index": 0, "order": ["good", "bad", "bad2"], "ties": [["good", "bad2"]]}, 400),
        ({"annotator": "a", "index": 0, "order": ["good", "bad", "bad2"], "ties": "none"}, 400),
        ({"annotator": "a", "index": 0, "order": "good,bad,bad2"}, 400),
    ],
)
def test_bad_payloads_store_nothing(server, gallery_dir, body, status):
    c = Client(server)
    got, reply = c.post("/api/rank", body)
    assert got == status and "error" in reply
    assert RankingStore(gallery_dir / DB_FILE).count() == 0


def test_wrong_content_type_and_size(server, gallery_dir):
    c = Client(server)
    body = json.dumps({"annotator": "a", "index": 0, "order": ["good", "bad", "bad2"]})
    assert c.post("/api/rank", body, headers={"Content-Type": "text/plain"})[0] == 415
    assert c.post("/api/rank", "x" * (70 * 1024))[0] == 413
    assert c.get("/api/task?annotator=a", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    assert c.post("/api/nothing", {})[0] == 404
    assert RankingStore(gallery_dir / DB_FILE).count() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/images/../gallery.json",
        "/images/../../../../etc/passwd",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/..%2fgallery.json",
        "/images//etc/passwd",
        "/images/gallery.json",
        "/images/rankings.sqlite",
        "/images/images/good",
        "/../etc/passwd",
        "/etc/passwd",
    ],
)
def test_only_gallery_images_are_served(server, path):
    status, body, _ = Client(server).get(path, raw=True)
    assert status in (403, 404) and b"root:" not in body and b"prompt" not in body


def test_symlink_out_of_the_gallery_is_refused(gallery_dir, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    target = gallery_dir / "images/bad/00000.png"
    target.unlink()
    target.symlink_to(secret)
    from compalign.gallery.format import GalleryError

    with pytest.raises(GalleryError, match="leads outside"):
        make_server(gallery_dir, "127.0.0.1", 0)


def test_concurrent_saves_are_all_kept(server, gallery_dir):
    c = Client(server)
    errors = []

    def work(k):
        try:
            for i in range(4):
                order = ["good", "bad", "bad2"] if (i + k) % 2 else ["bad2", "good", "bad"]
                status, _ = c.post(
                    "/api/rank", {"annotator": f"a{k}", "index": i, "order": order, "ties": []}
                )
                assert status == 200
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = RankingStore(gallery_dir / DB_FILE)
    assert store.count() == 24
    assert {r.annotator for r in store.rankings()} == {f"a{k}" for k in range(6)}


def test_expand_with_people_asks_only_the_new_comparisons(cli, gallery_dir, tiny_models):
    """People-ranked gallery + a new model: insertion questions in compare mode, then export."""
    c0 = RankingStore(gallery_dir / DB_FILE)
    for i in range(4):
        c0.add_ranking("ann", i, ["bad", "good", "bad2"], ["good", "bad", "bad2"], [["bad", "bad2"]])
    assert cli("rank", "export", gallery_dir).exit_code == 0
    r = cli("gallery", "expand", gallery_dir, "--add-model", f"new={tiny_models[0]}", "--steps", "1")
    assert r.exit_code == 0, r.output
    assert "4 records wait for comparisons" in r.stderr
    data = read(gallery_dir / "gallery.json")
    assert data[0]["initial_rank"] == [2, 1, 3] and "rank" not in data[0]
    assert list(data[0])[:6] == ["index", "prompt", "image_bad", "image_good", "image_bad2", "image_new"]
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert ranks["records"]["0"]["initial_rank_ties"] == [[1, 3]]

    srv = make_server(gallery_dir, "127.0.0.1", 0)
    serve_in_thread(srv)
    try:
        c = Client(srv)
        status, t = c.get("/api/task?annotator=ann")
        assert t["kind"] == "compare" and t["index"] == 0 and t["new"]["model"] == "new"
        assert t["progress"]["comparisons_pending"] == 4
        # two tiers (good | bad = bad2): the first question is against the lower tier (binary search)
        assert t["existing"]["model"] == "bad"
        base = {"annotator": "ann", "index": 0, "job": t["job"], "new": "new"}
        # a stale or malformed answer is refused and stores nothing
        assert c.post("/api/compare", {**base, "step": 1, "existing": "bad", "outcome": "new"})[0] == 409
        assert c.post("/api/compare", {**base, "step": 0, "existing": "bad", "outcome": "maybe"})[0] == 400
        assert (
            c.post("/api/compare", {**base, "job": 999, "step": 0, "existing": "bad", "outcome": "new"})[0]
            == 404
        )
        assert c.post("/api/compare", {**base, "step": 0, "existing": "bad", "outcome": "new"})[0] == 200
        status, t = c.get("/api/task?annotator=ann&index=0")
        assert t["kind"] == "compare" and t["existing"]["model"] == "good" and t["step"] == 1
        # take it back and answer again
        assert c.post("/api/undo", {"annotator": "ann", "index": 0, "job": t["job"]})[1]["undone"] is True
        status, t = c.get("/api/task?annotator=ann&index=0")
        assert t["step"] == 0
        c.post("/api/compare", {**base, "step": 0, "existing": "bad", "outcome": "new"})
        status, res = c.post("/api/compare", {**base, "step": 1, "existing": "good", "outcome": "new"})
        assert res["done"] is True  # new beats the first place: it is compared with it, and wins it
        status, t = c.get("/api/task?annotator=ann")
        assert t["kind"] == "compare" and t["index"] == 1
        # record 1: a tie with the lower tier
        base1 = {**base, "index": 1, "job": t["job"]}
        assert c.post("/api/compare", {**base1, "step": 0, "existing": "bad", "outcome": "tie"})[1]["done"]
    finally:
        srv.shutdown()
        srv.server_close()
    r = cli("rank", "export", gallery_dir)
    assert r.exit_code == 0, r.output
    assert "2 record(s) still wait for insertion comparisons" in r.stdout
    g = load_gallery(gallery_dir)
    assert g.tiers(g.record(0)) == [["new"], ["good"], ["bad", "bad2"]]
    assert g.tiers(g.record(1)) == [["good"], ["bad", "bad2", "new"]]
    assert g.record(0).rank == [4, 2, 1, 3] and g.record(0).initial_rank == [2, 1, 3]
    assert g.record(2).rank is None
    assert g.ties(0, "rank_ties") == [[1, 3]] and g.ties(1) == [[1, 3, 4]]


def test_serve_and_export_bad_input(cli, gallery_dir, tmp_path):
    r = cli("rank", "serve", tmp_path / "nothing")
    assert r.exit_code == 2 and "no gallery.json" in r.stderr
    r = cli("rank", "serve", gallery_dir, "--port", "70000")
    assert r.exit_code == 2 and "--port" in r.stderr
    r = cli("rank", "export", gallery_dir)
    assert r.exit_code == 2 and "no rankings yet" in r.stderr
    assert not (gallery_dir / DB_FILE).exists()
    r = cli("gallery", "check", gallery_dir)
    assert r.exit_code == 0 and json.loads(r.stdout)["records"] == 4


# ---------------------------------------------------------------------------- hostile requests


def raw_request(srv, data: bytes) -> bytes:
    """Send raw bytes (headers the http.client would refuse to build) and return the answer."""
    import socket

    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "query",
    [
        "index=--1",
        "index=%C2%B2",
        "index=" + "1" * 4400,
        "index=1e3",
        "index=+1",
        "after=--2",
        "after=%C2%B9",
    ],
)
def test_malformed_query_integers_answer_400(server, query):
    status, reply = Client(server).get(f"/api/task?annotator=a&{query}")
    assert status == 400 and "must be an integer" in reply["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 20000 + b"]" * 20000,
        b'{"annotator": "a", "index": 0, "order": ' + b"[" * 20000 + b"]" * 20000 + b"}",
        b'{"annotator": "a", "index": ' + b"1" * 4400 + b', "order": ["good", "bad", "bad2"]}',
        b"\xff\xfe{}",
    ],
    ids=["nested-20000", "nested-field", "index-4400-digits", "not-utf8"],
)
def test_hostile_bodies_answer_400_and_store_nothing(server, gallery_dir, body):
    status, reply = Client(server).post("/api/rank", body)
    assert status == 400 and "error" in reply
    assert RankingStore(gallery_dir / DB_FILE).count() == 0


@pytest.mark.parametrize("length", ["\u00b2".encode("latin-1"), "\u00b2".encode(), b"-1", b"1e2", b"9" * 30])
def test_malformed_content_length_answers_400(server, gallery_dir, length):
    body = b'{"annotator": "a", "index": 0, "order": ["good", "bad", "bad2"]}'
    head = b"POST /api/rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    answer = raw_request(
        server, head + b"Content-Length: " + length + b"\r\nConnection: close\r\n\r\n" + body
    )
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"400", answer[:200]
    assert RankingStore(gallery_dir / DB_FILE).count() == 0


def test_a_hundred_concurrent_saves_without_a_reset(server, gallery_dir):
    """100 clients connect and save at the same moment (a barrier); every one is answered 200."""
    n = 100
    barrier = threading.Barrier(n, timeout=30)
    results: list = [None] * n

    def work(k):
        try:
            barrier.wait()
            body = {"annotator": f"a{k}", "index": k % 4, "order": ["good", "bad", "bad2"], "ties": []}
            results[k] = Client(server).post("/api/rank", body)[0]
        except Exception as e:  # noqa: BLE001 - a reset or timeout is the failure this test looks for
            results[k] = repr(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [200] * n, [r for r in results if r != 200][:5]
    assert RankingStore(gallery_dir / DB_FILE).count() == n


def test_security_headers_on_every_answer(server):
    c = Client(server)
    for path in ("/", "/api/info", "/api/task?annotator=a", "/nothing"):
        con = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        con.request("GET", path)
        r = con.getresponse()
        r.read()
        con.close()
        csp = r.getheader("Content-Security-Policy")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
        assert "'unsafe-inline'" not in csp and "script-src 'sha256-" in csp
        assert r.getheader("X-Frame-Options") == "DENY" and r.getheader("X-Content-Type-Options") == "nosniff"
    # the page's inline script is exactly the one the policy allows
    import base64
    import hashlib
    import re

    from compalign.ranking.page import PAGE

    script = re.search(r"<script>(.*?)</script>", PAGE, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in r.getheader("Content-Security-Policy")
    assert c.get("/api/info")[0] == 200


@pytest.mark.parametrize(
    "origin,status",
    [
        ("http://evil.example", 403),
        ("null", 403),
        ("http://127.0.0.1:1", 403),
        ("https://127.0.0.1:{port}", 403),
        ("http://127.0.0.1:{port}", 200),
        (None, 200),
    ],
)
def test_writes_check_the_origin(server, gallery_dir, origin, status):
    port = server.server_address[1]
    headers = {"Host": f"127.0.0.1:{port}"}
    if origin is not None:
        headers["Origin"] = origin.format(port=port)
    body = {"annotator": "a", "index": 0, "order": ["good", "bad", "bad2"], "ties": []}
    got, reply = Client(server).post("/api/rank", body, headers=headers)
    assert got == status, reply
    assert RankingStore(gallery_dir / DB_FILE).count() == (1 if status == 200 else 0)
    if status == 403:
        assert "cross-origin" in reply["error"]


def test_off_loopback_requires_the_token(gallery_dir):
    """Bound to every address, the server makes a token and refuses any request without it; the
    link carries it and opening it sets a cookie that the page's later requests carry.
    (The test talks to it over 127.0.0.1 only.)"""
    srv = make_server(gallery_dir, "0.0.0.0", 0)
    serve_in_thread(srv)
    try:
        token = srv.token
        assert token and len(token) >= 24 and srv.link.endswith(f"/?token={token}")
        other = make_server(gallery_dir, "0.0.0.0", 0)
        other.server_close()
        assert other.token != token  # random per server
        c = Client(srv)
        c.host = "127.0.0.1"
        body = {"annotator": "a", "index": 0, "order": ["good", "bad", "bad2"], "ties": []}
        for path in ("/", "/api/info", "/api/task?annotator=a", "/images/images/good/00000.png"):
            assert c.get(path)[0] == 403, path
            assert c.get(path + ("&" if "?" in path else "?") + "token=wrong" + token)[0] == 403
        assert c.post("/api/rank", body)[0] == 403
        assert c.post("/api/rank", body, headers={"Authorization": "token nope"})[0] == 403
        assert RankingStore(gallery_dir / DB_FILE).count() == 0
        # the link: the page, and a cookie for the rest
        con = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
        con.request("GET", f"/?token={token}")
        r = con.getresponse()
        assert r.status == 200 and b"compalign ranking" in r.read()
        cookie = r.getheader("Set-Cookie")
        con.close()
        assert f"={token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";")[0]}
        status, t = c.get("/api/task?annotator=a", headers=jar)
        assert status == 200 and t["kind"] == "rank"
        assert c.get(t["images"][0]["url"], headers=jar, raw=True)[0] == 200
        assert c.post("/api/rank", body, headers=jar)[0] == 200
        assert c.post("/api/rank", body, headers={"Authorization": f"token {token}"})[0] == 200
        assert RankingStore(gallery_dir / DB_FILE).count() == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_token_on_loopback_is_optional_and_checked(gallery_dir, cli):
    srv = make_server(gallery_dir, "127.0.0.1", 0)
    assert srv.token is None and "token" not in srv.link
    srv.server_close()
    srv = make_server(gallery_dir, "127.0.0.1", 0, token="s3cret-token")
    serve_in_thread(srv)
    try:
        c = Client(srv)
        assert c.get("/api/info")[0] == 403
        assert c.get("/api/info?token=s3cret-token")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
    r = cli("rank", "serve", gallery_dir, "--token", "a b;c")
    assert r.exit_code == 2 and "--token" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a server process (~6 s CPU); saves in process: test_concurrent_saves_are_all_kept
def test_no_acknowledged_ranking_is_lost_when_the_server_is_killed(gallery_dir):
    """`rank serve` in its own process, saves from several threads, kill -9 at once: every save
    answered 200 is in the store, and a new server shows it."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "compalign.cli", "rank", "serve", str(gallery_dir), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline, port = time.time() + 60, None
        while port is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        assert port is not None, "the server did not start"
        acked: list[tuple[str, int]] = []
        stop = threading.Event()

        def work(k):
            for i in range(200):
                if stop.is_set():
                    return
                body = {"annotator": f"a{k}", "index": i % 4, "order": ["good", "bad", "bad2"], "ties": []}
                try:
                    con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    con.request("POST", "/api/rank", json.dumps(body), {"Content-Type": "application/json"})
                    status = con.getresponse().status
                    con.close()
                except OSError:
                    return  # killed mid-request: not acknowledged
                if status == 200:
                    acked.append((f"a{k}", i))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 20 and time.time() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert len(acked) >= 20
    stored = RankingStore(gallery_dir / DB_FILE).rankings()
    assert len(stored) >= len(acked)
    per_annotator = {f"a{k}": sum(r.annotator == f"a{k}" for r in stored) for k in range(4)}
    for name, i in acked:
        assert per_annotator[name] > i  # saves of one annotator are sequential: the i-th is stored
    srv = make_server(gallery_dir, "127.0.0.1", 0)  # the database opens cleanly after the kill
    serve_in_thread(srv)
    try:
        status, t = Client(srv).get(f"/api/task?annotator={acked[0][0]}&index=0")
        assert status == 200 and t["saved"]["tiers"] == [["good"], ["bad"], ["bad2"]]
    finally:
        srv.shutdown()
        srv.server_close()

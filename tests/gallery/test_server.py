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

from .conftest import read


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

"""End to end in a real headless browser (Playwright driving Chromium): name, rank, reload, back,
drag, compare mode, export.

Needs the ``playwright`` package and a Chromium: the system's (Debian: ``apt-get install
chromium``; CI installs it in ``.ci/run``), ``COMPALIGN_CHROMIUM=/path/to/chrome``, or
Playwright's own (``playwright install chromium``). Skipped with the reason when none is there.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from compalign.ranking.server import make_server, serve_in_thread
from compalign.ranking.store import DB_FILE, RankingStore
from tests.factories import read


def find_chromium() -> str | None:
    env = os.environ.get("COMPALIGN_CHROMIUM")
    if env:
        return env if os.path.exists(env) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    cache = os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or os.path.expanduser("~/.cache/ms-playwright")
    found = sorted(glob.glob(os.path.join(cache, "chromium-*", "chrome-linux*", "chrome")))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = find_chromium()
    if path is None:
        pytest.skip(
            "no Chromium found for the browser test: apt-get install chromium (Debian), set "
            "COMPALIGN_CHROMIUM, or run `playwright install chromium`"
        )
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        except Exception as e:  # noqa: BLE001 - an unusable browser is a skip, not a failure
            pytest.skip(f"Chromium at {path} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def shows(page, prompt: str) -> None:
    """Wait until the rank view shows `prompt` (a locator wait: the page's Content-Security-Policy
    forbids the string evaluation that `wait_for_function` polls with)."""
    from playwright.sync_api import expect

    expect(page.locator("#prompt")).to_have_text(prompt)


@pytest.mark.timeout(120)
def test_rank_in_a_real_browser(browser, gallery_dir, cli):
    # record 2 has a pending insertion (bad2 into good > bad): the browser must ask compare questions
    store = RankingStore(gallery_dir / DB_FILE)
    store.add_jobs([(2, [["good"], ["bad"]], ["bad2"])])
    prompts = [d["prompt"] for d in read(gallery_dir / "gallery.json")]
    srv = make_server(gallery_dir, "127.0.0.1", 0)
    serve_in_thread(srv)
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(15000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
    try:
        page.goto(url)
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#name", "alice")
        page.click("#start")
        shows(page, prompts[0])
        assert page.inner_text("#who") == "alice"
        assert "0 / 4 ranked" in page.inner_text("#progress")
        # record 0: good > bad = bad2 by clicks and the tie key, saved with Enter
        page.click("#images figure[data-model=good]")
        page.click("#images figure[data-model=bad]")
        page.click("#images figure[data-model=bad2]")
        page.keyboard.press("t")
        assert page.inner_text("#images figure[data-model=bad2] .badge") == "2"
        page.keyboard.press("Enter")
        shows(page, prompts[1])
        assert "1 / 4 ranked" in page.inner_text("#progress")

        # reload: the name is remembered, the page reopens where it was, the saved ranking is kept
        page.reload()
        shows(page, prompts[1])
        assert page.is_hidden("#login") and page.inner_text("#who") == "alice"
        assert "1 / 4 ranked" in page.inner_text("#progress")
        page.keyboard.press("b")
        shows(page, prompts[0])
        chips = page.eval_on_selector_all("#order li[data-model]", "els => els.map(e => e.dataset.model)")
        seps = page.eval_on_selector_all("#order .sep", "els => els.map(e => e.textContent)")
        assert chips == ["good", "bad", "bad2"] and seps == [">", "="]
        assert "saved earlier" in page.inner_text("#status")

        # record 1 (skip from 0 goes to the next unfinished one): pick by number keys, then drag
        page.keyboard.press("s")
        shows(page, prompts[1])
        models = page.eval_on_selector_all("#images figure", "els => els.map(e => e.dataset.model)")
        for m in ("good", "bad", "bad2"):
            page.keyboard.press(str(models.index(m) + 1))
        page.drag_and_drop("#order li[data-model=bad2]", "#order li[data-model=good]")
        chips = page.eval_on_selector_all("#order li[data-model]", "els => els.map(e => e.dataset.model)")
        assert chips == ["bad2", "good", "bad"]
        page.keyboard.press("Enter")

        # record 2: compare mode, only the new comparisons (bad2 vs bad, then bad2 vs good)
        page.wait_for_selector("#compareview:not([hidden])")
        assert page.inner_text("#cprompt") == prompts[2]

        def choose(winner: str):
            left = page.get_attribute("#left", "data-model")
            page.keyboard.press("1" if left == winner else "2")

        pair = {page.get_attribute("#left", "data-model"), page.get_attribute("#right", "data-model")}
        assert pair == {"bad2", "bad"}
        choose("bad2")
        page.wait_for_selector("#left[data-model=good], #right[data-model=good]")
        choose("good")
        shows(page, prompts[3])
        assert page.is_hidden("#compareview")
        assert "3 / 4 ranked" in page.inner_text("#progress")
        assert not errors, errors
    finally:
        ctx.close()
        srv.shutdown()
        srv.server_close()

    r = cli("rank", "export", gallery_dir)
    assert r.exit_code == 0, r.output
    data = read(gallery_dir / "gallery.json")  # models: bad, good, bad2
    assert data[0]["rank"] == [2, 1, 3] and data[1]["rank"] == [3, 2, 1] and data[2]["rank"] == [2, 3, 1]
    ranks = read(gallery_dir / "gallery_ranks.json")
    assert ranks["records"]["0"]["rank_ties"] == [[1, 3]] and ranks["records"]["2"]["rank_ties"] == []
    assert "rank" not in data[3]


@pytest.mark.timeout(120)
def test_markup_in_prompts_and_names_is_shown_as_text(browser, tmp_path):
    """A prompt and an annotator name made of HTML are displayed literally and never run."""
    import numpy as np

    from compalign.gallery.format import Gallery, Record, image_path, new_meta
    from compalign.io import atomic_save_image

    evil = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    root = tmp_path / "g"
    records = []
    for i, prompt in enumerate([evil + " a red cube", "a blue ball"]):
        for m in ("a", "b"):
            atomic_save_image(root / image_path(m, i), np.full((8, 8, 3), 40 * i, np.uint8))
        records.append(Record(i, prompt, {m: image_path(m, i) for m in ("a", "b")}))
    meta = new_meta(None, [{"name": "a", "spec": None}, {"name": "b", "spec": None}], seed=0, complete=True)
    g = Gallery(root, records, meta, {"version": 1, "records": {}})
    g.save()
    srv = make_server(g.root, "127.0.0.1", 0)
    serve_in_thread(srv)
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(15000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
        page.wait_for_selector("#login:not([hidden])")
        title = page.title()
        page.fill("#name", evil)
        page.click("#start")
        shows(page, evil + " a red cube")
        assert page.inner_text("#who") == evil
        assert page.locator("#prompt img, #prompt script, #who img, #who script").count() == 0
        page.keyboard.press("s")
        shows(page, "a blue ball")
        assert page.title() == title != "pwned" and not errors, errors
    finally:
        ctx.close()
        srv.shutdown()
        srv.server_close()

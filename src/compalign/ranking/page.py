# ruff: noqa: E501  (the page is one long string of HTML/JS)
"""The single HTML/JS page of ``compalign rank serve`` (no external resources)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>compalign: rank the gallery</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }
  header { display: flex; gap: 1.2em; align-items: baseline; padding: .6em 1em; background: #2d3142; color: #fff; }
  header a { color: #bfd7ff; }
  main, section { padding: 1em; }
  #prompt, #cprompt { font-size: 1.35em; margin: .2em 0 .8em; }
  .images { display: flex; flex-wrap: wrap; gap: 1em; }
  figure { margin: 0; padding: .4em; background: #fff; border: 3px solid #ccc; border-radius: 6px;
           cursor: pointer; position: relative; text-align: center; user-select: none; }
  figure img { width: 192px; height: 192px; image-rendering: pixelated; display: block; }
  figure.placed { border-color: #3a7d44; opacity: .55; }
  figcaption { font-weight: bold; }
  .badge { position: absolute; top: .3em; left: .3em; background: #3a7d44; color: #fff; border-radius: 1em;
           padding: 0 .5em; font-weight: bold; }
  #order { display: flex; flex-wrap: wrap; gap: .3em; align-items: center; min-height: 3.2em; list-style: none;
           padding: .4em; margin: 1em 0; background: #fff; border: 2px dashed #aaa; border-radius: 6px; }
  #order li { display: flex; align-items: center; gap: .3em; padding: .2em .4em; background: #e8eefc;
              border-radius: 4px; cursor: grab; }
  #order li img { width: 40px; height: 40px; image-rendering: pixelated; }
  #order .sep { font-weight: bold; padding: 0 .2em; cursor: pointer; }
  #order .end { flex: 1; min-width: 3em; color: #888; cursor: default; background: none; }
  .buttons button { margin-right: .4em; font-size: 1em; }
  #status { min-height: 1.4em; margin: .5em 0; }
  #status.error { color: #b00020; } #status.ok { color: #3a7d44; }
  .help { color: #555; font-size: .9em; }
  .pair { display: flex; gap: 2em; }
  .pair figure img { width: 256px; height: 256px; }
</style>
</head>
<body>
<header>
  <strong>compalign ranking</strong>
  <span id="gallery"></span>
  <span id="progress"></span>
  <span>annotator: <b id="who">-</b> <a href="#" id="change">change</a></span>
</header>

<section id="login" hidden>
  <form id="loginform">
    <label>Your name (kept in this browser): <input id="name" autocomplete="off" maxlength="100" required></label>
    <button type="submit" id="start">Start</button>
  </form>
</section>

<main id="rankview" hidden>
  <p id="prompt"></p>
  <div id="images" class="images"></div>
  <ol id="order" aria-label="your order, best first"></ol>
  <div class="buttons">
    <button id="save">Save (Enter)</button>
    <button id="tie">Tie with previous (t)</button>
    <button id="undo">Undo pick (u)</button>
    <button id="reset">Reset (Esc)</button>
    <button id="skip">Skip (s)</button>
    <button id="back">Back (b)</button>
  </div>
  <div id="status"></div>
  <p class="help">Click the images from best to worst (or press their number 1-9); click a picked image to
  take it back. <b>t</b> ties the last pick with the one before (press again to untie; or click the
  "=" / "&gt;" between two picks). Drag picks in the bar to reorder. <b>Enter</b> saves (the last image is
  placed for you), <b>s</b> skips, <b>b</b> goes to the previous record.</p>
</main>

<main id="compareview" hidden>
  <p id="cprompt"></p>
  <p>Which image fits the prompt better?</p>
  <div class="pair">
    <figure id="left"><img alt="left image"><figcaption>1: left better</figcaption></figure>
    <figure id="right"><img alt="right image"><figcaption>2: right better</figcaption></figure>
  </div>
  <div class="buttons">
    <button id="cleft">Left better (1)</button>
    <button id="cright">Right better (2)</button>
    <button id="ctie">Equally good (t)</button>
    <button id="cskip">Skip (s)</button>
    <button id="cback">Back (b)</button>
  </div>
  <div id="cstatus"></div>
  <p class="help">New models are being slotted into the existing ranking: each answer halves the places left.
  <b>b</b> takes back your last answer of this record.</p>
</main>

<section id="done" hidden><h2>All done</h2><p>Every record is ranked. Thank you!</p>
  <p><a href="#" id="again">Review records</a></p></section>

<script>
"use strict";
const $ = (s) => document.querySelector(s);
const KEY = "compalign.annotator";
let annotator = localStorage.getItem(KEY) || "";
let task = null;
let tiers = [];
let busy = false;

function show(id) {
  for (const v of ["login", "rankview", "compareview", "done"]) $("#" + v).hidden = v !== id;
}
function status(msg, kind, el) {
  const s = el || (task && task.kind === "compare" ? $("#cstatus") : $("#status"));
  s.textContent = msg; s.className = kind || "";
}
async function api(path, body) {
  const opt = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const r = await fetch(path, opt);
  let data = {};
  try { data = await r.json(); } catch (e) { data = {error: r.statusText}; }
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
async function load(params) {
  if (busy) return;
  busy = true;
  try {
    const q = new URLSearchParams({annotator});
    for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) q.set(k, v);
    render(await api("/api/task?" + q));
  } catch (e) { status(String(e.message || e), "error"); }
  finally { busy = false; }
}
function progress(p) {
  let t = `${p.done} / ${p.total} ranked`;
  const n = p.comparisons_pending;
  if (n) t += `, ${n} record${n === 1 ? "" : "s"} with comparisons waiting`;
  $("#progress").textContent = t;
}
function render(t) {
  task = t;
  progress(t.progress);
  if (t.kind === "done") { show("done"); history.replaceState(null, "", "#done"); return; }
  history.replaceState(null, "", "#index=" + t.index);
  if (t.kind === "rank") {
    tiers = t.saved ? t.saved.tiers.map((x) => x.slice()) : [];
    $("#prompt").textContent = t.prompt;
    const box = $("#images");
    box.innerHTML = "";
    t.images.forEach((im, k) => {
      const f = document.createElement("figure");
      f.dataset.model = im.model;
      f.innerHTML = `<img alt="image ${k + 1}"><figcaption>${k + 1}</figcaption><span class="badge" hidden></span>`;
      f.querySelector("img").src = im.url;
      f.addEventListener("click", () => pick(im.model));
      box.appendChild(f);
    });
    show("rankview");
    drawOrder();
    status(t.saved ? "saved earlier; change the order and press Enter to save again" : "", t.saved ? "ok" : "");
  } else {
    $("#cprompt").textContent = t.prompt;
    const [l, r] = t.left === "new" ? [t.new, t.existing] : [t.existing, t.new];
    $("#left img").src = l.url; $("#left").dataset.model = l.model;
    $("#right img").src = r.url; $("#right").dataset.model = r.model;
    show("compareview");
    status("", "", $("#cstatus"));
  }
}
function placed(m) { return tiers.some((t) => t.includes(m)); }
function pick(m) {
  if (placed(m)) tiers = tiers.map((t) => t.filter((x) => x !== m)).filter((t) => t.length);
  else tiers.push([m]);
  drawOrder();
}
function tie() {
  if (!tiers.length) return;
  const last = tiers[tiers.length - 1];
  if (last.length > 1) tiers.push([last.pop()]);
  else if (tiers.length > 1) tiers[tiers.length - 2].push(tiers.pop()[0]);
  drawOrder();
}
function toggleBetween(k) {  // merge tier k+1 into k, or split the boundary inside a tier
  tiers[k] = tiers[k].concat(tiers[k + 1]); tiers.splice(k + 1, 1); drawOrder();
}
function drawOrder() {
  const urls = Object.fromEntries(task.images.map((im, k) => [im.model, [im.url, k + 1]]));
  const ol = $("#order");
  ol.innerHTML = "";
  let place = 1;
  tiers.forEach((t, k) => {
    t.forEach((m, j) => {
      if (k > 0 || j > 0) {
        const s = document.createElement("span");
        s.className = "sep";
        s.textContent = j > 0 ? "=" : ">";
        s.title = j > 0 ? "tied (click to untie)" : "better than (click to tie)";
        s.addEventListener("click", () => {
          if (j > 0) { tiers.splice(k + 1, 0, t.splice(j)); drawOrder(); } else toggleBetween(k - 1);
        });
        ol.appendChild(s);
      }
      const li = document.createElement("li");
      li.draggable = true;
      li.dataset.model = m;
      li.innerHTML = `<b>${place}.</b><img alt=""><span>#${urls[m][1]}</span>`;
      li.querySelector("img").src = urls[m][0];
      li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", m));
      li.addEventListener("dragover", (e) => e.preventDefault());
      li.addEventListener("drop", (e) => { e.preventDefault(); moveBefore(e.dataTransfer.getData("text/plain"), m); });
      ol.appendChild(li);
    });
    place += t.length;
  });
  const end = document.createElement("li");
  end.className = "end";
  end.textContent = tiers.length ? "" : "click the images, best first";
  end.addEventListener("dragover", (e) => e.preventDefault());
  end.addEventListener("drop", (e) => { e.preventDefault(); moveBefore(e.dataTransfer.getData("text/plain"), null); });
  ol.appendChild(end);
  const pos = {};
  let p = 1;
  tiers.forEach((t) => { t.forEach((m) => { pos[m] = p; }); p += t.length; });
  document.querySelectorAll("#images figure").forEach((f) => {
    const b = f.querySelector(".badge");
    const m = f.dataset.model;
    f.classList.toggle("placed", m in pos);
    b.hidden = !(m in pos);
    b.textContent = m in pos ? pos[m] : "";
  });
}
function moveBefore(m, target) {
  if (!m || m === target || !placed(m)) return;
  tiers = tiers.map((t) => t.filter((x) => x !== m)).filter((t) => t.length);
  const k = target === null ? tiers.length : tiers.findIndex((t) => t.includes(target));
  tiers.splice(k < 0 ? tiers.length : k, 0, [m]);
  drawOrder();
}
async function save() {
  if (busy || !task || task.kind !== "rank") return;
  const missing = task.images.map((im) => im.model).filter((m) => !placed(m));
  if (missing.length === 1) tiers.push([missing[0]]);
  else if (missing.length > 1) { status(`place every image first (${missing.length} left)`, "error"); return; }
  drawOrder();
  const index = task.index;
  try {
    busy = true;
    await api("/api/rank", {annotator, index, order: tiers.flat(), ties: tiers.filter((t) => t.length > 1)});
    status("saved", "ok");
  } catch (e) { status("not saved: " + (e.message || e), "error"); return; }
  finally { busy = false; }
  await load({after: index});
}
async function answer(outcome) {
  if (busy || !task || task.kind !== "compare") return;
  const index = task.index;
  let res;
  try {
    busy = true;
    res = await api("/api/compare", {annotator, index, job: task.job, step: task.step,
      new: task.new.model, existing: task.existing.model, outcome});
  } catch (e) { status("not saved: " + (e.message || e), "error", $("#cstatus")); return; }
  finally { busy = false; }
  // stay on the record until its comparisons are done, then go on
  await load(res.done ? {after: index} : {index});
}
function side(which) {  // "left" / "right" -> outcome
  const isNew = (which === "left") === (task.left === "new");
  return isNew ? "new" : "existing";
}
async function back() {
  if (!task) return;
  if (task.kind === "compare" && task.step > 0) {
    try { await api("/api/undo", {annotator, index: task.index, job: task.job}); } catch (e) { status(e.message, "error"); }
    await load({index: task.index});
  } else if (task.prev_index !== null && task.prev_index !== undefined) await load({index: task.prev_index});
}
function skip() { if (task && task.index !== undefined) load({after: task.index}); }

document.addEventListener("keydown", (e) => {
  if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA")) return;
  if (!task || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (task.kind === "rank" && !$("#rankview").hidden) {
    if (/^[1-9]$/.test(k)) { const im = task.images[Number(k) - 1]; if (im) pick(im.model); }
    else if (k === "t") tie();
    else if (k === "u") { if (tiers.length) { const t = tiers[tiers.length - 1]; t.pop(); if (!t.length) tiers.pop(); drawOrder(); } }
    else if (k === "Escape") { tiers = []; drawOrder(); }
    else if (k === "Enter") { e.preventDefault(); save(); }
    else if (k === "s") skip();
    else if (k === "b") back();
    else return;
    e.preventDefault();
  } else if (task.kind === "compare" && !$("#compareview").hidden) {
    if (k === "1") answer(side("left"));
    else if (k === "2") answer(side("right"));
    else if (k === "t") answer("tie");
    else if (k === "s") skip();
    else if (k === "b") back();
    else return;
    e.preventDefault();
  }
});
$("#save").addEventListener("click", save);
$("#tie").addEventListener("click", tie);
$("#undo").addEventListener("click", () => document.dispatchEvent(new KeyboardEvent("keydown", {key: "u"})));
$("#reset").addEventListener("click", () => { tiers = []; drawOrder(); });
$("#skip").addEventListener("click", skip);
$("#back").addEventListener("click", back);
$("#left").addEventListener("click", () => answer(side("left")));
$("#right").addEventListener("click", () => answer(side("right")));
$("#cleft").addEventListener("click", () => answer(side("left")));
$("#cright").addEventListener("click", () => answer(side("right")));
$("#ctie").addEventListener("click", () => answer("tie"));
$("#cskip").addEventListener("click", skip);
$("#cback").addEventListener("click", back);
$("#again").addEventListener("click", (e) => {
  e.preventDefault();
  if (task && task.first_index !== undefined) load({index: task.first_index});
});
$("#change").addEventListener("click", (e) => { e.preventDefault(); $("#name").value = annotator; show("login"); $("#name").focus(); });
$("#loginform").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("#name").value.trim();
  if (!name) return;
  annotator = name;
  localStorage.setItem(KEY, name);
  start();
});
function start() {
  if (!annotator) { show("login"); $("#name").focus(); return; }
  $("#who").textContent = annotator;
  api("/api/info").then((i) => { $("#gallery").textContent = `${i.gallery} (${i.aspect || "no aspect"}, ${i.records} records)`; })
    .catch(() => {});
  const m = location.hash.match(/index=(\d+)/);
  load(m ? {index: m[1]} : {});
}
start();
</script>
</body>
</html>
"""

/* underhood explorer: the page. Plain JavaScript, no build step, nothing loaded from outside this server.
   State lives in the URL (history.replaceState) so a view can be shared and reopened. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const TABS = ["layer", "attribution", "projector", "ablation", "attack", "why"];
const KEYS = ["model", "compare", "layer", "unit", "image", "method", "tab", "scale"];

const S = {model: "", compare: "", layer: "", unit: 0, image: "", method: "", tab: "layer", scale: "own"};
const M = {};            // model id -> /api/model
const seq = {};          // panel -> request counter (drops stale answers)
const live = {ws: null, stream: null, busy: false, times: [], on: false, last: null};
const view = {cols: 8, units: 0, page: 0, pageSize: 48, total: 0, rule: "guided", by: "class",
  attack: "fgsm", ablate: [], methods: null, proj: null, polls: {}};

function el(tag, attrs = {}, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) node.append(kid);
  return node;
}

function toast(message, kind = "error") {
  const box = $("#toasts");
  const item = el("div", {class: `toast ${kind}`, role: "status"}, String(message));
  box.append(item);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(() => item.classList.add("gone"), kind === "error" ? 5200 : 3200);
  setTimeout(() => item.remove(), kind === "error" ? 5600 : 3600);
}

function q(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") p.set(k, v);
  return p.toString();
}

/* One call to the API: JSON back, or null after a toast with its {error} line (never a console error). */
async function api(path, {method = "GET", json, form, quiet = false} = {}) {
  const init = {method, headers: {}};
  if (json !== undefined) { init.body = JSON.stringify(json); init.headers["Content-Type"] = "application/json"; }
  if (form !== undefined) init.body = form;
  let res;
  try { res = await fetch(path, init); } catch (err) {
    if (!quiet) toast(`network: ${err.message || err}`);
    return null;
  }
  let data = null;
  try { data = await res.json(); } catch (err) { data = null; }
  if (!res.ok || !data || data.error) {
    const msg = (data && data.error) || `${path.split("?")[0]}: HTTP ${res.status}`;
    if (!quiet) toast(msg);
    return quiet ? {error: msg} : null;
  }
  return data;
}

function ticket(name) { seq[name] = (seq[name] || 0) + 1; return seq[name]; }
function stale(name, t) { return seq[name] !== t; }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* ---------- state <-> URL ---------- */
function readURL() {
  const p = new URLSearchParams(location.search);
  for (const k of KEYS) if (p.has(k)) S[k] = p.get(k);
  S.unit = parseInt(S.unit, 10) || 0;
  if (!TABS.includes(S.tab)) S.tab = "layer";
  if (!["own", "shared"].includes(S.scale)) S.scale = "own";
}
function saveURL() {
  const p = {};
  for (const k of KEYS) p[k] = S[k];
  history.replaceState(null, "", `${location.pathname}?${q(p)}`);
}

/* ---------- models ---------- */
async function modelInfo(id) {
  if (!M[id]) {
    const info = await api(`/api/model?${q({model: id})}`);
    if (!info) return null;
    M[id] = info;
  }
  return M[id];
}
const info = () => M[S.model];
const layerRow = (name = S.layer, id = S.model) => (M[id] ? M[id].layers.find((r) => r.name === name) : null);
const inputSize = () => (info() ? info().input_size : [3, 64, 64]);

function fillLayers() {
  const m = info();
  const sel = $("#layer");
  sel.innerHTML = "";
  const stages = el("optgroup", {label: "Stages"});
  for (const name of m.stages) stages.append(el("option", {value: name, text: name}));
  const all = el("optgroup", {label: "All layers"});
  for (const r of m.layers) {
    const shape = r.shape.join("×");
    all.append(el("option", {value: r.name, text: `${r.name}  ·  ${r.type} ${shape}`}));
  }
  if (m.stages.length) sel.append(stages);
  sel.append(all);
  if (!layerRow()) S.layer = m.default_layer;
  sel.value = S.layer;
  // the option shows once in each group: select the stage entry when there is one
  const opt = $$("option", sel).find((o) => o.value === S.layer);
  if (opt) opt.selected = true;
  const cls = $("#target");
  cls.innerHTML = "";
  cls.append(el("option", {value: "", text: "predicted class"}));
  m.classes.forEach((c, i) => cls.append(el("option", {value: String(i), text: `${i} · ${c}`})));
}

function layerList() {
  // order of [ and ]: all layers in model order
  return info().layers.map((r) => r.name);
}

function showLayerInfo() {
  const r = layerRow();
  if (!r) return;
  const rf = r.rf ? ` · receptive field ${r.rf.map((v) => Math.round(v)).join("×")} px` : "";
  $("#layer-info").textContent = `${r.type} · ${r.units} units · ${r.shape.join("×")}${rf}`;
  $$(".layer-name").forEach((n) => { n.textContent = S.layer; });
  markProbe();
}

/* ---------- the current input ---------- */
function imageURL(ref, scale = 2) { return `/api/image.png?${q({image: ref, model: S.model, scale})}`; }

async function setImage(ref, {refresh = true} = {}) {
  S.image = ref;
  saveURL();
  $("#current-img").src = imageURL(ref, 4);
  $("#current-name").textContent = ref.startsWith("data:") ? `dataset #${ref.slice(5)}` : ref;
  $$(".thumbs .thumb").forEach((t) => t.classList.toggle("on", t.dataset.ref === ref));
  predictions();
  if (refresh) refreshTab();
}

function bars(top, {compareTo = null} = {}) {
  return el("div", {class: "bars"}, top.map((t) => el("div", {class: "bar-row"},
    el("span", {class: "bar-label", text: t.class}),
    el("span", {class: "bar"}, el("span", {style: `width:${(100 * t.prob).toFixed(1)}%`})),
    el("span", {class: "bar-value", text: `${(100 * t.prob).toFixed(1)}%`}))));
}

async function predictions() {
  const t = ticket("predict");
  const ids = [S.model].concat(S.compare ? [S.compare] : []);
  const answers = await Promise.all(ids.map((id) => api(`/api/predict?${q({model: id, image: S.image, k: 5})}`)));
  if (stale("predict", t)) return;
  const box = $("#predictions");
  box.innerHTML = "";
  const first = answers[0];
  $("#current-label").innerHTML = "";
  if (first && first.label) {
    const ok = first.top[0].index === first.label.index;
    $("#current-label").append(el("span", {text: `true: ${first.label.class} `}),
      el("span", {class: `badge ${ok ? "ok" : "bad"}`, text: ok ? "right" : "wrong"}));
  }
  answers.forEach((a, i) => {
    if (!a) return;
    if (ids.length > 1) box.append(el("div", {class: "small muted model-tag", text: ids[i]}));
    box.append(bars(a.top));
  });
}

/* ---------- dataset browser ---------- */
function showAccuracy(d) {
  /* the accuracy comes from a background pass over the whole dataset: ask again until it is there */
  const known = d.accuracy !== null && d.accuracy !== undefined;
  $("#data-info").textContent = `${d.total} images · model accuracy ${known ? (100 * d.accuracy).toFixed(1) + "%" : "…"}`;
  if (!known) {
    const model = S.model;
    setTimeout(async () => {
      if (model !== S.model) return;
      const again = await api(`/api/data?${q({model, cls: $("#cls").value, limit: 1})}`);
      if (again && model === S.model) showAccuracy({...again, total: d.total});
    }, 1500);
  }
}

async function loadData() {
  const t = ticket("data");
  const params = {model: S.model, cls: $("#cls").value, correct: $("#correct").value,
    offset: view.page * view.pageSize, limit: view.pageSize};
  const d = await api(`/api/data?${q(params)}`);
  if (!d || stale("data", t)) return null;
  view.total = d.total;
  if ($("#cls").options.length <= 1) {
    d.classes.forEach((c, i) => $("#cls").append(el("option", {value: String(i), text: c})));
  }
  showAccuracy(d);
  const pages = Math.max(1, Math.ceil(d.total / view.pageSize));
  $("#page-info").textContent = `${view.page + 1} / ${pages}`;
  $("#prev-page").disabled = view.page <= 0;
  $("#next-page").disabled = view.page >= pages - 1;
  const box = $("#thumbs");
  box.innerHTML = "";
  for (const it of d.items) {
    const ref = `data:${it.index}`;
    const title = `#${it.index} · ${d.classes[it.label]} → ${d.pred_classes[it.pred]} (${(100 * it.conf).toFixed(0)}%)`;
    box.append(el("button", {class: `thumb${it.correct ? "" : " wrong"}${ref === S.image ? " on" : ""}`,
      title, "data-ref": ref, onclick: () => setImage(ref)},
    el("img", {src: `/api/thumb/${it.index}.png?scale=1`, alt: title, loading: "lazy"})));
  }
  if (!d.items.length) box.append(el("div", {class: "placeholder", text: "No image matches this filter."}));
  return d;
}

function stepImage(delta) {
  const refs = $$("#thumbs .thumb").map((t) => t.dataset.ref);
  if (!refs.length) return;
  const i = refs.indexOf(S.image);
  const next = refs[Math.max(0, Math.min(refs.length - 1, i < 0 ? 0 : i + delta))];
  if (next && next !== S.image) setImage(next);
}

/* ---------- uploads, drawing ---------- */
async function upload(blob, name = "image.png") {
  const form = new FormData();
  form.append("file", blob, name);
  const r = await api("/api/images", {method: "POST", form});
  if (r) await setImage(r.id);
  return r;
}

function setupDrawing() {
  const c = $("#canvas");
  const g = c.getContext("2d");
  const paper = () => { g.fillStyle = $("#paper-colour").value; g.fillRect(0, 0, c.width, c.height); };
  paper();
  let down = false;
  let last = null;
  const at = (e) => {
    const r = c.getBoundingClientRect();
    return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height];
  };
  c.addEventListener("pointerdown", (e) => {
    down = true; last = at(e); c.setPointerCapture(e.pointerId);
    g.fillStyle = $("#brush-colour").value;
    g.beginPath(); g.arc(last[0], last[1], $("#brush-size").value / 2, 0, 2 * Math.PI); g.fill();
  });
  c.addEventListener("pointermove", (e) => {
    if (!down) return;
    const p = at(e);
    g.strokeStyle = $("#brush-colour").value; g.lineWidth = $("#brush-size").value; g.lineCap = "round";
    g.beginPath(); g.moveTo(last[0], last[1]); g.lineTo(p[0], p[1]); g.stroke();
    last = p;
  });
  const end = () => {
    if (!down) return;
    down = false;
    c.toBlob((blob) => blob && upload(blob, "drawing.png"), "image/png");
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("#clear").addEventListener("click", paper);
}

function setupUpload() {
  $("#file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    if (f) upload(f, f.name);
    e.target.value = "";
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) upload(f, f.name);
  });
}

/* ---------- the layer grid ---------- */
function gridBox(title, kind) {
  return el("div", {class: `grid-box ${kind}`},
    el("div", {class: "grid-title"}, el("b", {text: title}), el("span", {class: "small muted grid-note"})),
    el("div", {class: "grid"}, el("img", {class: "sprite pix", alt: ""}), el("div", {class: "sel"})));
}

function drawGrid(box, d, {selectable = true} = {}) {
  const grid = $(".grid", box);
  const img = $(".sprite", grid);
  const pitch = d.tile + d.gap;
  const width = d.cols * pitch - d.gap;
  const avail = Math.max(160, (box.clientWidth || grid.clientWidth || 480) - 4);
  const scale = Math.max(0.25, Math.min(avail / width, 96 / d.tile, 4));
  grid.style.width = `${Math.round(width * scale)}px`;
  grid.dataset.scale = scale;
  grid.dataset.cols = d.cols;
  grid.dataset.pitch = pitch;
  grid.dataset.units = d.units;
  img.style.width = `${width * scale}px`;
  img.src = d.sprite;
  if (selectable && !grid.dataset.wired) {
    grid.dataset.wired = "1";
    grid.addEventListener("click", (e) => {
      const u = unitAt(grid, e);
      if (u !== null) selectUnit(u);
    });
    grid.addEventListener("mousemove", (e) => {
      const u = unitAt(grid, e);
      const data = grid._data;
      grid.title = u === null || !data ? "" : `unit ${u} · max ${fmt(data.max[u])} · mean ${fmt(data.mean[u])}`;
    });
  }
  grid._data = d;
  const note = $(".grid-note", box);
  if (note) note.textContent = `${d.units} units${d.ms !== undefined ? ` · ${d.ms} ms` : ""}`;
  placeSel(grid);
}

function unitAt(grid, e) {
  const r = grid.getBoundingClientRect();
  const s = parseFloat(grid.dataset.scale);
  const pitch = parseFloat(grid.dataset.pitch);
  const col = Math.floor((e.clientX - r.left) / s / pitch);
  const row = Math.floor((e.clientY - r.top) / s / pitch);
  const u = row * parseInt(grid.dataset.cols, 10) + col;
  return col >= 0 && u >= 0 && u < parseInt(grid.dataset.units, 10) && col < parseInt(grid.dataset.cols, 10) ? u : null;
}

function placeSel(grid) {
  const sel = $(".sel", grid);
  if (!grid.dataset.cols || S.unit >= parseInt(grid.dataset.units, 10)) { sel.hidden = true; return; }
  const s = parseFloat(grid.dataset.scale);
  const pitch = parseFloat(grid.dataset.pitch);
  const cols = parseInt(grid.dataset.cols, 10);
  const tile = (pitch - 1) * s;
  sel.hidden = false;
  sel.style.left = `${(S.unit % cols) * pitch * s - 2}px`;
  sel.style.top = `${Math.floor(S.unit / cols) * pitch * s - 2}px`;
  sel.style.width = sel.style.height = `${tile + 4}px`;
}

const fmt = (v) => (v === undefined || v === null ? "—" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2));

function gridLayout() {
  const box = $("#grids");
  const want = S.compare ? ["a", "b", "diff"] : ["a"];
  if (box.dataset.layout === want.join()) return;
  box.dataset.layout = want.join();
  box.innerHTML = "";
  box.classList.toggle("compare", !!S.compare);
  box.append(gridBox(S.compare ? S.model : `${S.model} · ${S.layer}`, "a"));
  if (S.compare) {
    box.append(gridBox(S.compare, "b"));
    box.append(gridBox(`${S.model} − ${S.compare}`, "diff"));
  }
}

async function loadLayer() {
  const t = ticket("layer");
  gridLayout();
  showLayerInfo();
  const base = {image: S.image, layer: S.layer, scale: S.scale};
  const calls = [api(`/api/layer?${q({...base, model: S.model})}`)];
  if (S.compare) {
    calls.push(api(`/api/layer?${q({...base, model: S.compare})}`, {quiet: true}));
    calls.push(api(`/api/layer?${q({...base, model: S.model, minus: S.compare})}`, {quiet: true}));
  }
  const [a, b, diff] = await Promise.all(calls);
  if (stale("layer", t)) return;
  if (a) {
    view.cols = a.cols; view.units = a.units;
    if (S.unit >= a.units) { S.unit = 0; saveURL(); }
    const box = $("#grids .grid-box.a");
    $(".grid-title b", box).textContent = S.compare ? S.model : `${S.model} · ${S.layer}`;
    drawGrid(box, a);
  }
  for (const [d, kind] of [[b, "b"], [diff, "diff"]]) {
    const box = $(`#grids .grid-box.${kind}`);
    if (!box || !d) continue;
    if (d.error) { $(".grid-note", box).textContent = d.error; $(".sprite", box).removeAttribute("src"); continue; }
    drawGrid(box, d);
    if (kind === "diff") $(".grid-note", box).textContent = `red: ${S.model} higher · blue: ${S.compare} higher`;
  }
  document.body.dataset.ready = "1";
}

function selectUnit(u) {
  if (!view.units) return;
  S.unit = Math.max(0, Math.min(view.units - 1, u));
  saveURL();
  $$("#grids .grid").forEach(placeSel);
  if (S.tab === "layer") loadUnit();
  if (S.tab === "ablation" && !view.ablate.includes(S.unit)) { /* chosen with + selected unit */ }
}

/* ---------- the unit panel ---------- */
async function loadUnit() {
  const t = ticket("unit");
  const base = {model: S.model, image: S.image, layer: S.layer, unit: S.unit};
  $("#unit-title").textContent = `${S.layer} · unit ${S.unit}`;
  const d = await api(`/api/unit?${q(base)}`);
  if (stale("unit", t)) return;
  if (d) {
    $("#unit-map").src = d.map;
    const where = d.argmax ? ` at (${d.argmax.join(", ")})` : "";
    $("#unit-stats").textContent = `max ${fmt(d.value)}${where} · mean ${fmt(d.mean)}`;
  }
  loadPattern(t);
  loadActmax(false);
  loadTop();
}

async function loadPattern(t = seq.unit) {
  const p = await api(`/api/unit/pattern?${q({model: S.model, image: S.image, layer: S.layer, unit: S.unit,
    rule: view.rule})}`);
  if (p && !stale("unit", t)) {
    $("#unit-pattern").src = p.image;
    $("#pattern-caption").textContent = (p.note ? "plain gradient (no ReLU to rule) · " : "") + (p.window
      ? `pattern in rows ${p.window[0]}–${p.window[2]}, columns ${p.window[1]}–${p.window[3]}` : "pattern over the image");
    $("#pattern-caption").title = p.note || "";
  }
}

/* Poll a background job by asking for it again (the server joins the running job) until it is done. */
async function follow(name, url, onUpdate, {cancelBtn = null, bar = null} = {}) {
  const t = ticket(name);
  view.polls[name] = null;
  let delay = 250;
  for (;;) {
    const v = await api(url);
    if (stale(name, t)) return null;
    if (!v) { if (bar) bar.hidden = true; if (cancelBtn) cancelBtn.hidden = true; return null; }
    view.polls[name] = v.job;
    const running = v.status === "queued" || v.status === "running";
    if (bar) { bar.hidden = !running; $("div", bar).style.width = `${Math.round(100 * v.progress)}%`; }
    if (cancelBtn) cancelBtn.hidden = !running;
    onUpdate(v);
    if (!running) {
      if (v.status === "failed") toast(v.error || `${name}: failed`);
      return v;
    }
    await sleep(delay);
    delay = Math.min(1000, delay * 1.3);
  }
}

async function cancelJob(name) {
  const id = view.polls[name];
  ticket(name);   // stop following
  if (id) await api(`/api/jobs/${id}`, {method: "DELETE"});
  toast("cancelled", "info");
}

function loadTop() {
  const box = $("#top9");
  const url = `/api/unit/top?${q({model: S.model, layer: S.layer, unit: S.unit, k: 9})}`;
  box.innerHTML = "";
  for (let i = 0; i < 9; i++) box.append(el("div", {class: "top-item empty"}));
  const unit = S.unit;
  const layer = S.layer;
  follow("top", url, (v) => {
    const r = v.result;
    const msg = v.status === "cancelled" ? "cancelled" : v.message || "";
    if (!r) { $("#top-info").textContent = msg || v.status; return; }
    $("#top-info").textContent = v.status === "done" ? `${r.total} images scanned`
      : `${r.scanned} / ${r.total} images${msg ? " · " + msg : ""}`;
    box.innerHTML = "";
    (r.items || []).forEach((it, rank) => box.append(el("button", {class: "top-item", "data-index": it.index,
      title: `#${it.index} · activation ${fmt(it.value)} · click to open`,
      onclick: () => setImage(`data:${it.index}`)},
    el("img", {class: "pix", src: it.image.includes("?") ? it.image : `${it.image}?scale=2`, alt: ""}),
    el("img", {class: "pix patch", src: it.patch, alt: ""}),
    el("span", {class: "rank", text: `${rank + 1}`}))));
    for (let i = (r.items || []).length; i < 9; i++) box.append(el("div", {class: "top-item empty"}));
    if (v.status === "done" && $("#top-patterns").checked && unit === S.unit && layer === S.layer) topPatterns();
  }, {cancelBtn: $("#top-cancel"), bar: $("#top-progress")});
}

async function topPatterns() {
  const t = seq.unit;
  const p = await api(`/api/unit/top/patterns?${q({model: S.model, layer: S.layer, unit: S.unit, rule: view.rule})}`);
  if (!p || stale("unit", t)) return;
  for (const it of p.items) {
    const item = $(`#top9 .top-item[data-index="${it.index}"] .patch`);
    if (item) item.src = it.pattern;
  }
}

function loadActmax(start) {
  const box = $("#actmax-box");
  const url = `/api/unit/actmax?${q({model: S.model, layer: S.layer, unit: S.unit})}`;
  const key = `${S.model}|${S.layer}|${S.unit}`;
  if (!start && !(view.actmaxSeen || new Set()).has(key)) {
    const t = ticket("actmax");
    box.innerHTML = "";
    box.append(el("button", {class: "btn", id: "actmax-run", onclick: () => loadActmax(true),
      title: "Activation maximisation (synthesis.render); cached once computed", text: "Optimise image"}));
    $("#actmax-caption").textContent = "What excites this unit most";
    api(`${url}&cached=true`).then((v) => {  /* rendered before (this visit or an earlier one): show it */
      if (!v || v.status !== "done" || stale("actmax", t)) return;
      box.innerHTML = "";
      box.append(el("img", {class: "pix big", src: v.result.image, alt: "activation maximisation"}));
      $("#actmax-caption").textContent = `optimised image · ${v.result.steps} steps · activation ${fmt(v.result.value)}`;
    });
    return;
  }
  view.actmaxSeen = view.actmaxSeen || new Set();
  view.actmaxSeen.add(key);
  box.innerHTML = "";
  const bar = el("div", {class: "progress"}, el("div"));
  box.append(el("div", {class: "small muted", text: "rendering…"}), bar);
  follow("actmax", url, (v) => {
    if (v.status === "done" && v.result) {
      box.innerHTML = "";
      box.append(el("img", {class: "pix big", src: v.result.image, alt: "activation maximisation"}));
      $("#actmax-caption").textContent = `optimised image · ${v.result.steps} steps · activation ${fmt(v.result.value)}`;
    } else if (v.status === "failed" || v.status === "cancelled") {
      box.innerHTML = "";
      box.append(el("span", {class: "small muted", text: v.error || v.status}));
    } else {
      $("div", bar).style.width = `${Math.round(100 * v.progress)}%`;
    }
  });
}

/* ---------- attribution ---------- */
async function loadMethods() {
  if (view.methods) return view.methods;
  const d = await api(`/api/attribution/methods?${q({model: S.model})}`);
  if (!d) return null;
  view.methods = d.methods;
  const box = $("#methods");
  box.innerHTML = "";
  for (const m of d.methods) {
    box.append(el("button", {class: "chip", "data-method": m.name, title: `${m.name}${m.slow ? " (slow)" : ""}`,
      onclick: () => toggleMethod(m.name)}, m.label, m.slow ? el("span", {class: "slow", text: " slow"}) : null));
  }
  return d.methods;
}

function chosenMethods() {
  const known = new Set((view.methods || []).map((m) => m.name));
  const list = S.method.split(",").filter((m) => m && (!known.size || known.has(m)));
  if (list.length) return list;
  const defaults = ["saliency", "guided_backprop", "gradcam"].filter((m) => !known.size || known.has(m));
  return defaults.length ? defaults : [...known].slice(0, 1);
}

function toggleMethod(name) {
  let list = chosenMethods();
  list = list.includes(name) ? list.filter((m) => m !== name) : list.concat([name]);
  if (!list.length) list = [name];
  S.method = list.join(",");
  saveURL();
  loadAttribution();
}

async function loadAttribution() {
  await loadMethods();
  const t = ticket("attr");
  const list = chosenMethods();
  $$("#methods .chip").forEach((c) => c.classList.toggle("on", list.includes(c.dataset.method)));
  const ids = [S.model].concat(S.compare ? [S.compare] : []);
  const rows = $("#attr-rows");
  rows.innerHTML = "";
  for (const id of ids) {
    const row = el("div", {class: "attr-row"});
    if (ids.length > 1) rows.append(el("h4", {text: id}));
    row.append(el("figure", {class: "attr"}, el("img", {class: "pix", src: imageURL(S.image, 3), alt: "input"}),
      el("figcaption", {text: "input"})));
    rows.append(row);
    for (const m of list) {
      const fig = el("figure", {class: "attr loading", "data-method": m},
        el("div", {class: "placeholder spin"}), el("figcaption", {text: m}));
      row.append(fig);
      api(`/api/attribution?${q({model: id, image: S.image, method: m, target: $("#target").value})}`).then((d) => {
        if (stale("attr", t)) return;
        fig.classList.remove("loading");
        fig.innerHTML = "";
        if (!d) { fig.append(el("div", {class: "placeholder", text: "failed"}), el("figcaption", {text: m})); return; }
        fig.append(el("img", {class: "pix", src: d.image, alt: d.label}),
          el("figcaption", {}, el("b", {text: d.label}), el("br"),
            el("span", {class: "small muted", text: `→ ${d.target.class} · ${d.ms} ms`})));
      });
    }
  }
}

/* ---------- projector ---------- */
let plotlyLoading = null;
function loadPlotly() {
  if (window.Plotly) return Promise.resolve(true);
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve) => {
      const s = el("script", {src: "/static/plotly.min.js"});
      s.onload = () => resolve(true);
      s.onerror = () => { toast("projector: plotly.min.js is missing; install the app extra"); resolve(false); };
      document.head.append(s);
    });
  }
  return plotlyLoading;
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#e7969c", "#637939", "#8c6d31", "#843c39", "#7b4173"];

async function loadProjector() {
  const method = $("#proj-method").value;
  const url = `/api/projector?${q({model: S.model, layer: S.layer, method})}`;
  const plot = $("#plot");
  const ok = await loadPlotly();
  if (!ok) return;
  $("#proj-info").textContent = "embedding…";
  const key = `${S.model}|${S.layer}|${method}`;
  if (view.proj && view.proj.key === key) { drawProjector(); loadNeighbors(); return; }
  const v = await follow("proj", url, (job) => {
    if (job.status === "running" || job.status === "queued") {
      $("#proj-info").textContent = `${job.message || "embedding"} · ${Math.round(100 * job.progress)}%`;
    }
  }, {cancelBtn: $("#proj-cancel"), bar: $("#proj-progress")});
  if (!v || v.status !== "done" || !v.result) {
    if (v && v.status === "cancelled") $("#proj-info").textContent = "cancelled";
    return;
  }
  view.proj = {key, ...v.result};
  if (plot.firstChild && plot.firstChild.classList && plot.firstChild.classList.contains("placeholder")) {
    plot.innerHTML = "";
  }
  drawProjector();
  loadNeighbors();
}

function drawProjector() {
  const p = view.proj;
  if (!p || !window.Plotly) return;
  const plot = $("#plot");
  const groups = new Map();
  for (let i = 0; i < p.x.length; i++) {
    const g = view.by === "class" ? p.label[i] : (p.correct[i] ? 1 : 0);
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(i);
  }
  const keys = Array.from(groups.keys()).sort((a, b) => (view.by === "class" ? a - b : b - a));
  const traces = keys.map((g) => {
    const idx = groups.get(g);
    const name = view.by === "class" ? p.classes[g] : (g ? "right" : "wrong");
    const colour = view.by === "class" ? PALETTE[g % PALETTE.length] : (g ? "#9aa7b4" : "#d62728");
    return {type: "scattergl", mode: "markers", name, x: idx.map((i) => p.x[i]), y: idx.map((i) => p.y[i]),
      customdata: idx.map((i) => p.index[i]), hoverinfo: "none",
      marker: {size: p.x.length > 3000 ? 4 : 7, color: colour, opacity: 0.85, line: {width: 0}}};
  });
  const layout = {margin: {l: 30, r: 10, t: 10, b: 30}, dragmode: "lasso", hovermode: "closest", clickmode: "event",
    legend: {orientation: "h", y: -0.08, font: {size: 11}}, paper_bgcolor: "#fff", plot_bgcolor: "#fbfcfd",
    xaxis: {zeroline: false, showgrid: true, gridcolor: "#eef1f4", showticklabels: false},
    yaxis: {zeroline: false, showgrid: true, gridcolor: "#eef1f4", showticklabels: false}, uirevision: p.key};
  Plotly.react(plot, traces, layout, {displaylogo: false, responsive: true,
    modeBarButtonsToRemove: ["toImage", "sendDataToCloud"]});
  $("#proj-info").textContent = `${p.method.toUpperCase()} of ${p.layer} · ${p.n} images`;
  if (!plot.dataset.wired) {
    plot.dataset.wired = "1";
    plot.on("plotly_hover", (e) => {
      const pt = e.points && e.points[0];
      if (!pt) return;
      const tip = $("#hover-tip");
      const i = pt.customdata;
      view.hovered = i;
      $("img", tip).src = `/api/thumb/${i}.png?scale=2`;
      const k = view.proj.index.indexOf(i);
      const cls = view.proj.classes;
      $("span", tip).textContent = `#${i} · ${cls[view.proj.label[k]]}${view.proj.correct[k] ? "" : ` → ${cls[view.proj.pred[k]]}`}`;
      const ev = e.event || {};
      tip.style.left = `${(ev.clientX || 0) + 14}px`;
      tip.style.top = `${(ev.clientY || 0) + 14}px`;
      tip.hidden = false;
    });
    plot.on("plotly_unhover", () => { $("#hover-tip").hidden = true; view.hovered = null; });
    plot.on("plotly_click", (e) => {
      const pt = e.points && e.points[0];
      if (pt) { $("#hover-tip").hidden = true; setImage(`data:${pt.customdata}`); }
    });
    plot.on("plotly_selected", (e) => {
      if (view.clearing) return;
      showSelection(e && e.points ? e.points.map((pt) => pt.customdata) : []);
      // drop plotly's editable selection outline (it would swallow the next click on a point); the points stay marked
      if (e && e.points && e.points.length) {
        view.clearing = true;
        Plotly.relayout(plot, {selections: []}).finally(() => { view.clearing = false; });
      }
    });
    plot.on("plotly_deselect", () => {
      if (view.clearing) return;
      // in lasso mode a click first clears the selection (plotly sends no click): open the point under the pointer
      showSelection([]);
      if (view.hovered !== null && view.hovered !== undefined) setImage(`data:${view.hovered}`);
    });
  }
}

function showSelection(indices) {
  const box = $("#selection");
  box.innerHTML = "";
  $("#sel-info").textContent = indices.length ? `${indices.length} images${indices.length > 120 ? " (first 120)" : ""}`
    : "lasso points to list them";
  for (const i of indices.slice(0, 120)) {
    box.append(el("button", {class: "thumb", "data-index": i, title: `#${i} · click to open`,
      onclick: () => setImage(`data:${i}`)}, el("img", {src: `/api/thumb/${i}.png`, alt: `#${i}`, loading: "lazy"})));
  }
}

async function loadNeighbors() {
  const t = ticket("nb");
  const d = await api(`/api/neighbors?${q({model: S.model, layer: S.layer, image: S.image, k: 8})}`);
  if (!d || stale("nb", t)) return;
  const box = $("#neighbors");
  box.innerHTML = "";
  for (const it of d.items) {
    box.append(el("button", {class: "thumb", title: `#${it.index} · distance ${fmt(it.distance)}`,
      onclick: () => setImage(`data:${it.index}`)}, el("img", {src: it.image, alt: `#${it.index}`})));
  }
}

/* ---------- ablation ---------- */
function ablateChips() {
  const box = $("#ablate-units");
  box.innerHTML = "";
  if (!view.ablate.length) box.append(el("span", {class: "small muted", text: "none"}));
  for (const u of view.ablate) {
    box.append(el("button", {class: "chip on", title: "remove", onclick: () => {
      view.ablate = view.ablate.filter((x) => x !== u); ablateChips(); runAblation();
    }}, `unit ${u} ×`));
  }
}

async function runAblation(topk = null) {
  const t = ticket("ablate");
  const box = $("#ablation");
  if (!topk && !view.ablate.length) {
    box.innerHTML = "";
    box.append(el("div", {class: "placeholder",
      text: "Add units (the selected unit, or the top-k most active) to zero them; the logits update live."}));
    return;
  }
  const body = {model: S.model, image: S.image, layer: S.layer};
  if (topk) body.top_k = topk; else body.units = view.ablate;
  const d = await api("/api/ablate", {method: "POST", json: body});
  if (!d || stale("ablate", t)) return;
  if (topk) { view.ablate = d.units.slice(); ablateChips(); }
  box.innerHTML = "";
  const classes = info().classes;
  const lo = Math.min(0, ...d.before.logits, ...d.after.logits);
  const hi = Math.max(0, ...d.before.logits, ...d.after.logits);
  const span = hi - lo || 1;
  const pos = (v) => (100 * (v - lo)) / span;
  const chart = el("div", {class: "logits"});
  const order = classes.map((c, i) => i).sort((a, b) => d.before.logits[b] - d.before.logits[a]).slice(0, 20);
  for (const i of order) {
    const b = d.before.logits[i];
    const a = d.after.logits[i];
    const zero = pos(0);
    const bar = (v, kind) => el("span", {class: `lbar ${kind}`,
      style: `left:${Math.min(zero, pos(v))}%;width:${Math.abs(pos(v) - zero)}%`});
    chart.append(el("div", {class: "logit-row"}, el("span", {class: "bar-label", text: classes[i]}),
      el("span", {class: "ltrack"}, bar(b, "before"), bar(a, "after"),
        el("span", {class: "zero", style: `left:${zero}%`})),
      el("span", {class: `bar-value ${a - b < 0 ? "down" : "up"}`, text: `${fmt(b)} → ${fmt(a)}`})));
  }
  box.append(el("div", {class: "ablation-view"},
    el("div", {class: "card"}, el("h4", {}, "Logits ", el("span", {class: "legend before", text: "before"}),
      el("span", {class: "legend after", text: "after"})), chart),
    el("div", {class: "card"}, el("h4", {text: "Top-5 before"}), bars(d.before.top),
      el("h4", {text: "Top-5 after"}), bars(d.after.top),
      el("p", {class: "small muted", text: `${d.units.length} unit${d.units.length === 1 ? "" : "s"} of ${d.layer} `
        + `zeroed · ${d.ms} ms`}))));
}

/* ---------- attack ---------- */
async function runAttack() {
  const t = ticket("attack");
  const box = $("#attack");
  box.innerHTML = "";
  box.append(el("div", {class: "placeholder spin", text: "attacking…"}));
  const body = {model: S.model, image: S.image, method: view.attack, eps: parseFloat($("#eps").value),
    steps: parseInt($("#steps").value, 10), norm: $("#norm").value, layer: S.layer};
  const d = await api("/api/attack", {method: "POST", json: body});
  if (stale("attack", t)) return;
  box.innerHTML = "";
  if (!d) { box.append(el("div", {class: "placeholder", text: "The attack failed (see the message)."})); return; }
  const top1 = (r) => (r.top[0] ? `${r.top[0].class} ${(100 * r.top[0].prob).toFixed(0)}%` : "—");
  const maxChange = Math.max(1e-9, ...d.units.map((u) => Math.abs(u.change)));
  box.append(el("div", {class: "attack-view"},
    el("figure", {}, el("img", {class: "pix big", src: imageURL(S.image, 4), alt: "original"}),
      el("figcaption", {}, el("b", {text: "original"}), el("br"), top1(d.before))),
    el("figure", {}, el("img", {class: "pix big", src: d.perturbation, alt: "perturbation"}),
      el("figcaption", {}, el("b", {text: "perturbation"}), el("br"),
        `L∞ ${d.linf.toFixed(3)} · L2 ${d.l2.toFixed(2)} (amplified)`)),
    el("figure", {}, el("img", {class: "pix big", src: d.adversarial, alt: "adversarial"}),
      el("figcaption", {}, el("b", {text: "adversarial"}), el("br"), top1(d.after), " ",
        el("span", {class: `badge ${d.success ? "bad" : "ok"}`, text: d.success ? "fooled" : "held"}))),
    el("div", {class: "card attack-side"},
      el("h4", {text: "Top-5 after"}), bars(d.after.top),
      el("button", {class: "btn primary", onclick: () => setImage(d.image_id), text: "Open adversarial image"}),
      el("p", {class: "small muted", text: `${d.method.toUpperCase()} · ε ${d.eps} · ${d.ms} ms`}))));
  const units = el("div", {class: "card"}, el("h4", {text: `Units of ${S.layer} that changed most`}));
  for (const u of d.units) {
    units.append(el("div", {class: "logit-row clickable", title: "select this unit",
      onclick: () => { S.unit = u.unit; saveURL(); switchTab("layer"); }},
    el("span", {class: "bar-label", text: `unit ${u.unit}`}),
    el("span", {class: "bar"}, el("span", {class: u.change < 0 ? "neg" : "",
      style: `width:${(100 * Math.abs(u.change) / maxChange).toFixed(1)}%`})),
    el("span", {class: "bar-value", text: `${fmt(u.before)} → ${fmt(u.after)}`})));
  }
  box.append(units);
}

/* ---------- why ---------- */
function loadWhy() {
  const box = $("#why");
  box.innerHTML = "";
  const url = `/api/why?${q({model: S.model, image: S.image, k: 8})}`;
  follow("why", url, (v) => {
    if (v.status !== "done" || !v.result) {
      $("#why-info").textContent = v.status === "cancelled" ? "cancelled"
        : `${v.message || "computing influence"} · ${Math.round(100 * v.progress)}%`;
      return;
    }
    const r = v.result;
    $("#why-info").textContent = `Influence (${r.method}, on ${(r.params || []).join(", ") || "the head"}) of each of the ${r.n} `
      + "images of the explorer's dataset, taken as the training set: the predicted change of this input's loss "
      + "if that image were removed (helpful: positive).";
    box.innerHTML = "";
    const grid = (title, items, kind) => el("div", {class: `card why ${kind}`}, el("h4", {text: title}),
      el("div", {class: "why-grid"}, items.map((it) => el("button", {class: "why-item",
        title: `#${it.index} · ${it.class} · score ${it.score.toExponential(2)}`,
        onclick: () => setImage(`data:${it.index}`)},
      el("img", {class: "pix", src: it.image.includes("?") ? it.image : `${it.image}?scale=2`, alt: ""}),
      el("span", {class: "small", text: it.class}),
      el("span", {class: "small muted", text: it.score.toExponential(1)})))));
    box.append(grid("Most helpful", r.helpful, "helpful"), grid("Most harmful", r.harmful, "harmful"));
  }, {cancelBtn: $("#why-cancel"), bar: $("#why-progress")});
}

/* ---------- the probe strip: one bar per stage, its linear-probe accuracy (GET /api/probe, a background job) ---------- */
async function loadProbe() {
  const t = ticket("probe");
  const strip = $("#probe-strip");
  const model = S.model;
  strip.innerHTML = "";
  strip.append(el("span", {class: "probe-label small muted", text: "probing…",
    title: "Linear probes of each stage are being fitted in the background"}));
  strip.hidden = false;
  let delay = 400;
  for (;;) {
    const v = await api(`/api/probe?${q({model})}`, {quiet: true});
    if (stale("probe", t)) return;
    // optional: a dataset without labels (or too small to split) leaves the strip out, quietly
    if (!v || v.error || !["queued", "running", "done"].includes(v.status)) { strip.hidden = true; return; }
    if (v.status === "done") { drawProbe(v.result); return; }
    await sleep(delay);
    delay = Math.min(2000, delay * 1.5);
  }
}

function drawProbe(r) {
  const strip = $("#probe-strip");
  const pct = (v) => `${(100 * v).toFixed(1)}%`;
  const own = r.model_accuracy === null ? "" : `, the model itself ${pct(r.model_accuracy)}`;
  strip.innerHTML = "";
  strip.append(el("span", {class: "probe-label small muted", text: "probe",
    title: `Linear-probe accuracy of each stage: a logistic regression on its frozen, ${r.pool}-pooled features, `
      + `fitted on ${r.n_train} dataset images and scored on ${r.n_test} others (pixels ${pct(r.pixels)}, chance `
      + `${pct(r.chance)}${own}). The dark tick is a randomly re-initialised copy. Click a bar to open that layer.`}));
  for (const row of r.layers) {
    const tip = `${row.layer}: ${pct(row.accuracy)}` + (row.random === null ? "" : ` · random copy ${pct(row.random)}`);
    strip.append(el("button", {class: "probe-bar", "data-layer": row.layer, "data-tip": tip,
      "aria-label": `${row.layer} probe accuracy ${pct(row.accuracy)}`, onclick: () => setLayer(row.layer)},
    el("span", {class: "probe-fill", style: `height: ${Math.max(6, 100 * row.accuracy)}%`}),
    row.random === null ? null : el("span", {class: "probe-random", style: `bottom: ${100 * row.random}%`})));
  }
  markProbe();
}

function markProbe() {
  $$("#probe-strip .probe-bar").forEach((b) => b.classList.toggle("on", b.dataset.layer === S.layer));
}

/* ---------- tabs ---------- */
function switchTab(tab) {
  if (!TABS.includes(tab)) return;
  S.tab = tab;
  saveURL();
  $$("#tabs button").forEach((b) => b.classList.toggle("on", b.dataset.tab === tab));
  $$(".panel").forEach((p) => { p.hidden = p.dataset.panel !== tab; });
  $("#scale").hidden = tab !== "layer";
  $("#hover-tip").hidden = true;
  refreshTab();
}

function refreshTab() {
  switch (S.tab) {
    case "layer": loadLayer().then(() => loadUnit()); break;
    case "attribution": loadAttribution(); break;
    case "projector": loadProjector(); break;
    case "ablation": ablateChips(); runAblation(); break;
    case "attack": $("#attack").innerHTML = ""; $("#attack").append(el("div", {class: "placeholder",
      text: "Choose a method and budget, then attack the current input."})); break;
    case "why": loadWhy(); break;
    default: break;
  }
}

function setLayer(name) {
  if (!layerRow(name)) return;
  S.layer = name;
  S.unit = 0;
  view.ablate = [];
  saveURL();
  const opt = $$("#layer option").find((o) => o.value === name);
  if (opt) opt.selected = true;
  showLayerInfo();
  if (S.tab === "layer" && live.on) return;   // the webcam redraws the grid
  refreshTab();
}

function stepLayer(delta) {
  const list = layerList();
  const i = list.indexOf(S.layer);
  setLayer(list[Math.max(0, Math.min(list.length - 1, i + delta))]);
}

/* ---------- webcam ---------- */
async function camStart() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    toast("webcam: this browser has no camera access (needs http://127.0.0.1 or https)");
    return;
  }
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}, audio: false});
  } catch (err) {
    toast(`webcam: ${err.message || err.name}`);
    return;
  }
  const video = $("#video");
  video.srcObject = live.stream;
  try { await video.play(); } catch (err) { /* autoplay of a muted stream is allowed */ }
  live.ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/live`);
  live.ws.onopen = () => { live.on = true; live.times = []; sendFrame(); };
  live.ws.onmessage = (e) => onFrame(e.data);
  live.ws.onerror = () => {};
  live.ws.onclose = () => { if (live.on) toast("webcam: the connection closed", "info"); camStop(); };
  $("#cam-start").disabled = true;
  $("#cam-stop").disabled = false;
  $("#cam-snap").disabled = false;
  document.body.classList.add("live");
}

function camStop() {
  live.on = false;
  if (live.ws) { const ws = live.ws; live.ws = null; try { ws.close(); } catch (err) { /* closed */ } }
  if (live.stream) { live.stream.getTracks().forEach((t) => t.stop()); live.stream = null; }
  live.busy = false;
  $("#cam-start").disabled = false;
  $("#cam-stop").disabled = true;
  $("#cam-snap").disabled = true;
  document.body.classList.remove("live");
  $("#fps").textContent = "— fps";
}

function grabFrame() {
  const video = $("#video");
  const [, h, w] = inputSize();
  const c = $("#cam-canvas");
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const vw = video.videoWidth || w;
  const vh = video.videoHeight || h;
  const side = Math.min(vw, vh * w / h);
  const sideH = side * h / w;
  c.getContext("2d").drawImage(video, (vw - side) / 2, (vh - sideH) / 2, side, sideH, 0, 0, w, h);
  return c;
}

function sendFrame() {
  if (!live.on || !live.ws || live.ws.readyState !== 1 || live.busy) return;
  const c = grabFrame();
  live.busy = true;
  live.ws.send(JSON.stringify({model: S.model, layer: S.layer, scale: S.scale,
    image: c.toDataURL("image/jpeg", 0.85)}));
}

function onFrame(text) {
  live.busy = false;
  let d = null;
  try { d = JSON.parse(text); } catch (err) { d = {error: "webcam: a frame came back unreadable"}; }
  if (d.error) {
    live.errors = (live.errors || 0) + 1;
    if (live.errors < 3) toast(d.error);
  } else {
    const now = performance.now();
    live.times.push(now);
    while (live.times.length && now - live.times[0] > 2000) live.times.shift();
    const fps = live.times.length > 1 ? (1000 * (live.times.length - 1)) / (now - live.times[0]) : 0;
    live.fps = fps;
    live.frames = (live.frames || 0) + 1;
    $("#fps").textContent = `${fps.toFixed(1)} fps · ${d.ms} ms`;
    const box = $("#live-top");
    box.innerHTML = "";
    box.append(el("h4", {text: "Live prediction"}), bars(d.top));
    if (S.tab === "layer" && d.layer) {
      gridLayout();
      const g = $("#grids .grid-box.a");
      view.cols = d.layer.cols; view.units = d.layer.units;
      drawGrid(g, d.layer);
      $(".grid-note", g).textContent = `live · ${d.layer.units} units · ${fps.toFixed(1)} fps`;
    }
  }
  if (live.on) requestAnimationFrame(sendFrame);
}

function snapshot() {
  const c = grabFrame();
  c.toBlob((blob) => blob && upload(blob, "webcam.png"), "image/png");
}

/* ---------- report ---------- */
async function toDataURL(img) {
  if (img.src.startsWith("data:")) return img.src;
  if (!img.complete || !img.naturalWidth) return null;
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext("2d").drawImage(img, 0, 0);
  return c.toDataURL("image/png");
}

async function addToReport() {
  const panel = $(`.panel[data-panel="${S.tab}"]`);
  const imgs = [$("#current-img")].concat($$("img", panel).filter((i) => i.offsetParent !== null));
  const images = [];
  for (const img of imgs.slice(0, 47)) {  /* the server keeps at most 48 pictures per panel */
    const url = await toDataURL(img);
    if (url) images.push(url);
  }
  if (S.tab === "projector" && window.Plotly && view.proj) {
    try { images.push(await Plotly.toImage($("#plot"), {format: "png", width: 800, height: 560})); } catch (e) {
      /* the scatter stays out of the report */ }
  }
  const title = `${S.tab[0].toUpperCase()}${S.tab.slice(1)} · ${S.model}${S.compare ? " vs " + S.compare : ""}`
    + ` · ${S.layer}${S.tab === "layer" ? " unit " + S.unit : ""}`;
  const caption = `Input ${S.image}. ${$("#predictions").innerText.replace(/\s+/g, " ").trim()}`;
  const r = await api("/api/report", {method: "POST", json: {title, caption, state: location.href, images}});
  if (r) {
    toast(`Added to ${r.path} (${r.panels} panel${r.panels === 1 ? "" : "s"})`, "info");
    const link = $("#report-link");
    link.href = r.url; link.hidden = false;
  }
}

/* ---------- keyboard ---------- */
function onKey(e) {
  const tag = (e.target.tagName || "").toLowerCase();
  if (["input", "select", "textarea"].includes(tag) || e.ctrlKey || e.metaKey || e.altKey) return;
  const help = $("#help-overlay");
  if (e.key === "Escape") { help.hidden = true; return; }
  if (e.key === "?") { help.hidden = !help.hidden; e.preventDefault(); return; }
  const moves = {ArrowLeft: -1, ArrowRight: 1, ArrowUp: -view.cols, ArrowDown: view.cols};
  if (e.key in moves) {
    e.preventDefault();
    if (S.tab !== "layer") switchTab("layer");
    selectUnit(S.unit + moves[e.key]);
    return;
  }
  if (e.key === "[" || e.key === "PageUp") { e.preventDefault(); stepLayer(-1); return; }
  if (e.key === "]" || e.key === "PageDown") { e.preventDefault(); stepLayer(1); return; }
  if (/^[1-6]$/.test(e.key)) { switchTab(TABS[parseInt(e.key, 10) - 1]); return; }
  if (e.key === "s") { setScale(S.scale === "own" ? "shared" : "own"); return; }
  if (e.key === "c" && !$("#compare").disabled) { $("#compare").checked = !$("#compare").checked; setCompare(); return; }
  if (e.key === "j") stepImage(1);
  if (e.key === "k") stepImage(-1);
}

function setScale(scale) {
  S.scale = scale;
  saveURL();
  $$("#scale button").forEach((b) => b.classList.toggle("on", b.dataset.scale === scale));
  if (S.tab === "layer" && !live.on) loadLayer();
}

async function setCompare() {
  const on = $("#compare").checked;
  $("#other").hidden = !on;
  if (on) {
    if (!$("#other").value || $("#other").value === S.model) {
      const alt = Array.from($("#other").options).find((o) => o.value !== S.model);
      if (alt) $("#other").value = alt.value;
    }
    S.compare = $("#other").value;
    await modelInfo(S.compare);
  } else S.compare = "";
  saveURL();
  predictions();
  refreshTab();
}

async function setModel(id) {
  const m = await modelInfo(id);
  if (!m) { $("#model").value = S.model; return; }
  S.model = id;
  view.methods = null; view.proj = null; view.ablate = [];
  fillLayers();
  saveURL();
  if (S.compare === id) { $("#compare").checked = false; await setCompare(); }
  loadData();
  setImage(S.image);
  loadProbe();
}

/* ---------- start ---------- */
async function boot() {
  const t0 = performance.now();
  readURL();
  const models = JSON.parse(document.body.dataset.models || "[]");
  if (!models.includes(S.model)) S.model = document.body.dataset.main || models[0];
  $("#model").value = S.model;
  const m = await modelInfo(S.model);
  if (!m) { document.body.dataset.ready = "error"; return; }
  if (S.compare && models.includes(S.compare) && S.compare !== S.model) {
    $("#compare").checked = true; $("#other").hidden = false; $("#other").value = S.compare;
    await modelInfo(S.compare);
  } else S.compare = "";
  fillLayers();
  $$("#scale button").forEach((b) => b.classList.toggle("on", b.dataset.scale === S.scale));
  $("#meta").innerHTML = "";
  $("#meta").append(el("span", {text: `${m.name} · ${m.input_size.join("×")} · ${m.classes.length} classes · data `}),
    el("code", {text: m.data.spec}), el("span", {text: ` (${m.data.size})`}));

  $("#model").addEventListener("change", (e) => { setModel(e.target.value); e.target.blur(); });
  $("#compare").addEventListener("change", setCompare);
  $("#other").addEventListener("change", (e) => { e.target.blur(); setCompare(); });
  $("#layer").addEventListener("change", (e) => { setLayer(e.target.value); e.target.blur(); });
  $("#layer-prev").addEventListener("click", () => stepLayer(-1));
  $("#layer-next").addEventListener("click", () => stepLayer(1));
  $$("#scale button").forEach((b) => b.addEventListener("click", () => setScale(b.dataset.scale)));
  $$("#tabs button").forEach((b) => b.addEventListener("click", () => switchTab(b.dataset.tab)));
  $$("#source-tabs button").forEach((b) => b.addEventListener("click", () => {
    $$("#source-tabs button").forEach((x) => x.classList.toggle("on", x === b));
    $$(".src").forEach((s) => { s.hidden = s.dataset.src !== b.dataset.src; });
  }));
  $("#cls").addEventListener("change", (e) => { view.page = 0; loadData(); e.target.blur(); });
  $("#correct").addEventListener("change", (e) => { view.page = 0; loadData(); e.target.blur(); });
  $("#prev-page").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); loadData(); });
  $("#next-page").addEventListener("click", () => { view.page += 1; loadData(); });
  $$("#rule button").forEach((b) => b.addEventListener("click", () => {
    view.rule = b.dataset.rule;
    $$("#rule button").forEach((x) => x.classList.toggle("on", x === b));
    loadPattern();
    if ($("#top-patterns").checked) topPatterns();
  }));
  $("#top-patterns").addEventListener("change", (e) => (e.target.checked ? topPatterns() : loadTop()));
  $("#top-cancel").addEventListener("click", () => { cancelJob("top"); $("#top-cancel").hidden = true;
    $("#top-progress").hidden = true; $("#top-info").textContent = "cancelled"; });
  $("#proj-cancel").addEventListener("click", () => { cancelJob("proj"); $("#proj-cancel").hidden = true;
    $("#proj-progress").hidden = true; $("#proj-info").textContent = "cancelled"; });
  $("#why-cancel").addEventListener("click", () => { cancelJob("why"); $("#why-cancel").hidden = true;
    $("#why-progress").hidden = true; $("#why-info").textContent = "cancelled"; });
  $("#proj-method").addEventListener("change", (e) => { e.target.blur(); view.proj = null; loadProjector(); });
  $$("#colour-by button").forEach((b) => b.addEventListener("click", () => {
    view.by = b.dataset.by;
    $$("#colour-by button").forEach((x) => x.classList.toggle("on", x === b));
    drawProjector();
  }));
  $("#target").addEventListener("change", (e) => { e.target.blur(); loadAttribution(); });
  $("#ablate-add").addEventListener("click", () => {
    if (!view.ablate.includes(S.unit)) view.ablate.push(S.unit);
    ablateChips(); runAblation();
  });
  $("#ablate-topk").addEventListener("click", () => runAblation(Math.max(1, parseInt($("#topk").value, 10) || 1)));
  $("#ablate-clear").addEventListener("click", () => { view.ablate = []; ablateChips(); runAblation(); });
  $$("#attack-method button").forEach((b) => b.addEventListener("click", () => {
    view.attack = b.dataset.m;
    $$("#attack-method button").forEach((x) => x.classList.toggle("on", x === b));
  }));
  $("#eps").addEventListener("input", (e) => { $("#eps-out").textContent = parseFloat(e.target.value).toFixed(3); });
  $("#attack-run").addEventListener("click", runAttack);
  $("#cam-start").addEventListener("click", camStart);
  $("#cam-stop").addEventListener("click", camStop);
  $("#cam-snap").addEventListener("click", snapshot);
  $("#report").addEventListener("click", addToReport);
  $("#help").addEventListener("click", () => { $("#help-overlay").hidden = false; });
  $("#help-close").addEventListener("click", () => { $("#help-overlay").hidden = true; });
  $("#help-overlay").addEventListener("click", (e) => { if (e.target.id === "help-overlay") e.target.hidden = true; });
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { if (S.tab === "layer" && !live.on) loadLayer(); });
  setupUpload();
  setupDrawing();

  const d = await loadData();
  if (!S.image) S.image = d && d.items.length ? `data:${d.items[0].index}` : "data:0";
  switchTab(S.tab);
  setImage(S.image, {refresh: false});
  window.underhoodBoot = performance.now() - t0;
  // the probe strip comes last: once the first grid is drawn, never before
  const probeWhenReady = () => (document.body.dataset.ready ? loadProbe() : setTimeout(probeWhenReady, 250));
  setTimeout(probeWhenReady, 250);
}

window.addEventListener("unhandledrejection", (e) => { e.preventDefault(); toast(`page: ${e.reason}`); });
document.addEventListener("DOMContentLoaded", boot);

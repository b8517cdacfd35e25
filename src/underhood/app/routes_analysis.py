"""Attribution maps, unit ablation, adversarial attacks, influential training images and the explorer's report.

Every panel is one library call drawn the library's way: maps with the 13 methods of
:mod:`underhood.attribution.registry` (their report presets, the CAM layer of
:func:`~underhood.attribution.evaluate.method_options`) rendered by
:func:`underhood.viz.attribution.render_map` in the method's paper's style; ablation with
:func:`underhood.activations.ablate.ablated_logits` (the hook of ``ablate``); attacks with
:func:`underhood.adversarial.fgsm` / ``pgd`` (the perturbation magnified as
:func:`underhood.viz.adversarial.magnify` does); "why" with :func:`underhood.influence.api.Influence`
on the classifier head over the explorer's dataset. ``POST /api/report`` appends the current panel
to one self-contained HTML file in the output folder.
"""

from __future__ import annotations

import base64
import binascii
import html
import math
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from fastapi import APIRouter, Body, Request

from ..core.errors import InputError
from .pictures import data_url, image_png, png
from .routes_core import top_classes, ws
from .workspace import Entry, NotFound, Workspace

router = APIRouter()

SLOW = ("scorecam", "occlusion", "lime")     # seconds rather than milliseconds on a large model
ATTACKS = ("fgsm", "pgd")
NORMS = ("linf", "l2")
MAX_STEPS = 200                              # PGD iterations the page may ask for
PGD_STEPS = 20
CHANGED = 10                                 # units listed under an attack
MAX_K = 64                                   # helpful / harmful images per list
DAMPING = 0.01                               # the head's damping (as the report's influence section)
REPORT = "explorer-report.html"
MARK = "<!-- underhood:panels -->"
MAX_IMAGES = 48
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_report_lock = threading.Lock()


def _image_key(w: Workspace, image: str | None) -> str:
    ref = image or "data:0"
    return f"{w.data_spec}/{ref}" if ref.startswith("data:") else ref


def _top(logits: torch.Tensor, classes: list[str], k: int = 5) -> list[dict[str, Any]]:
    """The top-``k`` classes of ``logits`` as ``/api/predict`` lists them."""
    return top_classes(logits.softmax(-1), classes, k)


def _rgb_png(a: np.ndarray) -> bytes:
    """An ``[H, W, 3]`` float array in ``[0, 1]`` (a library picture) as PNG bytes."""
    return png((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


# ---------------------------------------------------------------------------------------------- attribution
def _applicable(w: Workspace, entry: Entry) -> list[str]:
    from ..attribution.evaluate import applicable_methods

    def compute() -> list[str]:
        with entry.lock:
            return applicable_methods(entry.model)

    return w.cache.memo(w.cache.key("attribution-methods", entry.digest), compute)


def _method(w: Workspace, entry: Entry, method: str | None):
    """The registry entry of ``method`` (404 when unknown, 400 when it does not apply to this model)."""
    from ..attribution.registry import REGISTRY

    if not method:
        raise InputError(f"method: name an attribution method, one of {', '.join(REGISTRY)}")
    found = REGISTRY.get(method)
    if found is None:
        import difflib

        close = difflib.get_close_matches(method, list(REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(REGISTRY)}"
        raise NotFound(f"method: {method!r} is not an attribution method; {hint}")
    if method not in _applicable(w, entry):
        need = "a global-average-pooling + linear head" if found.head else "an eager (not TorchScript) model"
        raise InputError(f"method: {method} needs {need}; {entry.id} has none, pick gradcam or saliency")
    return found


@router.get("/api/attribution/methods")
def attribution_methods(request: Request, model: str | None = None) -> dict[str, Any]:
    """The 13 attribution methods: name, label, picture style, whether they read a layer, whether they are slow,
    and whether they apply to this model."""
    from ..attribution.registry import REGISTRY
    from ..viz.attribution import LABELS, STYLES

    w = ws(request)
    entry = w.entry(model)
    ok = set(_applicable(w, entry))
    return {"methods": [{"name": name, "label": LABELS.get(name, name), "style": STYLES.get(name, "magnitude"),
                         "needs_layer": m.layer, "slow": name in SLOW, "available": name in ok}
                        for name, m in REGISTRY.items()]}


def attribution_map(w: Workspace, entry: Entry, x: torch.Tensor, method: str, target: int
                    ) -> tuple[torch.Tensor, float]:
    """The library's map of ``x`` ``[C, H, W]`` for class ``target``: ``[C or 1, H, W]`` on the CPU, with the
    report's preset options (and its CAM layer), and the seconds the method took (waiting for the model's
    lock, while another request uses it, is not counted). Runs under ``entry.lock``."""
    from ..attribution.evaluate import method_options
    from ..attribution.registry import REGISTRY

    found = REGISTRY[method]
    with entry.lock:
        start = time.perf_counter()
        options = method_options(entry.model, [method], size=tuple(entry.input_size[-2:]))[method]
        if "progress" in found.options:
            options["progress"] = False
        a = found.fn(entry.model, x[None].to(entry.device), target, **options)
        a = a[0].detach().float().cpu()
        seconds = time.perf_counter() - start
    return a, seconds


def draw_attribution(a: torch.Tensor, method: str, x: torch.Tensor) -> bytes:
    """A map drawn as its paper draws it (:func:`underhood.viz.attribution.render_map` in the method's style,
    over the image where the style says), as PNG bytes at the input's size."""
    from ..viz.attribution import STYLES, render_map

    return _rgb_png(render_map(a, STYLES.get(method, "magnitude"), x.cpu()))


def _target(entry: Entry, x: torch.Tensor, target: int | None) -> int:
    from ..core.batching import logits

    if target is None:
        with entry.lock, torch.no_grad():
            return int(logits(entry.model, x[None], 1)[0].argmax())
    if not 0 <= target < len(entry.classes):
        raise InputError(f"target: {entry.id} has classes 0..{len(entry.classes) - 1}, got {target}")
    return int(target)


@router.get("/api/attribution")
def attribution(request: Request, model: str | None = None, image: str | None = None, method: str | None = None,
                target: int | None = None) -> dict[str, Any]:
    """One attribution map of one image for one class (default: the predicted one), drawn in its paper's style."""
    from ..viz.attribution import LABELS

    w = ws(request)
    entry = w.entry(model)
    x = w.image(image, entry)
    _method(w, entry, method)
    cls = _target(entry, x, target)
    key = w.cache.key("attribution", entry.digest, _image_key(w, image), method, cls)
    cached = w.cache.recall(key)
    if cached is None:
        a, seconds = attribution_map(w, entry, x, method, cls)
        start = time.perf_counter()
        picture = draw_attribution(a, method, x)
        cached = w.cache.remember(key, {"image": data_url(picture),
                                        "ms": round(1000 * (seconds + time.perf_counter() - start), 1)})
    return {"method": method, "label": LABELS.get(method, method), "target": {"index": cls,
                                                                             "class": entry.classes[cls]},
            **cached}


# ---------------------------------------------------------------------------------------------- ablation
def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not value.is_integer()):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def _unit_maxima(entry: Entry, x: torch.Tensor, layer: str) -> torch.Tensor:
    """``[C]`` each unit's largest activation on ``x`` at ``layer`` (the layer view's ranking)."""
    from ..activations.maps import maps

    with entry.lock:
        a = maps(entry.model, x[None].to(entry.device), layer)[layer][0]
    return a.flatten(1).amax(1).float().cpu() if a.ndim > 1 else a.float().cpu()


def _layer(entry: Entry, layer: Any) -> str:
    if not isinstance(layer, str) or not layer:
        raise InputError("layer: name a layer (GET /api/model lists them)")
    entry.layer(layer)
    return layer


@router.post("/api/ablate")
def ablate(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """Zero ``units`` of ``layer`` (or the ``top_k`` most active on this image) and compare the predictions."""
    from ..activations.ablate import ablated_logits
    from ..core.batching import logits as batched_logits

    w = ws(request)
    entry = w.entry(body.get("model"))
    x = w.image(body.get("image"), entry)
    layer = _layer(entry, body.get("layer"))
    units, top_k = body.get("units"), body.get("top_k")
    if (units is None) == (top_k is None):
        raise InputError("units: give either units:[...] or top_k:k (the k units most active on this image)")
    channels = entry.channels(layer)
    start = time.perf_counter()
    if top_k is not None:
        k = _int(top_k, "top_k")
        if not 1 <= k <= channels:
            raise InputError(f"top_k: {layer!r} has {channels} units; give 1..{channels}, got {k}")
        chosen = [int(u) for u in _unit_maxima(entry, x, layer).argsort(descending=True, stable=True)[:k]]
    else:
        if not isinstance(units, list) or not units:
            raise InputError("units: expected a non-empty list of unit indices, e.g. [3, 7]")
        chosen = list(dict.fromkeys(entry.unit(layer, _int(u, "units")) for u in units))
    with entry.lock, torch.no_grad():
        before = batched_logits(entry.model, x[None], 1)[0].cpu()
        after = ablated_logits(entry.model, x[None], layer, chosen)[0].float().cpu()
    return {"layer": layer, "units": chosen,
            "before": {"top": _top(before, entry.classes), "logits": [float(v) for v in before]},
            "after": {"top": _top(after, entry.classes), "logits": [float(v) for v in after]},
            "delta": [float(v) for v in after - before], "ms": round(1000 * (time.perf_counter() - start), 1)}


# ---------------------------------------------------------------------------------------------- attack
def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name}: expected a number, got {value!r}")
    return float(value)


def _attack_settings(entry: Entry, body: dict) -> tuple[str, str, float, int]:
    method = body.get("method", "pgd")
    if method not in ATTACKS:
        raise InputError(f"method: expected one of {', '.join(ATTACKS)}, got {method!r}")
    norm = body.get("norm", "linf")
    if norm not in NORMS:
        raise InputError(f"norm: expected one of {', '.join(NORMS)}, got {norm!r}")
    if method == "fgsm" and norm != "linf":
        raise InputError("norm: fgsm takes one signed step in the linf ball; use norm linf or method pgd")
    eps = _number(body.get("eps", 8 / 255), "eps")
    top = 1.0 if norm == "linf" else math.sqrt(math.prod(entry.input_size))
    if not 0 < eps <= top:
        raise InputError(f"eps: expected a budget in (0, {top:.4g}] pixels for the {norm} norm, got {eps:g}; "
                         "pixels are in [0, 1], e.g. 0.03")
    steps = _int(body.get("steps", PGD_STEPS), "steps")
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps: expected 1..{MAX_STEPS}, got {steps}")
    return method, norm, eps, steps


@router.post("/api/attack")
def attack(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """FGSM or PGD on one image: the adversarial image (stored, so the page can open it), the perturbation
    magnified around grey, the predictions before and after, and the units of ``layer`` that changed most."""
    from ..activations.maps import maps
    from ..adversarial.gradient import fgsm, pgd
    from ..core.batching import logits
    from ..viz.adversarial import magnify

    w = ws(request)
    entry = w.entry(body.get("model"))
    x = w.image(body.get("image"), entry)
    layer = body.get("layer") or (entry.stages[-1] if entry.stages else None)
    if layer is not None:
        _layer(entry, layer)
    method, norm, eps, steps = _attack_settings(entry, body)
    start = time.perf_counter()
    with entry.lock:
        xb = x[None].to(entry.device)
        if method == "fgsm":
            result = fgsm(entry.model, xb, eps=eps)
        else:
            result = pgd(entry.model, xb, eps=eps, norm=norm, steps=steps, seed=0)
        adv = result.adversarial.detach()
        both = torch.cat([xb, adv])
        with torch.no_grad():
            out = logits(entry.model, both, 2).cpu()
            acts = maps(entry.model, both, layer)[layer] if layer else None
    units = []
    if acts is not None:
        top = acts.flatten(2).amax(2).float().cpu() if acts.ndim > 2 else acts.float().cpu()
        change = top[1] - top[0]
        for u in change.abs().argsort(descending=True, stable=True)[:CHANGED]:
            units.append({"unit": int(u), "before": round(float(top[0, u]), 5), "after": round(float(top[1, u]), 5),
                          "change": round(float(change[u]), 5)})
    adv_cpu = adv[0].cpu()
    amplified, factor = magnify(result.perturbation[:1])
    return {"method": method, "eps": eps, "norm": norm, "steps": steps if method == "pgd" else 1, "layer": layer,
            "adversarial": data_url(image_png(adv_cpu)), "perturbation": data_url(image_png(amplified[0])),
            "factor": round(float(factor), 3), "image_id": w.add_tensor(adv_cpu),
            "before": {"top": _top(out[0], entry.classes)}, "after": {"top": _top(out[1], entry.classes)},
            "success": bool(result.success[0]), "linf": float(result.norms["linf"][0]),
            "l2": float(result.norms["l2"][0]), "units": units, "ms": round(1000 * (time.perf_counter() - start), 1)}


# ---------------------------------------------------------------------------------------------- why
def _head(w: Workspace, entry: Entry) -> tuple[str, str]:
    """The classifier head ``entry``'s influence is taken over and the estimator for its size: ``exact`` up to
    ``EXACT_LIMIT`` parameters, else ``cg``. A model without an ``nn.Linear`` head is a 400."""
    from ..core.layers import resolve
    from ..influence.problem import EXACT_LIMIT, head_layer

    def find() -> tuple[str, str] | tuple[()]:
        with entry.lock:
            head = head_layer(entry.model, w.data.images[:1].to(entry.device))
        if head is None:
            return ()
        params = sum(p.numel() for p in resolve(entry.model, head).parameters())
        return head, "exact" if params <= EXACT_LIMIT else "cg"

    found = w.cache.memo(w.cache.key("influence-head", entry.digest, w.data_spec), find)
    if not found:
        raise InputError(f"model: {entry.id} has no nn.Linear head, so 'why' (influence on the head) does not "
                         "apply; pick a classifier with a linear head")
    return found


def _estimator(w: Workspace, entry: Entry):
    """The influence estimator of ``entry``'s head fitted on the explorer's dataset (kept in memory: every
    later query is one solve and one product). Call under ``entry.lock``."""
    from ..influence.api import Influence

    head, method = _head(w, entry)
    return w.cache.memo(w.cache.key("influence", entry.digest, w.data_spec, len(w.data), head, method, DAMPING),
                        lambda: Influence(entry.model, w.data, method=method, params=head, damping=DAMPING,
                                          progress=False))


@router.get("/api/why")
def why(request: Request, model: str | None = None, image: str | None = None, k: int = 8) -> dict[str, Any]:
    """A background job: the dataset images whose removal would most raise (helpful) or lower (harmful) the loss
    of this image's predicted class (influence functions on the classifier head, Koh & Liang 2017)."""
    w = ws(request)
    entry = w.entry(model)
    x = w.image(image, entry)
    top = min(MAX_K, len(w.data))
    if not 1 <= k <= top:
        raise InputError(f"k: expected 1..{top} images per list, got {k}")
    _head(w, entry)
    if int(w.data.labels.max()) >= len(entry.classes):
        raise InputError(f"data: the dataset's labels name {len(w.data.classes)} classes but {entry.id} has "
                         f"{len(entry.classes)}; influence needs training labels of the model's own classes: "
                         "start explore with --data of those classes")
    key = w.cache.key("why", entry.digest, w.data_spec, len(w.data), _image_key(w, image), k, DAMPING)

    def work(job) -> dict[str, Any]:
        stored = w.cache.load_json(key)
        if stored is not None:
            return stored
        job.step(0.05, "fitting the head's influence on the dataset")
        with entry.lock:
            est = _estimator(w, entry)
            job.step(0.7, "scoring the dataset images")
            result = est.scores(x[None].to(entry.device), fragility=False)
        scores = result.scores[0].float().cpu()

        def items(index: torch.Tensor) -> list[dict[str, Any]]:
            labels = w.data.labels
            return [{"index": int(i), "score": float(scores[i]), "label": int(labels[i]),
                     "class": w.data.classes[int(labels[i])], "image": f"/api/thumb/{int(i)}.png"} for i in index]

        pred = int(result.query_predictions[0]) if result.query_predictions is not None else None
        value = {"helpful": items(result.helpful(0, k)), "harmful": items(result.harmful(0, k)),
                 "method": result.method, "params": list(result.params), "damping": result.damping, "n": len(w.data),
                 "target": None if pred is None else {"index": pred, "class": entry.classes[pred]},
                 "warnings": list(result.warnings)}
        return w.cache.store_json(key, value)

    return w.jobs.submit("why", key, work).view()


# ---------------------------------------------------------------------------------------------- report
class _Table(HTMLParser):
    """The text of an HTML table's cells, row by row (everything else, markup and scripts, is dropped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[tuple[str, str]]] = []
        self._cell: list[str] | None = None
        self._tag = "td"
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            if not self.rows:
                self.rows.append([])
            self._cell, self._tag = [], tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append((self._tag, " ".join("".join(self._cell).split())))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._skip:
            self._cell.append(data)


def _table(value: Any) -> str:
    """A table from ``html_table`` (HTML whose cell text is kept and escaped) or rows of cells, as safe HTML."""
    if value in (None, "", []):
        return ""
    if isinstance(value, str):
        parser = _Table()
        parser.feed(value[:200_000])
        rows = [r for r in parser.rows if r]
    elif isinstance(value, list) and all(isinstance(r, list) for r in value):
        rows = [[("th" if i == 0 else "td", str(c)) for c in r] for i, r in enumerate(value)]
    else:
        raise InputError("html_table: expected an HTML table or a list of rows")
    body = "".join("<tr>" + "".join(f"<{t}>{html.escape(c)}</{t}>" for t, c in r) + "</tr>" for r in rows[:500])
    return f"<table>{body}</table>" if body else ""


def _images(value: Any, limit: int) -> list[str]:
    """The panel's images: data URLs of PNG/JPEG/GIF/WebP pictures, checked (nothing else is embedded)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_IMAGES:
        raise InputError(f"images: expected a list of at most {MAX_IMAGES} data URLs (data:image/png;base64,...)")
    out, total = [], 0
    for i, url in enumerate(value):
        head, _, payload = url.partition(",") if isinstance(url, str) else ("", "", "")
        mime = head[5:].split(";")[0] if head.startswith("data:") else ""
        if mime not in IMAGE_TYPES or not head.endswith(";base64"):
            raise InputError(f"images: item {i} is not a data URL of a PNG or JPEG image (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"images: item {i} is not valid base64") from None
        total += len(raw)
        if total > limit:
            raise InputError(f"images: over {limit:,} bytes in all; send smaller pictures")
        out.append(f"data:{mime};base64," + base64.b64encode(raw).decode("ascii"))
    return out


def _text(value: Any, name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name}: expected text, got {type(value).__name__}")
    return value[:limit]


def _page(title: str) -> str:
    from ..core.version import __version__

    css = (Path(__file__).parent.parent / "report" / "templates" / "report.css").read_text()
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n<header>\n"
            "  <div class=\"brand\">underhood</div>\n  <h1>Explorer notes</h1>\n"
            f"  <p class=\"meta\">panels saved from <code>underhood explore</code> &middot; underhood "
            f"{html.escape(__version__)}</p>\n</header>\n<main>\n{MARK}\n</main>\n"
            "<footer>Self-contained: every picture is embedded; nothing is fetched from the network.</footer>\n"
            "</body>\n</html>\n")


def _state(value: str) -> str:
    """The page state as a local query (``?model=...&layer=...``): no host, so the file names no URL."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return ""
    query = parts.query or (value.lstrip("?") if "://" not in value else "")
    return f"?{query}" if query else ""


def _panel(number: int, title: str, caption: str, state: str, images: list[str], table: str) -> str:
    pictures = "".join(f'<img src="{u}" alt="{html.escape(title)} ({i + 1})"> ' for i, u in enumerate(images))
    created = time.strftime("%Y-%m-%d %H:%M:%S")
    parts = [f'<section class="panel" id="panel-{number}">', f"<h2>{html.escape(title)}</h2>"]
    if pictures:
        parts.append(f"<figure>{pictures}")
        parts.append(f"<figcaption>{html.escape(caption)}</figcaption></figure>" if caption else "</figure>")
    elif caption:
        parts.append(f"<p>{html.escape(caption)}</p>")
    parts.append(table)
    meta = f"saved {created}" + (f" &middot; explorer state <code>{html.escape(state)}</code>" if state else "")
    parts.append(f'<p class="timing">{meta}</p></section>')
    return "\n".join(p for p in parts if p) + "\n"


@router.post("/api/report")
def report(request: Request, body: dict = Body(...)) -> dict[str, Any]:
    """Append the current panel (title, caption, pictures, a table, the page state) to ``explorer-report.html`` in
    the output folder: one self-contained file (pictures embedded, all text escaped), written atomically."""
    from ..core.io import write_text

    w = ws(request)
    title = _text(body.get("title"), "title", 300).strip()
    if not title:
        raise InputError("title: give the panel a title")
    caption = _text(body.get("caption"), "caption", 5000)
    state = _state(_text(body.get("state"), "state", 4000))
    images = _images(body.get("images"), w.upload_limit)
    table = _table(body.get("html_table", body.get("table")))
    path = w.out / REPORT
    with _report_lock:
        page = path.read_text(encoding="utf-8") if path.is_file() else ""
        if MARK not in page:
            page = _page("underhood explorer notes")
        panels = page.count('<section class="panel"') + 1
        page = page.replace(MARK, _panel(panels, title, caption, state, images, table) + MARK, 1)
        write_text(path, page)
    return {"path": str(path), "url": f"/files/{REPORT}", "panels": panels}

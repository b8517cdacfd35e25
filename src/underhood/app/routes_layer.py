"""The layer view and the unit panel: all channels of a layer, one unit's map, pattern, top images and
activation-maximisation image (DeepVis, Yosinski et al. 2015).

Everything is read through the library: feature maps with :func:`underhood.activations.maps.maps`
(token and channels-last layers as ``[C, h, w]``, the layer table's reading), receptive-field boxes
with :func:`underhood.activations.patches.boxes`, patterns with ``unit_gradients`` drawn by
:func:`underhood.viz.units.pattern_image`, the dataset's top images with the streaming top-k of
``patches.scan`` / ``patches.merge`` in a background job, and the optimised image with
:func:`underhood.synthesis.render.render`. Activations of ``(model, image, layer)`` are cached in
memory, so switching layers and selecting units only draws.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request

from ..core.errors import InputError, LayerError, ModelError
from .jobs import done_view
from .pictures import colour, data_url, image_array, image_png, png, sprite, upsample
from .routes_core import ws
from .workspace import Entry, Workspace

router = APIRouter()

SCALES = ("own", "shared")
RULES = ("guided", "deconvnet", "gradient")
CHUNK = 256          # images per step of the top-k scan (the lock is taken per chunk)
PICTURE = 256        # the unit map is drawn at least this many pixels on its longer side
PATCH = 72           # top patches are drawn about this many pixels wide
STEPS = 96           # activation maximisation: default steps (at LR: higher objective than 128 at 0.1, faster)
LR = 0.2
MAX_STEPS = 1024
MAX_K = 64
BOX_COLOUR = (255, 70, 60)


# ---------------------------------------------------------------------------------------------- reading a layer
def reading(entry: Entry, layer: str) -> dict[str, Any]:
    """How the library reads ``layer``: the layer table's layout, grid and prefix tokens (``{}`` for vectors).

    Raises :class:`NotFound` for an unknown layer and a 400 for an output that is neither a map
    (NCHW, NHWC, tokens on a grid) nor a vector ``[N, C]``.
    """
    row = entry.layer(layer)
    shape = tuple(row.output_shape or ())
    if not shape:
        raise LayerError(f"layer: {layer!r} has no tensor output; pick another layer")
    if row.layout is None:
        if len(shape) == 1:
            return {}
        raise InputError(f"layer: {layer!r} outputs {list(shape)}, which is neither a map nor a vector of units "
                         "(e.g. a token sequence that forms no patch grid); pick another layer")
    out: dict[str, Any] = {"layout": row.layout, "grid": tuple(row.grid) if row.grid else None}
    if row.layout == "tokens":
        out["tokens"] = int(row.prefix)
    return out


def read(entry: Entry, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The activations of one image ``x [C, H, W]`` at ``layer``: ``[C, h, w]`` (a map) or ``[C]`` (a vector),
    float32 on the CPU (they are drawn). Runs the model under ``entry.lock``."""
    from ..activations.maps import maps

    how = reading(entry, layer)
    try:
        with entry.lock:
            a = maps(entry.model, x[None].to(entry.device), layer, **how)[layer][0]
    except LayerError as exc:
        raise InputError(f"layer: {layer!r} cannot be shown as a grid of units ({exc})") from exc
    if a.ndim not in (1, 3):
        raise InputError(f"layer: {layer!r} gives {list(a.shape)} per image; pick a layer with channels")
    return a.detach().float().cpu()


def _image_key(w: Workspace, image: str | None) -> str:
    ref = image or "data:0"
    return f"{w.data_spec}/{ref}" if ref.startswith("data:") else ref


def activations(w: Workspace, entry: Entry, image: str | None, layer: str) -> torch.Tensor:
    """:func:`read` of a referenced image, cached in memory per (model, image, layer)."""
    reading(entry, layer)  # 404 / 400 before any work
    key = w.cache.key("acts", entry.digest, _image_key(w, image), layer)
    cached = w.cache.recall(key)
    if cached is not None:
        return cached
    return w.cache.remember(key, read(entry, w.image(image, entry), layer))


def _as_maps(a: torch.Tensor) -> torch.Tensor:
    return a[:, None, None] if a.ndim == 1 else a


def _r(values: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in values]


# ---------------------------------------------------------------------------------------------- the layer view
def layer_body(a: torch.Tensor, layer: str, scale: str = "own", *, difference: bool = False) -> dict[str, Any]:
    """The ``/api/layer`` answer for activations ``a`` ``[C, h, w]`` or ``[C]``: one sprite of all channels.

    Tiles of a vector (or a 1x1 map) are single values, so they share one scale (``scale`` says
    which was used). A difference is drawn on a symmetric scale with a diverging colormap, and
    ``order`` ranks units by their largest absolute change.
    """
    if scale not in SCALES:
        raise InputError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    m = _as_maps(a)
    c, h, w = m.shape
    if h * w == 1:
        scale = "shared"
    flat = m.reshape(c, -1)
    top, mean = flat.max(1).values, flat.mean(1)
    rank = flat.abs().max(1).values if difference else top
    order = torch.argsort(rank, descending=True, stable=True)
    picture, geometry = sprite(m.numpy(), scale=scale, cmap="RdBu_r" if difference else "viridis",
                               symmetric=difference)
    return {"layer": layer, "units": c, "grid": [h, w], "vector": a.ndim == 1, "sprite": data_url(picture),
            **geometry, "max": _r(top), "mean": _r(mean), "order": [int(i) for i in order], "scale": scale,
            "difference": difference}


def layer_view(w: Workspace, entry: Entry, image: str | None, layer: str, scale: str = "own",
               minus: str | None = None) -> dict[str, Any]:
    """All channels of ``layer`` on ``image`` (``minus``: this model's activations minus another model's)."""
    if scale not in SCALES:
        raise InputError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    a = activations(w, entry, image, layer)
    other = None
    if minus:
        other = w.entry(minus)
        if not any(r.name == layer for r in other.table):
            raise InputError(f"minus: {other.id} has no layer {layer!r}; compare models with the same layers "
                             f"(e.g. shapes and shapes-robust)")
        b = activations(w, other, image, layer)
        if b.shape != a.shape:
            raise InputError(f"minus: {layer!r} is {list(a.shape)} in {entry.id} but {list(b.shape)} in {other.id}; "
                             "the difference needs the same layer shape in both models")
        a = a - b
    body = layer_body(a, layer, scale, difference=other is not None)
    body.update(model=entry.id, image=image or "data:0", minus=other.id if other is not None else None)
    return body


@router.get("/api/layer")
def layer(request: Request, model: str | None = None, image: str | None = None, layer: str = "",
          scale: str = "own", minus: str | None = None) -> dict[str, Any]:
    """All channels of a layer for the current image as one sprite (own or shared scale), or its difference
    with another model (``minus=MODEL``, a diverging colormap on a symmetric scale)."""
    w = ws(request)
    entry = w.entry(model)
    return layer_view(w, entry, image, _layer_name(entry, layer), scale, minus)


def _layer_name(entry: Entry, layer: str) -> str:
    if not layer:
        raise InputError("layer: give a layer name (GET /api/model lists them; default_layer is a good start)")
    entry.layer(layer)
    return layer


# ---------------------------------------------------------------------------------------------- the unit panel
def box_grid(w: Workspace, entry: Entry, layer: str) -> tuple[torch.Tensor, list[int] | None]:
    """Receptive-field boxes ``[h, w, 4]`` (top, left, bottom, right; input pixels) of every position of
    ``layer``, from :func:`underhood.activations.patches.boxes`, and the field size; cached per layer."""
    from ..activations.patches import boxes

    key = w.cache.key("boxes", entry.digest, layer)

    def compute() -> tuple[torch.Tensor, list[int] | None]:
        how = reading(entry, layer)
        grid = tuple(how.get("grid") or (1, 1))
        ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        with entry.lock:
            found, field = boxes(entry.model, layer, torch.stack([ys, xs], -1), tuple(entry.input_size), **how)
        return found.long(), list(field) if field is not None else None

    return w.cache.memo(key, compute)


def strongest(m: torch.Tensor) -> tuple[float, list[int] | None]:
    """The maximum of one unit's map ``[h, w]`` and its first position (row-major, as the top-k scan picks it)."""
    if m.ndim == 0:
        return float(m), None
    value, where = m.flatten().max(0)
    return float(value), [int(where) // m.shape[-1], int(where) % m.shape[-1]]


def pattern_window(box: list[int], size: tuple[int, int]) -> list[int] | None:
    """``box`` (top, left, bottom, right) grown about its centre to at least a quarter of the image side and
    kept inside the image; ``None`` when that is the whole image anyway."""
    out = []
    for lo, hi, side in ((box[0], box[2], size[0]), (box[1], box[3], size[1])):
        want = min(side, max(hi - lo, -(-side // 4)))
        centre = (lo + hi) / 2
        start = int(round(min(max(centre - want / 2, 0), side - want)))
        out.append((start, start + want))
    (top, bottom), (left, right) = out
    return None if (bottom - top, right - left) == tuple(size) else [top, left, bottom, right]


def _scale(h: int, w: int, side: int = PICTURE) -> int:
    return max(1, side // max(h, w))


def _draw_box(picture: np.ndarray, box: list[int], s: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(picture)
    top, left, bottom, right = box
    hh, ww = picture.shape[:2]
    y0, x0 = max(0, top * s), max(0, left * s)
    y1, x1 = min(hh, bottom * s) - 1, min(ww, right * s) - 1
    if y1 > y0 and x1 > x0:
        ImageDraw.Draw(img).rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=max(1, s // 2))
    return np.asarray(img)


def unit_picture(x: torch.Tensor, m: torch.Tensor | None, box: list[int] | None) -> bytes:
    """One unit's map ``[h, w]`` upsampled over a grey copy of the image ``x [C, H, W]`` (viridis, blended),
    with its receptive-field box drawn; the plain image for a vector unit (``m`` is ``None``)."""
    _, hh, ww = x.shape
    s = _scale(hh, ww)
    base = image_array(x, s)
    if m is None:
        return png(base)
    grey = image_array(x.float().mean(0, keepdim=True), s).astype(np.float32)
    values = upsample(m.numpy(), (hh * s, ww * s))
    lo, hi = float(values.min()), float(values.max())
    heat = colour(values, lo, hi)
    # strong positions cover the image, weak ones let it show through
    alpha = (0.2 + 0.65 * np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0, 1))[..., None]
    picture = (alpha * heat + (1 - alpha) * grey).round().astype(np.uint8)
    if box is not None:
        picture = _draw_box(picture, box, s)
    return png(picture)


def unit_view(w: Workspace, entry: Entry, image: str | None, layer: str, unit: int) -> dict[str, Any]:
    """The ``/api/unit`` answer (see the route)."""
    a = activations(w, entry, image, layer)
    u = entry.unit(layer, unit)
    m = a[u]
    value, argmax = strongest(m)
    box = field = None
    if argmax is not None:
        grid, field = box_grid(w, entry, layer)
        box = [int(v) for v in grid[argmax[0], argmax[1]]]
    x = w.image(image, entry)
    body = {"model": entry.id, "layer": layer, "unit": u, "value": round(value, 5), "mean": round(float(m.mean()), 5),
            "argmax": argmax, "box": box, "field": field, "input_size": list(entry.input_size[-2:]),
            "map": data_url(unit_picture(x, m if m.ndim else None, box))}
    return body


@router.get("/api/unit")
def unit(request: Request, model: str | None = None, image: str | None = None, layer: str = "",
         unit: int = 0) -> dict[str, Any]:
    """One unit on the current image: its maximum and mean, the strongest position and its receptive-field
    box in input pixels, and its feature map drawn over the image (``argmax`` and ``box`` are ``null`` for
    a vector layer)."""
    w = ws(request)
    entry = w.entry(model)
    return unit_view(w, entry, image, _layer_name(entry, layer), unit)


def _rule(rule: str) -> str:
    if rule not in RULES:
        raise InputError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
    return rule


@router.get("/api/unit/pattern")
def pattern(request: Request, model: str | None = None, image: str | None = None, layer: str = "",
            unit: int = 0, rule: str = "guided") -> dict[str, Any]:
    """The unit's guided-backprop / deconvnet pattern on the current image (the gradient of the unit at its
    strongest position under the ReLU rule, ``activations.patches.unit_gradients``), drawn as
    ``viz.units.pattern_image`` draws it (mid-grey is 0), cut to a window around the unit's receptive field
    (``window``: the field grown to at least a quarter of the image side, so a small field is seen up close
    and a large one whole; ``None`` for a vector unit, drawn over the whole image)."""
    from ..activations.patches import crop, unit_gradients
    from ..viz.units import pattern_image

    w = ws(request)
    entry = w.entry(model)
    layer = _layer_name(entry, layer)
    rule = _rule(rule)
    a = activations(w, entry, image, layer)
    u = entry.unit(layer, unit)
    key = w.cache.key("pattern", entry.digest, _image_key(w, image), layer, u, rule)

    def compute() -> dict[str, Any]:
        _, argmax = strongest(a[u])
        position = torch.tensor([argmax or [0, 0]])
        x = w.image(image, entry)
        used, note = rule, None
        with entry.lock:
            try:
                grads = unit_gradients(entry.model, x[None].to(entry.device), layer, torch.tensor([u]), position,
                                       rule=rule, batch_size=1, **reading(entry, layer))
            except ModelError:  # no ReLU in forward (GELU transformers): the rule has nothing to act on
                used = "gradient"
                note = f"the model runs no ReLU, so the {rule} rule has nothing to act on: this is the plain gradient"
                grads = unit_gradients(entry.model, x[None].to(entry.device), layer, torch.tensor([u]), position,
                                       rule=used, batch_size=1, **reading(entry, layer))
        window = None
        if argmax is not None:
            grid, _ = box_grid(w, entry, layer)
            window = pattern_window([int(v) for v in grid[argmax[0], argmax[1]]], tuple(x.shape[-2:]))
        g = grads[0] if window is None else crop(grads[0], window, fill=0.0)
        picture = pattern_image(g)
        return {"model": entry.id, "layer": layer, "unit": u, "rule": used, "note": note, "argmax": argmax,
                "window": window,
                "image": data_url(image_png(picture, _scale(*picture.shape[-2:])))}

    return w.cache.memo(key, compute)


# ---------------------------------------------------------------------------------------------- top images (job)
def _state_json(state: Any, scanned: int, total: int, layer: str, k: int) -> dict[str, Any]:
    return {"layer": layer, "k": k, "scanned": scanned, "total": total, "channels": state.channels.tolist(),
            "values": state.values.tolist(), "index": state.index.tolist(), "position": state.position.tolist()}


def _top_key(w: Workspace, entry: Entry, layer: str, k: int) -> str:
    return w.cache.key("top", entry.digest, w.data_spec, len(w.data), layer, k)


def top_scan(w: Workspace, entry: Entry, layer: str, k: int) -> tuple[Any, dict | None]:
    """``(job, None)``: the background scan of the whole dataset for every unit of ``layer``, or
    ``(None, state)`` when its final state is cached on disk."""
    from ..activations.patches import merge, scan

    key = _top_key(w, entry, layer, k)
    stored = w.cache.load_json(key)
    if stored is not None:
        return None, stored
    how = reading(entry, layer)
    images = w.images_for(entry)

    def work(job) -> dict[str, Any]:
        n, state = len(images), None
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            job.step(start / n, f"scanning images {start}..{stop - 1} of {n}")
            with entry.lock:  # per chunk: the page's own requests get the model in between
                part = scan(entry.model, images, layer, k, start=start, stop=stop, **how)
            state = part if state is None else merge([state, part], k)
            job.step(stop / n, f"scanned {stop} of {n} images", _state_json(state, stop, n, layer, k))
        return w.cache.store_json(key, _state_json(state, n, n, layer, k))

    return w.jobs.submit("top", key, work), None


def _patch(w: Workspace, index: int, box: list[int]) -> str:
    from ..activations.patches import crop

    def compute() -> str:
        cut = crop(w.data.images[index], box)
        return data_url(image_png(cut, _scale(*cut.shape[-2:], side=PATCH)))

    return w.cache.memo(w.cache.key("patch", w.data_spec, index, box), compute)


def top_unit(w: Workspace, entry: Entry, state: dict | None, layer: str, u: int) -> dict[str, Any] | None:
    """One unit's view of a (partial) top-k state: its images, values, boxes and patches."""
    if not state:
        return None
    row = state["channels"].index(u)
    grid, _ = box_grid(w, entry, layer)
    items = []
    for value, index, (y, x) in zip(state["values"][row], state["index"][row], state["position"][row]):
        box = [int(v) for v in grid[y, x]]
        items.append({"index": int(index), "value": round(float(value), 5), "box": box,
                      "image": f"/api/thumb/{int(index)}.png", "patch": _patch(w, int(index), box)})
    return {"unit": u, "layer": layer, "k": state["k"], "scanned": state["scanned"], "total": state["total"],
            "items": items}


def _k(w: Workspace, k: int) -> int:
    most = min(MAX_K, len(w.data))
    if not 1 <= k <= most:
        raise InputError(f"k: expected 1..{most} top images per unit, got {k}")
    return k


@router.get("/api/unit/top")
def top(request: Request, model: str | None = None, layer: str = "", unit: int = 0, k: int = 9) -> dict[str, Any]:
    """The unit's top-``k`` dataset images and receptive-field patches, from a background scan of the whole
    dataset for all units of the layer (one job per layer: later units are instant). Poll this route (or
    ``/api/jobs/{job}``): ``result`` fills in as the scan goes; the final state is cached on disk."""
    w = ws(request)
    entry = w.entry(model)
    layer = _layer_name(entry, layer)
    u = entry.unit(layer, unit)
    job, stored = top_scan(w, entry, layer, _k(w, k))
    if job is None:
        return done_view("top", top_unit(w, entry, stored, layer, u))
    view = job.view()
    view["result"] = top_unit(w, entry, view["result"], layer, u)
    return view


@router.get("/api/unit/top/patterns")
def top_patterns(request: Request, model: str | None = None, layer: str = "", unit: int = 0, k: int = 9,
                 rule: str = "guided") -> dict[str, Any]:
    """The unit's pattern in each of its top-``k`` patches (``activations.patches.finish`` on the finished scan)."""
    from ..activations.patches import Partial, finish
    from ..viz.units import pattern_image

    w = ws(request)
    entry = w.entry(model)
    layer = _layer_name(entry, layer)
    u = entry.unit(layer, unit)
    rule, k = _rule(rule), _k(w, k)
    state = w.cache.load_json(_top_key(w, entry, layer, k))
    if state is None:
        raise InputError(f"unit: the top-{k} scan of {layer!r} has not finished; GET /api/unit/top first "
                         "and wait until it is done")
    key = w.cache.key("top-patterns", entry.digest, w.data_spec, layer, u, k, rule)

    def compute() -> dict[str, Any]:
        row = state["channels"].index(u)
        part = Partial(torch.tensor([state["values"][row]]), torch.tensor([state["index"][row]]),
                       torch.tensor([state["position"][row]]), torch.tensor([u]))
        with entry.lock:
            found = finish(entry.model, w.images_for(entry), layer, part, pattern=rule, batch_size=k,
                           **reading(entry, layer))
        items = []
        for index, p in zip(found.index[0], found.patterns[0]):
            picture = pattern_image(p)
            items.append({"index": int(index),
                          "pattern": data_url(image_png(picture, _scale(*picture.shape[-2:], side=PATCH)))})
        return {"unit": u, "layer": layer, "rule": found.rule, "note": found.info.get("pattern"), "items": items}

    return w.cache.memo(key, compute)


# ---------------------------------------------------------------------------------------------- actmax (job)
def private_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of the model for a long optimisation, so the page keeps the original; ``None`` when it cannot
    be copied (then the job holds the lock for the whole render)."""
    try:
        return copy.deepcopy(model)
    except Exception:  # a module holding something uncopyable (a file handle, a lock)
        return None


@router.get("/api/unit/actmax")
def actmax(request: Request, model: str | None = None, layer: str = "", unit: int = 0,
           steps: int = STEPS, cached: bool = False) -> dict[str, Any]:
    """Activation maximisation of the unit's channel (``synthesis.render`` of ``objectives.channel``, the
    library's defaults at the model's input size), computed in the background on first request and
    cached on disk: ``result`` is ``{image, value, start, steps}``. With ``cached=true`` nothing is
    started: the stored result, or ``status: "missing"``."""
    from ..synthesis.objectives import channel
    from ..synthesis.render import render

    w = ws(request)
    entry = w.entry(model)
    layer = _layer_name(entry, layer)
    reading(entry, layer)
    u = entry.unit(layer, unit)
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps: expected 1..{MAX_STEPS} optimisation steps, got {steps}")
    key = w.cache.key("actmax", entry.digest, layer, u, steps, LR, w.seed)
    stored = w.cache.load_json(key)
    if stored is not None:
        return done_view("actmax", stored)
    if cached:
        return {"job": None, "kind": "actmax", "status": "missing", "progress": 0.0, "message": "not rendered yet",
                "error": None, "result": None}

    def work(job) -> dict[str, Any]:
        job.step(0.0, "copying the model")
        with entry.lock:
            own = private_copy(entry.model)
        job.step(0.05, f"optimising the image for {steps} steps")
        objective = channel(layer, u)
        options = {"size": tuple(entry.input_size), "steps": steps, "lr": LR, "seed": w.seed}
        if own is None:
            with entry.lock:
                result = render(entry.model, objective, **options)
        else:
            result = render(own, objective, **options)
        job.step(1.0, "done")
        picture = result.images[0]
        return w.cache.store_json(key, {
            "layer": layer, "unit": u, "steps": steps, "value": round(float(result.final.flatten()[0]), 5),
            "start": round(float(result.start.flatten()[0]), 5),
            "image": data_url(image_png(picture, _scale(*picture.shape[-2:])))})

    return w.jobs.submit("actmax", key, work).view()

"""The projector, nearest neighbours and the live webcam.

- ``GET /api/projector``: the dataset laid out in 2-D by a layer's pooled features (PCA, t-SNE or UMAP;
  :func:`underhood.activations.embed.features` in chunks, then :func:`~underhood.activations.embed.embed_features`)
  in a background job; the layout is cached on disk, the features in memory and on disk per layer.
- ``GET /api/neighbors``: the dataset images nearest to an image in the layer's own feature space
  (the same features, :func:`underhood.activations.neighbors.distances`; AlexNet fig. 4).
- ``WS /api/live``: webcam frames in, top-5 classes and the layer's sprite (as ``/api/layer``) out.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Request, WebSocket

from ..activations.embed import INPUT, METHODS
from ..core.errors import DataError, InputError, UnderhoodError
from .hosts import allowed
from .jobs import done_view
from .routes_core import model_view, predict, ws
from .workspace import Entry, Workspace

router = APIRouter()

CHUNK = 512          # images per feature step of the projector job (the lock is taken per chunk)
POOL = "avg"         # a map becomes a vector of channel means (activations.embed.features)
MIN_POINTS = 4       # embed_features needs at least this many images
MAX_K = 64           # neighbours per request
DIGITS = 5           # significant digits of the coordinates sent to the page
TRUST_ROWS = 1000    # the layout's trustworthiness is estimated over this many sampled points
TRUST_VALUES = 2**25  # ... and left out (null) above this many feature values (n * D)
UMAP_HINT = "method: 'umap' needs umap-learn; pip install 'underhood[umap]', or pick 'tsne' or 'pca'"


# ---------------------------------------------------------------------------------------------- checks
def layer_name(w: Workspace, entry: Entry, layer: str | None) -> str:
    """The layer asked for (default: ``GET /api/model``'s default layer); ``"input"`` is the pixels; 404 otherwise."""
    if not layer:
        return model_view(w, entry)["default_layer"]
    if layer != INPUT:
        entry.layer(layer)
    return layer


def _method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise InputError(UMAP_HINT)
    return method


def _count(w: Workspace, n: int | None) -> int:
    total = len(w.data)
    if n is None:
        return total
    if not MIN_POINTS <= n <= total:
        raise InputError(f"n: expected {MIN_POINTS}..{total} images to lay out (the dataset has {total}), got {n}")
    return n


# ---------------------------------------------------------------------------------------------- features
def _features_key(w: Workspace, entry: Entry, layer: str) -> str:
    return w.cache.key("features", entry.digest, w.data_spec, len(w.data), layer, POOL)


def layer_features(w: Workspace, entry: Entry, layer: str, n: int, job: Any = None,
                   share: float = 1.0) -> torch.Tensor:
    """``[n, D]`` pooled features of the first ``n`` dataset images at ``layer``
    (:func:`underhood.activations.embed.features` in chunks of :data:`CHUNK`, ``entry.lock`` per chunk).

    Computed features are kept per layer (memory and disk), so a longer prefix extends a shorter one
    and the neighbours reuse the projector's pass. ``job``: its ``step`` runs between chunks (progress
    up to ``share``; it raises when the job was cancelled).
    """
    from ..activations.embed import features

    images = w.images_for(entry)
    if layer == INPUT:  # the pixels, flattened, as features() gives them: a view, nothing to compute or keep
        return images[:n].flatten(1).float().cpu()
    key = _features_key(w, entry, layer)
    done = w.cache.load_tensor(key)
    have = 0 if done is None else len(done)
    parts = [] if done is None else [done]
    for start in range(have, n, CHUNK):
        stop = min(n, start + CHUNK)
        if job is not None:
            job.step(share * start / n, f"features of images {start}..{stop - 1} of {n} at {layer}")
        with entry.lock:
            parts.append(features(entry.model, images, layer, pool=POOL, start=start, stop=stop)[layer])
        if job is not None:  # a cancel mid-pass keeps what is done (in memory): the next request goes on from there
            parts = [w.cache.remember(key, torch.cat(parts))]
    if have < n:
        done = w.cache.store_tensor(key, torch.cat(parts))
    return done[:n]


def _probe(w: Workspace, entry: Entry, layer: str) -> None:
    """One image through :func:`features` at ``layer``: a layer it cannot pool fails here, as a 4xx, before any job."""
    from ..activations.embed import features

    images = w.images_for(entry)
    if layer == INPUT or w.cache.load_tensor(_features_key(w, entry, layer)) is not None:
        return
    with entry.lock:
        features(entry.model, images, layer, pool=POOL, start=0, stop=1)


# ---------------------------------------------------------------------------------------------- the projector
def _round(values: torch.Tensor) -> list[float]:
    return [float(f"{float(v):.{DIGITS}g}") for v in values]


def projection(w: Workspace, entry: Entry, layer: str, method: str, n: int, job: Any = None) -> dict[str, Any]:
    """The projector's answer: 2-D coordinates of the first ``n`` dataset images at ``layer`` and what colours them.

    Point ``i`` is dataset image ``index[i]``; ``label``, ``pred`` and ``correct`` come from
    :meth:`Workspace.predictions`. ``knn`` and ``trust`` are the layout's leave-one-out ``k``-NN accuracy and
    trustworthiness (:mod:`underhood.activations.embed`; trust estimated over :data:`TRUST_ROWS` points);
    ``cpu_s`` is the CPU time of the layout itself.
    """
    from ..activations.embed import embed_features, knn_accuracy, trustworthiness

    feats = layer_features(w, entry, layer, n, job, share=0.5 if method == "pca" else 0.3)
    labels = w.data.labels[:n].long().cpu()
    if job is not None:
        job.step(None, f"{method} of {n} points ({feats.shape[1]} features)")
    started = time.process_time()
    xy = embed_features({layer: feats}, method, labels=labels, seed=w.seed, scores=False).coords[layer]
    seconds = time.process_time() - started
    if job is not None:
        job.step(0.9, "scoring the layout")
    # embed_features' scores, with the trustworthiness estimated on a sample of points (O(n^2) in full)
    k = min(10, (n - 1) // 2)
    knn = knn_accuracy(xy, labels, k)
    # (not for very wide features, e.g. the pixels of many images: it works on a float64 copy of them)
    trust = trustworthiness(feats, xy, k, max_rows=TRUST_ROWS, seed=w.seed) if feats.numel() <= TRUST_VALUES \
        else None
    if job is not None:
        job.step(0.95, "colouring the points")
    pred = w.predictions(entry)[:n].argmax(-1)
    return {"layer": layer, "method": method, "n": n, "features": int(feats.shape[1]), "pool": POOL,
            "x": _round(xy[:, 0]), "y": _round(xy[:, 1]), "index": list(range(n)),
            "label": [int(v) for v in labels], "pred": [int(v) for v in pred],
            "correct": [bool(v) for v in pred == labels], "classes": list(w.data.classes),
            "pred_classes": list(entry.classes), "knn": round(knn, 4),
            "trust": None if trust is None else round(trust, 4), "k": k,
            "cpu_s": round(seconds, 3)}


@router.get("/api/projector")
def projector(request: Request, model: str | None = None, layer: str | None = None, method: str = "pca",
              n: int | None = None) -> dict[str, Any]:
    """The first ``n`` dataset images (default: all) laid out in 2-D by ``layer``'s pooled features, as a
    background job (poll ``/api/jobs/{job}``; ``DELETE`` cancels between feature chunks). Cached on disk."""
    w = ws(request)
    entry = w.entry(model)
    name = layer_name(w, entry, layer)
    method = _method(method)
    count = _count(w, n)
    key = w.cache.key("projector", entry.digest, w.data_spec, len(w.data), name, method, count, POOL, w.seed)
    stored = w.cache.load_json(key)
    if stored is not None:
        return done_view("projector", stored)
    _probe(w, entry, name)

    def work(job) -> dict[str, Any]:
        return w.cache.store_json(key, projection(w, entry, name, method, count, job))

    return w.jobs.submit("projector", key, work).view()


# ---------------------------------------------------------------------------------------------- neighbours
@router.get("/api/neighbors")
def neighbors(request: Request, model: str | None = None, layer: str | None = None, image: str | None = None,
              k: int = 8) -> dict[str, Any]:
    """The ``k`` dataset images nearest to ``image`` in ``layer``'s pooled features (Euclidean), nearest first.

    Nothing is left out: a dataset image finds itself first, at distance 0.
    """
    from ..activations.embed import features
    from ..activations.neighbors import distances

    w = ws(request)
    entry = w.entry(model)
    name = layer_name(w, entry, layer)
    total = len(w.data)
    if not 1 <= k <= min(MAX_K, total):
        raise InputError(f"k: expected 1..{min(MAX_K, total)} neighbours, got {k}")
    x = w.image(image, entry)
    data = layer_features(w, entry, name, total)
    if (image or "data:0").startswith("data:"):  # a dataset image: its row of the same pass (exactly 0 to itself)
        query = data[int((image or "data:0")[5:])][None]
    else:
        with entry.lock:
            query = features(entry.model, x[None], name, pool=POOL)[name]
    # a stable sort, as activations.neighbors: equal distances keep dataset order
    dist, index = distances(query, data)[0].sort(stable=True)
    labels, classes = w.data.labels, w.data.classes
    items = [{"index": int(i), "distance": round(float(d), 6), "label": int(labels[i]),
              "class": classes[int(labels[i])], "image": f"/api/thumb/{int(i)}.png"}
             for d, i in zip(dist[:k], index[:k])]
    return {"layer": name, "image": image or "data:0", "metric": "euclidean", "items": items}


# ---------------------------------------------------------------------------------------------- live webcam
def decode_frame(w: Workspace, entry: Entry, url: Any, folder: Path) -> torch.Tensor:
    """A frame's ``data:image/...;base64,`` URL -> ``[C, H, W]`` at the model's input size
    (:func:`underhood.data.images.load_image`: alpha, EXIF and decompression-bomb guards included)."""
    from ..data.images import load_image

    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url[:64]:
        raise InputError("image: expected a data URL 'data:image/jpeg;base64,...' (canvas.toDataURL)")
    if len(url) > w.upload_limit * 4 // 3 + 64:
        raise InputError(f"image: the frame is over the {w.upload_limit:,}-byte limit; send it resized to the "
                         "model's input")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise InputError("image: the data URL's base64 does not decode; send canvas.toDataURL() as it is") from None
    path = folder / "frame"
    path.write_bytes(data)
    c, h, width = entry.input_size
    try:
        return load_image(path, size=(h, width), channels=c)[0]
    except DataError:
        raise InputError("image: the frame is not an image Pillow reads; send a PNG or JPEG data URL") from None


def frame_reply(w: Workspace, text: str, count: int, folder: Path) -> dict[str, Any]:
    """The answer to one webcam frame: ``{top, layer, ms, frame}``, or ``{error, frame}``."""
    from . import routes_layer

    started = time.perf_counter()
    frame: Any = count
    try:
        try:
            message = json.loads(text)
        except ValueError:
            raise InputError("frame: expected JSON {model, layer, image, scale}") from None
        if not isinstance(message, dict):
            raise InputError("frame: expected a JSON object {model, layer, image, scale}")
        frame = message.get("frame", count)
        entry = w.entry(message.get("model"))
        name = layer_name(w, entry, message.get("layer"))
        if name == INPUT:
            raise InputError("layer: 'input' has no units to draw; pick a layer of the model")
        x = decode_frame(w, entry, message.get("image"), folder).to(entry.device)
        top = predict(w, entry, x, 5)["top"]
        body = routes_layer.layer_body(routes_layer.read(entry, x, name), name, message.get("scale") or "own")
    except UnderhoodError as exc:
        return {"error": str(exc), "frame": frame}
    except Exception as exc:  # a bug must not close the camera: say it and go on
        return {"error": f"{type(exc).__name__}: {exc}", "frame": frame}
    body["model"] = entry.id
    return {"top": top, "layer": body, "ms": round(1000 * (time.perf_counter() - started), 2), "frame": frame}


def _local(socket: WebSocket) -> bool:
    """Loopback servers take sockets from loopback pages only (a page elsewhere could open one: no same-origin
    rule for websockets, and the server's http middleware does not see them)."""
    if not getattr(socket.app.state, "loopback", False):
        return True
    return allowed(socket.headers.get("host"), socket.headers.get("origin"))


@router.websocket("/api/live")
async def live(socket: WebSocket) -> None:
    """The webcam: each text frame ``{model, layer, image: data URL, scale, frame?}`` gets ``{top, layer, ms,
    frame}``; a bad frame gets ``{error}`` and the socket stays open; a client that leaves is let go quietly."""
    from starlette.concurrency import run_in_threadpool
    from starlette.websockets import WebSocketDisconnect

    if not _local(socket):
        await socket.close(code=1008)
        return
    w = socket.app.state.ws
    await socket.accept()
    count = 0
    with tempfile.TemporaryDirectory(prefix="underhood-live-") as folder:
        try:
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    reply = {"error": "frame: send text JSON {model, layer, image, scale}, not binary", "frame": count}
                else:  # the model runs in a worker thread: the server keeps answering while a frame is read
                    reply = await run_in_threadpool(frame_reply, w, text, count, Path(folder))
                await socket.send_text(json.dumps(reply))
                count += 1
        except (WebSocketDisconnect, RuntimeError):  # closed mid-frame: nothing to answer
            return


__all__ = ["router", "layer_features", "projection", "frame_reply"]

"""The model, the dataset browser, images (upload, thumbnails), predictions and jobs."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from .pictures import image_png
from .workspace import Entry, NotFound, TooLarge, Workspace

router = APIRouter()

THUMB_SCALES = (1, 2, 3, 4)


def ws(request: Request) -> Workspace:
    return request.app.state.ws


def png_response(data: bytes, *, cache: bool = True) -> Response:
    headers = {"Cache-Control": "max-age=3600" if cache else "no-store"}
    return Response(data, media_type="image/png", headers=headers)


def layer_row(entry: Entry, row: Any) -> dict[str, Any]:
    spatial = row.grid is not None and row.output_shape is not None and row.layout is not None
    return {"name": row.name, "type": row.type, "shape": list(row.output_shape or ()), "params": row.params,
            "rf": list(row.rf) if row.rf else None, "jump": list(row.jump) if row.jump else None,
            "start": list(row.start) if row.start else None, "layout": row.layout,
            "grid": list(row.grid) if row.grid else None, "spatial": bool(spatial),
            "units": entry.channels(row.name) if row.output_shape else 0, "stage": row.name in entry.stages}


def model_view(w: Workspace, entry: Entry) -> dict[str, Any]:
    """What ``GET /api/model`` answers: name, classes, input size and the layer table."""
    rows = [layer_row(entry, r) for r in entry.table if r.output_shape]
    default = entry.stages[-1] if entry.stages else next((r["name"] for r in rows if r["spatial"]), rows[0]["name"])
    return {"id": entry.id, "name": entry.spec, "classes": entry.classes, "input_size": list(entry.input_size),
            "digest": entry.digest, "device": str(entry.device), "layers": rows, "stages": entry.stages,
            "default_layer": default, "models": list(w.models),
            "data": {"spec": w.data_spec, "size": len(w.data), "classes": list(w.data.classes)}}


@router.get("/api/models")
def models(request: Request) -> dict[str, Any]:
    """The loaded models (the first is the main one)."""
    w = ws(request)
    return {"models": [{"id": e.id, "name": e.spec, "classes": len(e.classes), "input_size": list(e.input_size)}
                       for e in w.models.values()]}


@router.get("/api/model")
def model(request: Request, model: str | None = None) -> dict[str, Any]:
    """The model's name, classes, input size and layers (with shapes, receptive fields and unit counts)."""
    w = ws(request)
    return model_view(w, w.entry(model))


def top_classes(probs: torch.Tensor, classes: list[str], k: int = 5) -> list[dict[str, Any]]:
    values, index = probs.topk(min(k, len(classes)))
    return [{"index": int(i), "class": classes[int(i)], "prob": round(float(v), 5)} for v, i in zip(values, index)]


def predict(w: Workspace, entry: Entry, x: torch.Tensor, k: int = 5) -> dict[str, Any]:
    """Top-``k`` classes and all logits of ``entry`` on one image ``[C, H, W]``."""
    from ..core.batching import logits as batched_logits

    with entry.lock, torch.no_grad():
        logits = batched_logits(entry.model, x[None], 1)[0].cpu()
    probs = logits.softmax(-1)
    return {"top": top_classes(probs, entry.classes, k), "logits": [round(float(v), 4) for v in logits],
            "probs": [round(float(v), 5) for v in probs]}


@router.get("/api/predict")
def predictions(request: Request, model: str | None = None, image: str | None = None,
                k: int = Query(5, ge=1, le=1000)) -> dict[str, Any]:
    """Top-k classes, probabilities and logits of one image (``image=data:12`` or an upload's id)."""
    w = ws(request)
    entry = w.entry(model)
    x = w.image(image, entry)
    out = predict(w, entry, x, k)
    if image and image.startswith("data:"):
        i = int(image[5:])
        out["label"] = {"index": int(w.data.labels[i]), "class": w.data.classes[int(w.data.labels[i])]}
    return out


@router.get("/api/data")
def data(request: Request, model: str | None = None, cls: int | None = None,
         correct: bool | None = None, offset: int = Query(0, ge=0), limit: int = Query(60, ge=1, le=1000)
         ) -> dict[str, Any]:
    """A page of the dataset: filter by true class (``cls``) and by right / wrong prediction (``correct``).

    ``accuracy`` is ``null`` until the background pass over the whole dataset is done (a page is predicted
    on its own meanwhile, so the browser shows at once); filtering by ``correct`` waits for that pass.
    """
    w = ws(request)
    entry = w.entry(model)
    if cls is not None and not 0 <= cls < len(w.data.classes):
        raise NotFound(f"cls: the dataset has classes 0..{len(w.data.classes) - 1}, got {cls}")
    labels = w.data.labels
    keep = torch.ones(len(labels), dtype=torch.bool)
    if cls is not None:
        keep &= labels == cls
    full = w.predictions(entry) if correct is not None else w.predictions_ready(entry)
    if correct is not None:
        pred_all = full.argmax(-1)
        keep &= (pred_all == labels) if correct else (pred_all != labels)
    index = keep.nonzero().flatten()
    page = index[offset:offset + limit]
    probs = w.predictions_of(entry, page) if len(page) else torch.zeros(0, len(entry.classes))
    pred = probs.argmax(-1)
    items = [{"index": int(i), "label": int(labels[i]), "pred": int(p), "correct": bool(p == labels[i]),
              "conf": round(float(q[p]), 4)} for i, p, q in zip(page, pred, probs)]
    accuracy = round(float((full.argmax(-1) == labels).float().mean()), 4) if full is not None else None
    return {"total": len(index), "offset": offset, "items": items, "classes": list(w.data.classes),
            "pred_classes": entry.classes, "accuracy": accuracy}


@router.get("/api/thumb/{index}.png")
def thumb(request: Request, index: int, scale: int = Query(1, ge=1, le=4)) -> Response:
    """Dataset image ``index`` as a PNG (``scale`` x nearest-neighbour), served on demand."""
    w = ws(request)
    key = w.cache.key("thumb", w.data_spec, index, scale)
    data = w.cache.memo(key, lambda: image_png(w.image(f"data:{index}"), scale))
    return png_response(data)


@router.get("/api/image.png")
def image(request: Request, image: str | None = None, model: str | None = None,
          scale: int = Query(1, ge=1, le=8)) -> Response:
    """Any image reference (``data:12`` or an upload's id) as the model sees it, as a PNG."""
    w = ws(request)
    return png_response(image_png(w.image(image, w.entry(model) if model else None), scale))


@router.post("/api/images")
async def upload(request: Request, file: UploadFile = File(...)) -> dict[str, Any]:
    """Upload an image (multipart field ``file``): 413 past the size limit, 415 when it is not an image."""
    w = ws(request)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > w.upload_limit + 64 * 1024:
        raise TooLarge(f"file: {int(length):,} bytes is over the {w.upload_limit:,}-byte limit; send a smaller image")
    data = await file.read(w.upload_limit + 1)
    ref = w.add_image(data, file.filename or "upload")
    c, h, width = w.main.input_size
    return {"id": ref, "image": ref, "size": [c, h, width], "url": f"/api/image.png?image={ref}"}


def _job(request: Request, job_id: str, cancel: bool = False) -> dict[str, Any]:
    jobs = ws(request).jobs
    found = jobs.cancel(job_id) if cancel else jobs.get(job_id)
    if found is None:
        raise NotFound(f"job: no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
    return found.view()


@router.get("/api/jobs/{job_id}")
def job(request: Request, job_id: str) -> dict[str, Any]:
    """A background job's status, progress and (partial) result."""
    return _job(request, job_id)


@router.delete("/api/jobs/{job_id}")
def cancel(request: Request, job_id: str) -> dict[str, Any]:
    """Cancel a running job (it stops at its next chunk)."""
    return _job(request, job_id, cancel=True)

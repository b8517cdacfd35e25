"""The probe strip beside the layer picker: how much of the task each stage's frozen features already solve.

``GET /api/probe`` runs :func:`underhood.transfer.probe` on the explorer's dataset split in two seeded
halves (the probes learn from one and are scored on the other; at most :data:`HALF` images each) in a
background job, on a private copy of the model so the page keeps the model meanwhile; the answer is
cached on disk, so a second visit is instant.
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request

from ..core.errors import InputError
from .jobs import done_view
from .routes_core import ws
from .routes_layer import private_copy
from .workspace import Entry, Workspace

router = APIRouter()

HALF = 500
"""Most images on each side of the split (2 x 500 probe the built-in shapes models in a few seconds on 2 cores)."""


def split(w: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)`` of the dataset: a permutation seeded with the workspace's seed, cut in two halves
    of at most :data:`HALF` images (a dataset sorted by class still gives every class to both)."""
    order = torch.randperm(len(w.data), generator=torch.Generator().manual_seed(w.seed))
    half = min(HALF, len(order) // 2)
    return order[:half], order[half:2 * half]


def probe_json(result: Any, entry: Entry) -> dict[str, Any]:
    """What the strip draws: per stage its probe accuracy, the random copy's and the receptive field; the pixels,
    chance and the model's own accuracy beside them."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(float(v), 5)

    return {"model": entry.id, "layers": [{"layer": n, "accuracy": r(result.accuracy[n]),
                                           "random": r(result.random.get(n)), "rf": result.rf.get(n)}
                                          for n in result.layers],
            "pixels": r(result.pixels), "chance": r(result.chance), "model_accuracy": r(result.model_accuracy),
            "n_train": result.n_train, "n_test": result.n_test, "pool": result.pool}


@router.get("/api/probe")
def probe_strip(request: Request, model: str | None = None) -> dict[str, Any]:
    """Linear-probe accuracy of every stage of the model (with a randomly re-initialised copy and the pixels as
    baselines) on the dataset split in two halves: a background job on first request, cached on disk. Poll this
    route (or ``/api/jobs/{job}``) until ``status`` is ``done``; ``result`` holds ``layers`` (``layer``,
    ``accuracy``, ``random``, ``rf``), ``pixels``, ``chance`` and ``model_accuracy``."""
    w = ws(request)
    entry = w.entry(model)
    w.images_for(entry)  # the dataset fits the model
    if not w.data.info.get("labelled", True):
        raise InputError(f"data: {w.data_spec!r} has no labels, and a probe learns classes; start the explorer "
                         "with a labelled dataset (a folder with one sub-folder per class, or a built-in one)")
    train, test = split(w)
    if len(train) < 2:
        raise InputError(f"data: {len(w.data)} images cannot be split into a probe's training and test halves; "
                         "start the explorer with a larger dataset")
    key = w.cache.key("probe", entry.digest, w.data_spec, len(w.data), w.seed, HALF, entry.stages)
    stored = w.cache.load_json(key)
    if stored is not None:
        return done_view("probe", stored)

    def work(job) -> dict[str, Any]:
        from ..transfer import probe

        job.step(0.0, "copying the model")
        with entry.lock:
            own = private_copy(entry.model)
        job.step(0.05, f"probing {len(entry.stages) or 'the'} stages on {len(train)} + {len(test)} images")
        args = (w.data[train], w.data[test])  # ImageSets: with the class names, the model's own accuracy too
        options = {"layers": entry.stages or None, "seed": w.seed}
        if own is None:  # an uncopyable model: hold it for the whole probe
            with entry.lock:
                result = probe(entry.model, *args, **options)
        else:
            result = probe(own, *args, **options)
        return w.cache.store_json(key, probe_json(result, entry))

    return w.jobs.submit("probe", key, work).view()

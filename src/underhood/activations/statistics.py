"""Per-channel statistics of a layer over a population of inputs, streamed in batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.errors import InputError
from ..core.hooks import capture


@dataclass
class LayerStatistics:
    """What :func:`statistics` measured for each of a layer's ``C`` channels over ``n`` inputs.

    A channel's *response* to an input is its activation averaged over positions (the value
    itself for a ``[N, C]`` layer); it is *active* on an input when its activation is positive
    at some position.

    Attributes:
        layer: the layer's name.
        n: number of inputs.
        mean, std: ``[C]`` mean and standard deviation of the activation over inputs and positions.
        active: ``[C]`` fraction of inputs on which the channel is active.
        dead: ``[C]`` bool, never active on any input.
        edges: ``[bins + 1]`` histogram bin edges of the responses (fixed from the first batch, see
            :func:`statistics`).
        histogram: ``[C, bins]`` counts of the responses; out-of-range values land in the end bins.
    """

    layer: str
    n: int
    mean: torch.Tensor
    std: torch.Tensor
    active: torch.Tensor
    dead: torch.Tensor
    edges: torch.Tensor
    histogram: torch.Tensor


def _inputs(dataset: object) -> torch.Tensor:
    images = getattr(dataset, "images", dataset)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise InputError(f"dataset: expected an ImageSet or a non-empty [N, C, H, W] tensor, got "
                         f"{getattr(images, 'shape', type(dataset).__name__)}")
    return images


def _edges(first: torch.Tensor, bins: int) -> torch.Tensor:
    lo, hi = float(first.min()), float(first.max())
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = max(hi - lo, 1e-6)
    # a margin beyond the first batch's range, since later batches may go further
    return torch.linspace(lo - 0.25 * span * (lo < 0), hi + 0.25 * span, bins + 1)


@torch.no_grad()
def statistics(model: nn.Module, dataset: object, layer: str, *, bins: int = 30,
               batch_size: int | str | None = None, progress: bool = False) -> LayerStatistics:
    """Mean, spread, activity, dead units and response histograms of every channel of ``layer``.

    The dataset is streamed in batches (eval mode, no gradients): memory does not grow with its
    size. Sums, sums of squares and counts accumulate in float64; histogram edges are fixed from
    the first batch's responses with a 25% margin, and later values outside them are counted
    in the end bins.

    Example:
        >>> st = statistics(model, underhood.datasets.shapes(512), "features.10")   # doctest: +SKIP
        >>> int(st.dead.sum()), st.active.mean()                                      # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    images = _inputs(dataset)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"bins: expected a positive int, got {bins!r}")
    device = next(model.parameters()).device
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    total = total_sq = count = active = hist = edges = None
    with capture(model, layer, eval=True) as cap:
        for part in tqdm(list(batches(len(images), size)), desc="statistics", disable=not progress, leave=False):
            model(images[part].to(device))
            if layer not in cap.activations:
                raise InputError(f"layer: {layer!r} did not run in forward; pick a layer that does")
            a = cap.activations[layer].double()
            flat = a.flatten(2) if a.ndim > 2 else a[:, :, None]
            response = flat.mean(2).float().cpu()
            if total is None:
                c = flat.shape[1]
                total, total_sq, active = (torch.zeros(c, dtype=torch.float64) for _ in range(3))
                count, edges, hist = 0, _edges(response, bins), torch.zeros(c, bins, dtype=torch.long)
            total += flat.sum((0, 2)).cpu()
            total_sq += flat.pow(2).sum((0, 2)).cpu()
            count += flat.shape[0] * flat.shape[2]
            active += (flat.amax(2) > 0).sum(0).double().cpu()
            index = (torch.bucketize(response, edges[1:-1].contiguous())).T  # [C, B]
            hist.scatter_add_(1, index, torch.ones_like(index))
            cap.clear()
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp(min=0).sqrt()
    frac = active / len(images)
    return LayerStatistics(layer, len(images), mean.float(), std.float(), frac.float(), frac == 0, edges, hist)

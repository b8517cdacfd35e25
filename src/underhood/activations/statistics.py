"""Per-channel statistics of a layer over a population of inputs, streamed in batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.batching import resolve_batch_size, stream
from ..core.checks import positive_int
from ..core.errors import InputError
from ..core.inputs import dataset_images
from ..core.results import Result
from .maps import feature_view


@dataclass(repr=False)
class LayerStatistics(Result):
    """What :func:`statistics` measured for each of a layer's ``C`` channels over ``n`` inputs.

    A channel's *response* to an input is its activation averaged over positions (the value
    itself for a ``[N, C]`` layer); it is *active* on an input when its activation is positive
    at some position. The positions of a token layer ``[N, L, C]`` are its patch tokens (prefix
    tokens such as a class token are left out), those of a channels-last layer ``[N, h, w, C]`` its
    ``h x w`` grid: the ``[N, C, h, w]`` view of :func:`underhood.activations.maps`.

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

    def scalars(self) -> dict:
        return {"layer": self.layer, "n": self.n, "channels": len(self.mean), "dead": int(self.dead.sum()),
                "active": float(self.active.mean()), "bins": len(self.edges) - 1}

    def figure(self, **kwargs):
        """The statistics figure (:func:`underhood.viz.units.statistics_figure`; ``kwargs`` go to it)."""
        from ..viz.units import statistics_figure

        return statistics_figure(self, **kwargs)


EDGE_SAMPLE = 256  # the histogram range comes from the first this-many inputs of the dataset


def _responses(flat: torch.Tensor) -> torch.Tensor:
    return flat.mean(2).float()


def _flat(a: torch.Tensor, size: tuple[int, ...], layer: str, reading: dict) -> torch.Tensor:
    """``[N, C, positions]`` in float64: a spatial layer read as ``[N, C, h, w]`` (see :func:`feature_view`)."""
    a = feature_view(a, size[-2:], layer, **reading)[0].double()
    return a.flatten(2) if a.ndim > 2 else a[:, :, None]


def _edges_from(first: torch.Tensor, bins: int) -> torch.Tensor:
    lo, hi = min(float(first.min()), 0.0), max(float(first.max()), 0.0)
    span = max(hi - lo, 1e-6)
    return torch.linspace(lo - 0.25 * span * (lo < 0), hi + 0.25 * span, bins + 1)


def histogram_edges(model: nn.Module, dataset: object, layer: str, *, bins: int = 30,
                    batch_size: int | str | None = None, tokens: int | None = None,
                    grid: tuple[int, int] | None = None, layout: str | None = None) -> torch.Tensor:
    """Histogram edges spanning the responses of the dataset's first ``EDGE_SAMPLE`` inputs, with a
    25% margin: independent of batching and sharding, so every shard of a run bins alike (CPU tensor)."""
    images = dataset_images(dataset, model)[:EDGE_SAMPLE]
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    reading = {"tokens": tokens, "grid": grid, "layout": layout}
    return _edges_from(torch.cat([_responses(_flat(acts[layer], images.shape, layer, reading))
                                  for _, acts in stream(model, layer, images, size)]), bins)


@torch.no_grad()
def accumulate(model: nn.Module, dataset: object, layer: str, edges: torch.Tensor | int, *, start: int = 0,
               stop: int | None = None, batch_size: int | str | None = None, progress: bool = False,
               tokens: int | None = None, grid: tuple[int, int] | None = None,
               layout: str | None = None) -> dict[str, torch.Tensor]:
    """Sums, sums of squares, counts, activity and histogram counts over ``dataset[start:stop]``.

    ``edges`` are the histogram edges (see :func:`histogram_edges`), or a number of bins when
    ``start == 0``: the edges then come from the first ``EDGE_SAMPLE`` responses of the pass
    itself (held back until that many are seen), which saves the extra pass. States of disjoint
    slices add up (:func:`merge`); :func:`from_state` turns one into :class:`LayerStatistics`.
    The sums stay on the model's device during the pass (no host round trip per batch); the
    returned state is on the CPU. ``tokens`` / ``grid`` / ``layout`` read a token or channels-last
    layer as in :func:`underhood.activations.maps`.
    """
    images = dataset_images(dataset, model)[start:stop]
    if len(images) == 0:
        raise InputError(f"start/stop: the slice {start}:{stop} is empty")
    if isinstance(edges, int) and start != 0:
        raise InputError("edges: a slice not starting at 0 needs explicit edges; use histogram_edges()")
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    reading = {"tokens": tokens, "grid": grid, "layout": layout}
    state: dict[str, torch.Tensor] = {}
    held: list[torch.Tensor] = []
    seen = 0

    def bin_(responses: torch.Tensor) -> None:
        index = torch.bucketize(responses, state["edges"][1:-1].contiguous()).T  # [C, B]
        state["histogram"].scatter_add_(1, index, torch.ones_like(index))

    for _, acts in stream(model, layer, images, size, progress=progress, desc="statistics"):
        flat = _flat(acts[layer], images.shape, layer, reading)
        if not state:
            c, dev = flat.shape[1], flat.device
            bins = edges if isinstance(edges, int) else len(edges) - 1
            state = {k: torch.zeros(c, dtype=torch.float64, device=dev) for k in ("sum", "sum_sq", "active")}
            state |= {k: torch.zeros((), dtype=torch.float64, device=dev) for k in ("count", "n")}
            state["histogram"] = torch.zeros(c, bins, dtype=torch.long, device=dev)
            if not isinstance(edges, int):
                state["edges"] = edges.to(dev, copy=True)
        state["sum"] += flat.sum((0, 2))
        state["sum_sq"] += flat.pow(2).sum((0, 2))
        state["count"] += flat.shape[0] * flat.shape[2]
        state["n"] += flat.shape[0]
        state["active"] += (flat.amax(2) > 0).sum(0)
        seen += flat.shape[0]
        if "edges" in state:
            bin_(_responses(flat))
            continue
        held.append(_responses(flat))
        if seen >= EDGE_SAMPLE:  # once per pass: the edges come from the first EDGE_SAMPLE responses
            state["edges"] = _edges_from(torch.cat(held)[:EDGE_SAMPLE], int(edges)).to(flat.device)
            bin_(torch.cat(held))
            held.clear()
    if held:
        state["edges"] = _edges_from(torch.cat(held)[:EDGE_SAMPLE], int(edges)).to(held[0].device)
        bin_(torch.cat(held))
    return {k: v.cpu() for k, v in state.items()}


def merge(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state of the union of disjoint slices (every slice binned with the same edges)."""
    if not states:
        raise InputError("states: nothing to merge")
    out = {k: v.clone() for k, v in states[0].items()}
    for st in states[1:]:
        if not torch.equal(st["edges"], out["edges"]):
            raise InputError("states: the slices were binned with different edges; use histogram_edges() for all")
        for k in ("sum", "sum_sq", "active", "count", "n", "histogram"):
            out[k] += st[k]
    return out


def from_state(layer: str, state: dict[str, torch.Tensor]) -> LayerStatistics:
    """:class:`LayerStatistics` from an accumulated (possibly merged) state."""
    mean = state["sum"] / state["count"]
    std = (state["sum_sq"] / state["count"] - mean.pow(2)).clamp(min=0).sqrt()
    frac = state["active"] / state["n"]
    return LayerStatistics(layer, int(state["n"]), mean.float(), std.float(), frac.float(), frac == 0,
                           state["edges"], state["histogram"])


@torch.no_grad()
def statistics(model: nn.Module, dataset: object, layer: str, *, bins: int = 30,
               batch_size: int | str | None = None, progress: bool = False, tokens: int | None = None,
               grid: tuple[int, int] | None = None, layout: str | None = None) -> LayerStatistics:
    """Mean, spread, activity, dead units and response histograms of every channel of ``layer``.

    The dataset is streamed in batches (eval mode, no gradients; the forward pass stops after
    ``layer`` when it can): memory does not grow with its size. Sums, sums of squares and counts
    accumulate in float64 on the model's device; histogram edges span the responses of the first
    256 inputs with a 25% margin, and later values outside them are counted in the end bins.

    ``layer`` may output ``[N, C, h, w]``, ``[N, C]``, a token sequence ``[N, L, C]`` or a
    channels-last map ``[N, h, w, C]``: the statistics are per channel over the positions of its
    ``[N, C, h, w]`` view (:func:`underhood.activations.maps`), so a vision transformer's class token
    and other prefix tokens are left out. ``tokens`` (prefix tokens), ``grid=(h, w)`` and ``layout``
    fix that reading when it cannot be inferred from ``L`` and the input size.

    Example:
        >>> st = statistics(model, underhood.datasets.shapes(512), "features.10")   # doctest: +SKIP
        >>> int(st.dead.sum()), st.active.mean()                                      # doctest: +SKIP
    """
    images = dataset_images(dataset, model)
    positive_int("bins", bins)
    return from_state(layer, accumulate(model, images, layer, bins, batch_size=batch_size, progress=progress,
                                        tokens=tokens, grid=grid, layout=layout))

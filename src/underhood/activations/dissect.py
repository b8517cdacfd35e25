"""Network dissection (Bau et al. 2017): score every unit of a layer as a segmenter of labelled concepts.

For unit ``k`` of a layer, with ``a_k(x)`` its activation map on image ``x``:

1. the threshold ``T_k`` is the top-``quantile`` level of ``a_k`` over every position of every image of
   the dataset, ``P(a_k > T_k) = quantile`` (Bau et al.: 0.005), computed at the layer's own resolution
   as NetDissect does (``numpy.percentile(a, 100 * (1 - quantile))``, linear interpolation between ranks);
2. ``a_k(x)`` is upsampled to the image size, bilinearly (``align_corners=False``: each layer position
   is anchored at the centre of the image cell it covers), giving ``S_k(x)``, and thresholded:
   ``M_k(x) = S_k(x) > T_k`` (strictly, as NetDissect's code: a sparse ReLU unit with ``T_k = 0``
   selects nothing rather than the whole image);
3. its score for concept ``c`` is a dataset-wide intersection over union,
   ``IoU_k,c = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|``, the sums running over the images
   that carry a label of ``c``'s category (Bau et al.'s rule for concepts not labelled on every image);
4. the unit is named by its best concept, and is a *detector* of it when that IoU exceeds
   ``iou_threshold`` (Bau et al.: 0.04).

The concepts come from an :class:`~underhood.data.ImageSet` with ground-truth masks: one concept per
class, ``L_c(x)`` = the object mask on the images of class ``c`` and empty on the others (category
"object"; every image of the built-in shapes carries one object, so its sums run over the whole
dataset: a unit that fires on every object scores at most its class's share on each class concept,
while one that fires on circles alone can reach 1 on "circle"), and ``"marker"``, the planted spurious
marker of ``shapes(..., spurious=...)`` (category "marker": its sums run over the images carrying one).

Two streaming passes over the data (memory does not grow with the dataset beyond the top
``quantile`` share of each unit's values): the first keeps each unit's largest values to find
``T_k`` exactly, and each image's maximum; the second upsamples, thresholds and counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import resolve_batch_size, stream
from ..core.checks import number
from ..core.errors import InputError, LayerError
from ..core.inputs import dataset_images
from ..core.layers import stages
from ..core.results import Result
from .maps import feature_view

MARKER = "marker"
"""The concept name of the planted spurious marker (``ImageSet.marker_masks``)."""


@dataclass(repr=False)
class DissectionResult(Result):
    """What :func:`dissect` measured, per layer, for every unit against every concept.

    Attributes:
        layers: the dissected layers, in the order given.
        concepts: the concept names (the data's classes, then ``"marker"`` when the data has markers).
        iou: layer -> ``[C, K]`` dataset-wide IoU of unit ``k``'s thresholded map with concept ``c``.
        threshold: layer -> ``[C]`` the top-quantile level ``T_k`` of each unit.
        top: layer -> ``[C, m]`` indices of the images where each unit's maximum is highest, descending
            (``m = min(8, n)``), to draw a unit on the images it fires on most.
        quantile: the top share of positions above ``T_k``; iou_threshold: the IoU a detector exceeds.
        n: the images dissected; size: their ``(H, W)``.
        info: the concepts' categories and pixel counts.
    """

    layers: list[str]
    concepts: list[str]
    iou: dict[str, torch.Tensor]
    threshold: dict[str, torch.Tensor]
    top: dict[str, torch.Tensor]
    quantile: float
    iou_threshold: float
    n: int
    size: tuple[int, int]
    info: dict = field(default_factory=dict)

    def best(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(concept index [C], IoU [C])``: each unit's best concept (ties: the first) and its IoU."""
        iou = self.iou[self._layer(layer)]
        value, index = iou.max(1)
        return index, value

    def names(self, layer: str) -> list[str]:
        """Each unit's name: its best concept when it is a detector, else ``"-"``."""
        index, value = self.best(layer)
        return [self.concepts[i] if v > self.iou_threshold else "-" for i, v in zip(index.tolist(), value.tolist())]

    def detectors(self, layer: str) -> dict[str, int]:
        """Concept -> number of the layer's units that detect it (best concept, IoU above the threshold)."""
        names = self.names(layer)
        return {c: names.count(c) for c in self.concepts}

    def units(self, layer: str, k: int | None = None) -> list[tuple[int, str, float]]:
        """``(unit, best concept, IoU)`` of the layer's units, best IoU first (the first ``k``)."""
        index, value = self.best(layer)
        order = value.argsort(descending=True, stable=True)[:k]
        return [(int(u), self.concepts[int(index[u])], float(value[u])) for u in order]

    def masks(self, model: nn.Module, inputs: torch.Tensor, layer: str,
              units: Sequence[int] | None = None, *, batch_size: int | str | None = None) -> torch.Tensor:
        """``[N, U, H, W]`` bool: the thresholded, upsampled maps ``M_k(x)`` of ``units`` (default all) on
        ``inputs``, with this result's thresholds (what the IoU counted)."""
        layer = self._layer(layer)
        images = dataset_images(inputs, model, "inputs")
        size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
        ids = torch.arange(len(self.threshold[layer])) if units is None else torch.as_tensor(list(units)).long()
        out = []
        for _, acts in stream(model, layer, images, size):
            a = _spatial(acts[layer], images.shape[-2:], layer)[:, ids.to(acts[layer].device)]
            out.append(_unit_masks(a, self.threshold[layer][ids].to(a.device), tuple(images.shape[-2:])).cpu())
        return torch.cat(out)

    def units_figure(self, model: nn.Module, data: object, layer: str, *, units: Sequence[int] | None = None,
                     k: int = 4, m: int = 6, title: str | None = None):
        """The ``k`` best units of ``layer`` (or ``units``), each on its ``m`` top images of ``data`` (the data
        dissected): the unit's region ``M_k(x)`` bright, the rest dimmed, its best concept outlined
        (:func:`underhood.viz.dissection.units_figure`)."""
        from ..viz.dissection import units_figure

        layer = self._layer(layer)
        index, value = self.best(layer)
        chosen = [u for u, _, _ in self.units(layer, k)] if units is None else [int(u) for u in units]
        m = min(m, self.top[layer].shape[1])
        images, masks, truth, labels = [], [], [], []
        for u in chosen:
            rows = self.top[layer][u, :m].tolist()
            picked = dataset_images(data, model)[rows]
            images.append(picked)
            masks.append(self.masks(model, picked, layer, [u], batch_size=len(rows))[:, 0])
            truth.append(concept_mask(data, self.concepts[int(index[u])])[rows])
            labels.append(f"{layer} #{u}\n{self.concepts[int(index[u])]}\nIoU {float(value[u]):.2f}")
        return units_figure(torch.stack(images), torch.stack(masks), labels=labels, truth=torch.stack(truth),
                            title=title)

    def scalars(self) -> dict:
        out: dict = {"n": self.n, "concepts": len(self.concepts), "quantile": self.quantile,
                     "iou_threshold": self.iou_threshold}
        for layer in self.layers:
            found = self.detectors(layer)
            units = len(self.threshold[layer])
            out[f"detectors[{layer}]"] = f"{sum(found.values())} of {units}"
            out[f"concepts[{layer}]"] = sum(v > 0 for v in found.values())
        return out

    def figure(self, **kwargs):
        """Detectors per layer, by concept (:func:`underhood.viz.dissection.detectors_figure`)."""
        from ..viz.dissection import detectors_figure

        return detectors_figure(self, **kwargs)

    def _layer(self, layer: str) -> str:
        if layer not in self.iou:
            raise LayerError(f"layer: {layer!r} was not dissected; pick one of {self.layers}")
        return layer


def _spatial(a: torch.Tensor, size: Sequence[int], layer: str) -> torch.Tensor:
    a = feature_view(a, size, layer)[0]
    if a.ndim != 4:
        raise LayerError(f"layers: {layer!r} outputs {tuple(a.shape[1:])}, which has no positions to segment with; "
                         "dissect a convolutional (spatial) layer")
    return a.float()


def _unit_masks(a: torch.Tensor, threshold: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``M_k(x)``: ``a [B, C, h, w]`` upsampled bilinearly to ``size`` and compared with ``threshold [C]``."""
    up = F.interpolate(a, size=size, mode="bilinear", align_corners=False) if tuple(a.shape[-2:]) != size else a
    return up > threshold[None, :, None, None]


def quantile_threshold(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """``T`` per row of ``values [C, M]`` with a share ``quantile`` of the row above it: the ``1 - quantile``
    percentile with linear interpolation between ranks (``numpy.percentile``'s default, as NetDissect)."""
    return _interpolate(values.float().sort(1, descending=True).values, values.shape[1], quantile)


def _ranks(m: int, quantile: float) -> tuple[int, float]:
    """How many of the largest values the ``1 - quantile`` percentile of ``m`` values needs, and the fraction."""
    p = (1 - quantile) * (m - 1)  # ascending position
    lo = math.floor(p)
    return m - lo, p - lo


def _interpolate(largest: torch.Tensor, m: int, quantile: float) -> torch.Tensor:
    """The percentile from each row's largest values (``[C, >= keep]``, descending) of ``m`` values in all."""
    keep, frac = _ranks(m, quantile)
    low = largest[:, keep - 1]                        # ascending rank lo
    high = largest[:, keep - 2] if keep >= 2 else low  # ascending rank lo + 1
    return low + frac * (high - low)


def _concepts(data: object) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(names, categories, masks, labels, markers)`` of an ImageSet with ground-truth masks."""
    masks, labels = getattr(data, "masks", None), getattr(data, "labels", None)
    classes = list(getattr(data, "classes", None) or [])
    if masks is None or labels is None or not classes:
        raise InputError("data: expected an ImageSet with labels, classes and ground-truth masks (e.g. "
                         "underhood.datasets.shapes(n)); got " + type(data).__name__)
    markers = getattr(data, "marker_masks", None)
    names = classes + ([MARKER] if markers is not None else [])
    categories = ["object"] * len(classes) + (["marker"] if markers is not None else [])
    return names, categories, masks, labels, markers


def concept_mask(data: object, concept: str) -> torch.Tensor:
    """``L_c(x)`` of every image of ``data``, ``[N, H, W]`` bool: the object mask on the images of class
    ``concept`` (empty on the others), or the marker mask for ``"marker"``."""
    names, _, masks, labels, markers = _concepts(data)
    if concept not in names:
        raise InputError(f"concept: expected one of {names}, got {concept!r}")
    if concept == MARKER and markers is not None:
        return markers[:, 0].bool()
    return masks[:, 0].bool() & (labels == names.index(concept))[:, None, None]


def _tally(a: torch.Tensor, threshold: torch.Tensor, truth: torch.Tensor, column: torch.Tensor,
           category: torch.Tensor, inter: torch.Tensor, active: torch.Tensor, size: tuple[int, int],
           marker: bool) -> None:
    """Add one batch's counts to ``inter`` and ``active`` (``[C, K]``, float64, on the CPU).

    ``a [B, C, h, w]`` the layer's maps; ``truth [B, P, 2]`` each image's object and marker masks
    (float); ``column [B]`` the concept of each image's object (its class); ``category [B, K]`` whether
    the image counts for concept ``k``'s sums; ``marker``: the last concept is the marker. Only the
    (image, unit) pairs whose maximum exceeds the unit's threshold are upsampled: a bilinear map never
    exceeds its largest sample, so the others are empty.
    """
    b, c = (a.amax((2, 3)) > threshold).nonzero(as_tuple=True)
    if len(b) == 0:
        return
    up = F.interpolate(a[b, c][:, None], size=size, mode="bilinear", align_corners=False) \
        if tuple(a.shape[-2:]) != size else a[b, c][:, None]
    m = (up.flatten(1) > threshold[c][:, None]).float()                            # [M, P]: M_k(x) of each pair
    hits = torch.bmm(m[:, None], truth[b]).squeeze(1)                               # [M, 2]: |M & object|, |M & marker|
    c, b = c.cpu(), b.cpu()
    inter.index_put_((c, column[b]), hits[:, 0].double().cpu(), accumulate=True)
    if marker:                                                                       # the last concept
        inter.index_put_((c, torch.full_like(c, inter.shape[1] - 1)), hits[:, 1].double().cpu(), accumulate=True)
    active.index_add_(0, c, m.sum(1).double().cpu()[:, None] * category[b].double())


def dissect(model: nn.Module, data: object, *, layers: str | Sequence[str] | None = None, quantile: float = 0.005,
            iou_threshold: float = 0.04, batch_size: int | str | None = None,
            progress: bool = False) -> DissectionResult:
    """Network dissection (Bau et al. 2017): the IoU of every unit's top-quantile region with every concept.

    See the module docstring for the definition: ``T_k`` the top-``quantile`` level of unit ``k`` over the
    dataset, ``M_k(x)`` its bilinearly upsampled map above ``T_k``, ``IoU_k,c`` summed over the dataset,
    each unit named by its best concept and a detector when that IoU exceeds ``iou_threshold``.

    Args:
        model: any module taking ``[N, C, H, W]`` images in ``[0, 1]``; left as it was found.
        data: an :class:`~underhood.data.ImageSet` with ``masks``, ``labels`` and ``classes`` (its
            ``marker_masks``, when present, add the ``"marker"`` concept), e.g. ``shapes(500, spurious=0.5)``.
        layers: the layers to dissect (default: :func:`underhood.activations.stages`); each must give
            a spatial map (convolutional ``[N, C, h, w]``, or tokens / channels-last on a grid).
        quantile: the share of each unit's positions above its threshold (Bau et al.: 0.005).
        iou_threshold: a unit whose best IoU exceeds this is a detector (Bau et al.: 0.04).
        batch_size: images per forward pass (default: measured).

    Returns:
        A :class:`DissectionResult`: per layer the ``[units, concepts]`` IoU table, the thresholds, and
        ``names(layer)`` / ``detectors(layer)`` / ``units(layer, k)``; ``figure()`` draws the detectors per
        layer by concept.

    Example:
        >>> data = underhood.datasets.shapes(200, spurious=0.5)                       # doctest: +SKIP
        >>> r = dissect(model, data, layers=["features.9", "features.16"])           # doctest: +SKIP
        >>> r.detectors("features.16"), r.units("features.16", 3)                     # doctest: +SKIP
    """
    quantile = number("quantile", quantile, strict=True)
    if quantile >= 1:
        raise InputError(f"quantile: expected a share in (0, 1), got {quantile!r}")
    iou_threshold = number("iou_threshold", iou_threshold)
    names, categories, masks, labels, markers = _concepts(data)
    images = dataset_images(data, model, "data")
    if masks.shape[0] != len(images) or tuple(masks.shape[-2:]) != tuple(images.shape[-2:]):
        raise InputError(f"data: masks of shape {tuple(masks.shape)} do not match images {tuple(images.shape)}")
    layers = stages(model) if layers is None else [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise InputError("layers: expected at least one layer name")
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    hw = (int(images.shape[-2]), int(images.shape[-1]))
    threshold, top = _thresholds(model, images, layers, quantile, size, progress)

    # pass 2: upsample, threshold, count intersections and areas (over each category's images)
    obj = masks.flatten(1).bool()
    mark = markers.flatten(1).bool() if markers is not None else torch.zeros_like(obj)
    category = torch.stack([obj.any(1)] * (len(names) - (markers is not None))
                           + ([mark.any(1)] if markers is not None else []), 1)                # [N, K]
    area = torch.zeros(len(names), dtype=torch.float64)
    area.index_put_((labels.long().cpu(),), obj.sum(1).double().cpu(), accumulate=True)
    if markers is not None:
        area[-1] = mark.sum().double()
    inter = {name: torch.zeros(len(threshold[name]), len(names), dtype=torch.float64) for name in layers}
    active = {name: torch.zeros(len(threshold[name]), len(names), dtype=torch.float64) for name in layers}
    for part, acts in stream(model, layers, images, size, progress=progress, desc="dissect: IoU"):
        for name in layers:
            a = _spatial(acts[name], hw, name)
            truth = torch.stack([obj[part], mark[part]], -1).to(a.device).float()     # [B, P, 2]
            _tally(a, threshold[name].to(a.device), truth, labels[part].long().cpu(), category[part].cpu(),
                   inter[name], active[name], hw, markers is not None)
    iou = {name: (inter[name] / (active[name] + area - inter[name]).clamp_min(1e-10)).float() for name in layers}
    info = {"categories": categories, "pixels": area.tolist(),
            "upsampling": "bilinear, align_corners=False", "mask": "S_k(x) > T_k"}
    return DissectionResult(list(layers), names, iou, {k: v.cpu() for k, v in threshold.items()}, top,
                            float(quantile), float(iou_threshold), len(images), hw, info)


def _thresholds(model: nn.Module, images: torch.Tensor, layers: list[str], quantile: float, size: int,
                progress: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pass 1: ``T_k`` of every unit (from each unit's largest values, kept while streaming) and each unit's
    top images by maximum."""
    hw = tuple(images.shape[-2:])
    largest: dict[str, torch.Tensor] = {}
    positions: dict[str, int] = {}
    peaks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for _, acts in stream(model, layers, images, size, progress=progress, desc="dissect: thresholds"):
        for name in layers:
            a = _spatial(acts[name], hw, name)
            positions[name] = len(images) * a.shape[-2] * a.shape[-1]                # in the whole dataset
            keep = _ranks(positions[name], quantile)[0]
            flat = a.transpose(0, 1).flatten(1)                                      # [C, B*h*w]
            both = flat if name not in largest else torch.cat([largest[name], flat], 1)
            largest[name] = both.topk(min(keep, both.shape[1]), dim=1).values
            peaks[name].append(a.amax((2, 3)).cpu())
    threshold = {name: _interpolate(largest[name], positions[name], quantile).cpu() for name in layers}
    top = {name: torch.cat(peaks[name]).T.topk(min(8, len(images)), dim=1).indices for name in layers}
    return threshold, top

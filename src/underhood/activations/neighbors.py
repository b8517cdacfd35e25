"""Nearest neighbours of query images in pixel space and in a layer's feature space.

The AlexNet paper's figure (Krizhevsky et al. 2012, fig. 4): images close in the last hidden
layer's features share a class although their pixels differ, while the nearest images in
pixel space share colour and layout, not content.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.batching import batches
from ..core.checks import choice, positive_int
from ..core.errors import InputError
from ..core.inputs import dataset_images
from ..core.results import Result
from .embed import INPUT, features

METRICS = ("euclidean", "cosine")
CHUNK = 4096  # dataset rows per distance block


@dataclass(repr=False)
class Neighbors(Result):
    """The ``k`` nearest dataset images of each of ``Q`` queries, nearest first.

    Attributes:
        pixel_index, pixel_distance: ``[Q, k]`` long / float32, in pixel space (flattened images).
        feature_index, feature_distance: ``[Q, k]``, in the features of ``layer``.
        layer: the feature layer.
        metric: ``"euclidean"`` or ``"cosine"`` (``1 - cosine similarity``).
    """

    pixel_index: torch.Tensor
    pixel_distance: torch.Tensor
    feature_index: torch.Tensor
    feature_distance: torch.Tensor
    layer: str
    metric: str

    def scalars(self) -> dict:
        queries, k = self.feature_index.shape
        return {"layer": self.layer, "metric": self.metric, "queries": queries, "k": k}


def distances(query: torch.Tensor, data: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """``[Q, N]`` distances between rows of ``query`` ``[Q, D]`` and ``data`` ``[N, D]`` (float64 inside)."""
    q = query.double()
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1)
    out = []
    for rows in batches(len(data), CHUNK):  # the data is converted a block at a time
        d = data[rows].double()
        if metric == "cosine":
            out.append(1.0 - q @ torch.nn.functional.normalize(d, dim=1).T)
        else:
            out.append(torch.cdist(q, d, compute_mode="donot_use_mm_for_euclid_dist"))
    return torch.cat(out, 1).float()


def _nearest(query: torch.Tensor, data: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = distances(query, data, metric)
    # a stable sort: equal distances keep dataset order, so duplicates rank reproducibly
    dist, index = d.sort(dim=1, stable=True)
    return index[:, :k].contiguous(), dist[:, :k].contiguous()


def neighbors(model: nn.Module, query: torch.Tensor, dataset: object, layer: str, k: int = 5, *,
              pool: str = "avg", metric: str = "euclidean", batch_size: int | str | None = None) -> Neighbors:
    """The ``k`` nearest images of ``dataset`` to each query, in pixel space and at ``layer``.

    Pixel space compares the flattened images; feature space compares the layer's features
    as :func:`underhood.activations.embed.features` computes them (``pool``: ``"avg"``,
    ``"max"`` or ``"flatten"``). A query that is itself in the dataset finds itself first.

    Args:
        query: ``[Q, C, H, W]`` or one ``[C, H, W]`` image in ``[0, 1]``.
        dataset: an ImageSet or a ``[N, C, H, W]`` tensor.
        metric: ``"euclidean"`` or ``"cosine"`` (distance ``1 - cos``).

    Returns:
        A :class:`Neighbors` with ``[Q, k]`` indices into the dataset and their distances.

    Example:
        >>> nb = neighbors(model, data.images[:4], data, "fc2", k=5)   # doctest: +SKIP
        >>> nb.feature_index.shape                                     # doctest: +SKIP
        torch.Size([4, 5])
    """
    if isinstance(query, torch.Tensor) and query.ndim == 3:
        query = query[None]
    if not isinstance(query, torch.Tensor) or query.ndim != 4 or len(query) == 0:
        raise InputError(f"query: expected a [Q, C, H, W] or [C, H, W] tensor, got "
                         f"{getattr(query, 'shape', type(query).__name__)}")
    choice("metric", metric, METRICS)
    if not isinstance(layer, str) or layer == INPUT:
        raise InputError(f"layer: expected the name of a layer of the model, got {layer!r}; pixel space "
                         "neighbours come with every call")
    images = dataset_images(dataset, model)
    dataset_images(query, model, "query")
    n = len(images)
    positive_int("k", k)
    if k > n:
        raise InputError(f"k: {k} neighbours asked but the dataset has only {n} images; pass k <= {n}")
    if query.shape[1:] != images.shape[1:]:
        raise InputError(f"query: images of shape {tuple(query.shape[1:])} but the dataset's are "
                         f"{tuple(images.shape[1:])}; give queries of the dataset's size")
    data = features(model, images, [INPUT, layer], pool=pool, batch_size=batch_size)
    asked = features(model, query, [INPUT, layer], pool=pool, batch_size=batch_size)
    return neighbors_of_features(asked, data, layer, k, metric=metric)


def neighbors_of_features(query: dict[str, torch.Tensor], dataset: dict[str, torch.Tensor], layer: str, k: int = 5,
                          *, metric: str = "euclidean") -> Neighbors:
    """The search of :func:`neighbors` on features already computed (a shared pass, a distributed one).

    ``query`` and ``dataset`` map ``"input"`` (flattened pixels) and ``layer`` to ``[Q, D]`` and
    ``[N, D]`` features, as :func:`underhood.activations.embed.features` returns them.
    """
    choice("metric", metric, METRICS)
    positive_int("k", k)
    missing = [name for name in (INPUT, layer) if name not in query or name not in dataset]
    if missing:
        raise InputError(f"query, dataset: no features for {missing}; give features of 'input' and {layer!r}")
    if k > len(dataset[INPUT]):
        raise InputError(f"k: {k} neighbours asked but the dataset has only {len(dataset[INPUT])} images; pass k <= "
                         f"{len(dataset[INPUT])}")
    pixel_index, pixel_distance = _nearest(query[INPUT], dataset[INPUT], k, metric)
    feature_index, feature_distance = _nearest(query[layer], dataset[layer], k, metric)
    return Neighbors(pixel_index, pixel_distance, feature_index, feature_distance, layer, metric)


__all__ = ["Neighbors", "neighbors", "neighbors_of_features", "distances"]

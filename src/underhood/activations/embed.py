"""Layer embeddings: each layer's features of a population of images, laid out in 2-D.

The same images embedded at the pixels, an early, a middle and the last layer show the
classes untangling with depth (the t-SNE figures of the CNN lectures; van der Maaten &
Hinton 2008). Two numbers go with each picture: the leave-one-out k-NN accuracy in the 2-D
layout (how well the classes separate where the eye looks) and its trustworthiness (Venna &
Kaski 2001: whether points close in 2-D are close in the layer's own features too).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size, stream
from ..core.checks import choice, number, positive_int
from ..core.errors import InputError
from ..core.inputs import dataset_images
from ..core.layers import resolve
from ..core.results import Result

INPUT = "input"
POOLS = ("avg", "max", "flatten")
METHODS = ("pca", "tsne", "umap")
INPUT_BATCH = 1024  # images per copy when only the pixels are asked for (no model call)
TRUST_ROWS = 10_000  # trustworthiness sums over at most this many points (a seeded sample beyond)
# openTSNE runs its 750 gradient steps on torch.get_num_threads() threads from this many points on,
# on one below: on small layouts threads gain little on a quiet machine and, on one shared with
# other work, waking them for steps this small costs more than they give (measurements: benchmarks/embedding.py).
THREADED_FROM = 1000


@dataclass(repr=False)
class Embedding(Result):
    """What :func:`embed` computed: a 2-D layout of the same ``N`` images at each layer.

    Attributes:
        coords: layer -> ``[N, 2]`` float32 coordinates.
        labels: ``[N]`` long class indices, or ``None``.
        method: ``"pca"``, ``"tsne"`` or ``"umap"``.
        layers: the layers, in the order asked.
        knn_accuracy: layer -> leave-one-out ``k``-NN accuracy in the 2-D layout (when labels are known).
        trustworthiness: layer -> trustworthiness of the 2-D layout w.r.t. the layer's features.
        k: the neighbourhood size of both scores.
        seed: the seed of the layout.
    """

    coords: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    method: str
    layers: list[str]
    knn_accuracy: dict[str, float] = field(default_factory=dict)
    trustworthiness: dict[str, float] = field(default_factory=dict)
    k: int = 10
    seed: int = 0

    def scalars(self) -> dict:
        """Method, size, and per layer the k-NN accuracy (``knn[layer]``) and trustworthiness (``trust[layer]``)."""
        n = len(next(iter(self.coords.values()))) if self.coords else 0
        out: dict = {"method": self.method, "n": n, "k": self.k}
        for name in self.layers:
            if name in self.knn_accuracy:
                out[f"knn[{name}]"] = self.knn_accuracy[name]
            if name in self.trustworthiness:
                out[f"trust[{name}]"] = self.trustworthiness[name]
        return out

    def figure(self, **kwargs):
        """The embedding figure (:func:`underhood.viz.embedding.embedding_figure`; ``kwargs`` go to it)."""
        from ..viz.embedding import embedding_figure

        return embedding_figure(self, **kwargs)


def _names(layers: str | Sequence[str]) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"layers: expected a layer name or a list of them, got {layers!r}")
    return list(dict.fromkeys(names))  # duplicates once, order kept


def _pooled(a: torch.Tensor, pool: str, size: Sequence[int] = (), layer: str = "layer") -> torch.Tensor:
    """``[B, C, ...]`` -> ``[B, D]``: pooled over every axis after the channel axis, or flattened.

    A token sequence ``[B, L, C]`` or a channels-last map ``[B, h, w, C]`` (inputs of ``size=(H, W)``) is
    pooled over its positions through :func:`underhood.activations.maps.feature_view` (prefix tokens
    such as a class token left out), so ``D = C`` there too."""
    if a.ndim <= 2 or pool == "flatten":
        return a.flatten(1)
    if size:
        from .maps import feature_view

        a = feature_view(a, size, layer)[0]
    return a.flatten(2).mean(2) if pool == "avg" else a.flatten(2).amax(2)


@torch.no_grad()
def features(model: nn.Module, dataset: object, layers: str | Sequence[str], *, pool: str = "avg",
             batch_size: int | str | None = None, progress: bool = False, start: int = 0,
             stop: int | None = None) -> dict[str, torch.Tensor]:
    """One ``[N, D]`` float32 CPU feature matrix per layer, the dataset streamed in batches.

    A feature vector is the layer's output for one image: for a ``[C, H, W]`` map, its
    channel means (``pool="avg"``, D = C), channel maxima (``"max"``) or every value
    (``"flatten"``, D = C*H*W); a ``[D]`` output is kept as it is. A transformer block's tokens
    ``[L, C]`` or channels-last map ``[h, w, C]`` is read as ``[C, h, w]`` first (prefix tokens such
    as a class token left out, :mod:`underhood.core.layout`); ``"flatten"`` keeps its every value.
    The layer name ``"input"`` stands for the pixels themselves, always flattened (D = C*H*W,
    whatever ``pool``).
    The model runs in eval mode without gradients, and its forward pass stops after the deepest
    layer asked for when it can; it is restored on return.

    Args:
        dataset: an ImageSet or a ``[N, C, H, W]`` tensor in ``[0, 1]``.
        layers: one name or several (dotted paths, or ``"input"``).
        start, stop: take the images ``start:stop`` only (to shard a dataset over processes;
            the shards' features concatenate to the whole's).

    Example:
        >>> f = features(model, underhood.datasets.digits(), ["input", "fc2"])   # doctest: +SKIP
        >>> f["fc2"].shape                                                      # doctest: +SKIP
        torch.Size([360, 84])
    """
    from tqdm.auto import tqdm

    images = dataset_images(dataset, model)
    names = _names(layers)
    choice("pool", pool, POOLS)
    n = len(images)
    stop = n if stop is None else stop
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= n):
        raise InputError(f"start, stop: expected 0 <= start < stop <= {n}, got {start!r}, {stop!r}")
    hooked = [name for name in names if name != INPUT]
    for name in hooked:
        resolve(model, name)  # an unknown name fails here, with close matches
    if hooked:
        size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    else:
        size = INPUT_BATCH if batch_size is None or batch_size == "auto" else \
            resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    out: dict[str, torch.Tensor] = {}
    part_images = images[start:stop]
    if hooked:  # the forward pass stops after the deepest layer asked for (see core.hooks.stream)
        passes = stream(model, hooked, part_images, size, progress=progress, desc="features")
    else:
        passes = ((part, {}) for part in tqdm(list(batches(stop - start, size)), desc="features",
                                              disable=not progress, leave=False))
    for part, acts in passes:
        for name in names:
            f = part_images[part].flatten(1) if name == INPUT else \
                _pooled(acts[name], pool, tuple(images.shape[-2:]), name)
            if name not in out:  # allocated once: memory is the result's, not twice it
                out[name] = torch.empty(stop - start, f.shape[1], dtype=torch.float32)
            out[name][part] = f.float().cpu()
    return {name: out[name] for name in names}


def knn_accuracy(points: torch.Tensor, labels: torch.Tensor, k: int = 10, *, chunk: int = 2048) -> float:
    """Leave-one-out ``k``-NN accuracy: each point takes the majority label of its ``k`` nearest
    other points (Euclidean); ties go to the smallest class index (as scikit-learn's
    ``KNeighborsClassifier``). ``k`` is clipped to ``N - 1`` with a warning (with ``k >= N - 1`` every
    other point votes, whatever the layout); fewer than 2 points give NaN with a warning."""
    points, labels = points.double(), labels.long().cpu()
    n = len(points)
    if n < 2:
        warnings.warn(f"knn_accuracy: {n} point(s) have no neighbour to vote; the accuracy is NaN", UserWarning,
                      stacklevel=2)
        return float("nan")
    if k > n - 1:
        warnings.warn(f"k: {k} neighbours asked of {n} points; using k = {n - 1} (every other point votes, "
                      "so the score says little): embed more images or pass a smaller k", UserWarning, stacklevel=2)
        k = n - 1
    n_classes = int(labels.max()) + 1
    correct = 0
    for rows in batches(n, chunk):
        d = torch.cdist(points[rows], points)
        d[torch.arange(d.shape[0]), torch.arange(rows.start, rows.stop)] = float("inf")  # not itself
        index = d.topk(k, largest=False).indices
        votes = torch.nn.functional.one_hot(labels[index], n_classes).sum(1)
        correct += int((votes.argmax(1) == labels[rows]).sum())
    return correct / n


def trustworthiness(features: torch.Tensor, points: torch.Tensor, k: int = 10, *, max_rows: int | None = TRUST_ROWS,
                    seed: int = 0, chunk: int = 512) -> float:
    """Trustworthiness of a low-dimensional layout ``points`` of ``features`` (Venna & Kaski 2001).

    ``T(k) = 1 - 2 / (n k (2n - 3k - 1)) * sum_i sum_{j in U_k(i)} (r(i, j) - k)``, where
    ``U_k(i)`` are the points among the ``k`` nearest of ``i`` in the layout but not in the
    features and ``r(i, j)`` is the rank of ``j`` among ``i``'s neighbours in the features
    (1 = nearest); the definition of ``sklearn.manifold.trustworthiness``. 1 means every
    layout neighbourhood is a true one. With more than ``max_rows`` points, the sum runs
    over a seeded random sample of ``max_rows`` points ``i`` (neighbours among all) and is
    scaled up: an unbiased estimate at O(max_rows * n) cost instead of O(n^2).
    """
    x, y = features.double(), points.double()
    n = len(x)
    if not 0 < k < n / 2:
        raise InputError(f"k: trustworthiness needs 0 < k < n/2 = {n / 2:g}; pass a smaller k or more images")
    rows = torch.arange(n)
    if max_rows is not None and n > max_rows:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values
    total = 0.0
    for part in batches(len(rows), chunk):
        i = rows[part]
        near = torch.cdist(y[i], y)
        near[torch.arange(len(i)), i] = float("inf")
        embedded = near.topk(k, largest=False).indices      # [B, k] neighbours in the layout
        d = torch.cdist(x[i], x)
        d[torch.arange(len(i)), i] = float("inf")
        ranks = torch.searchsorted(d.sort(1).values, d.gather(1, embedded)) + 1  # rank among the others
        total += float((ranks - k).clamp(min=0).sum())
    total *= n / len(rows)
    return 1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * total


def _reduce(x: torch.Tensor, dims: int | None, seed: int):
    """PCA of ``x`` to ``min(dims, D, N)`` components (a numpy array); ``dims=None`` keeps ``x``."""
    import numpy as np
    from sklearn.decomposition import PCA

    n, d = x.shape
    if dims is None:
        return x.numpy().astype(np.float32)
    q = min(dims, d, n)
    if d <= 1000 and n >= 10 * d:
        solver = "covariance_eigh"  # D x D eigenproblem: fastest for many points of few features
    elif q < 0.8 * min(n, d):
        solver = "randomized"
    else:
        solver = "full"
    return PCA(q, svd_solver=solver, random_state=seed).fit_transform(x.numpy()).astype(np.float32)


def _threads(n: int, n_jobs: int | None) -> int:
    if n_jobs is not None:
        return n_jobs
    return (torch.get_num_threads() or os.cpu_count() or 1) if n >= THREADED_FROM else 1


def _umap():
    try:
        import umap
    except ImportError as exc:
        raise InputError("method: 'umap' needs umap-learn; pip install underhood[umap], or pick 'tsne' or 'pca'") \
            from exc
    return umap


def _layout(z, method: str, perplexity: float, seed: int, n_jobs: int | None = None, steps: int | None = None):
    """2-D layout of the (PCA-reduced) rows ``z``; ``steps`` optimisation steps (``None``: the library's)."""
    import numpy as np

    n = len(z)
    if method == "pca":
        out = z[:, :2]
    elif method == "tsne":
        import openTSNE

        p = min(float(perplexity), (n - 1) / 3)  # openTSNE needs 3 * perplexity < n
        # a third of the steps with early exaggeration, as openTSNE's default 250 + 500
        iters = {} if steps is None else {"early_exaggeration_iter": steps // 3, "n_iter": steps - steps // 3}
        out = openTSNE.TSNE(n_components=2, perplexity=p, random_state=seed, n_jobs=_threads(n, n_jobs),
                            initialization="pca", verbose=False, **iters).fit(z)
    else:
        neighbours = int(min(15, n - 1))
        out = _umap().UMAP(n_components=2, n_neighbors=neighbours, random_state=seed, n_epochs=steps).fit_transform(z)
    out = np.asarray(out, dtype=np.float32)
    if out.shape[1] < 2:  # one feature: lay it out on a line
        out = np.concatenate([out, np.zeros((n, 2 - out.shape[1]), np.float32)], 1)
    return torch.from_numpy(np.ascontiguousarray(out))


def embed_features(feats: dict[str, torch.Tensor], method: str = "tsne", *, labels: torch.Tensor | None = None,
                   pca_dims: int | None = 50, perplexity: float = 30.0, seed: int = 0, k: int = 10,
                   scores: bool = True, n_jobs: int | None = None, steps: int | None = None) -> Embedding:
    """The 2-D part of :func:`embed`, on features already computed (e.g. by a distributed pass).

    Per layer: PCA to ``min(pca_dims, D, N)`` dimensions (no standardisation; ``pca_dims=None``
    skips it), then ``method``: ``"pca"`` keeps the first two principal components,
    ``"tsne"`` runs openTSNE (PCA initialisation, perplexity clipped to ``(N - 1) / 3``),
    ``"umap"`` runs umap-learn (the ``umap`` extra). With ``scores``, the layout is scored
    with the leave-one-out ``k``-NN accuracy (when ``labels`` are given) and the
    trustworthiness w.r.t. the layer's full features (see :func:`trustworthiness`).

    Args:
        feats: layer -> ``[N, D]`` features, the same ``N`` images for every layer.
        labels: ``[N]`` class indices, or ``None``.
        seed: seeds PCA and the layout; the same seed gives the same coordinates (whatever ``n_jobs``).
        n_jobs: t-SNE threads; ``None``: ``torch.get_num_threads()`` from :data:`THREADED_FROM`
            points on, one below (threads cost more than they give on small layouts).
        steps: optimisation steps of t-SNE (a third of them with early exaggeration) or UMAP
            epochs; ``None`` keeps the library's default (t-SNE: 750). A few hundred lay out a
            few hundred points well; more points want more steps.

    Returns:
        An :class:`Embedding`.
    """
    choice("method", method, METHODS)
    if not isinstance(feats, dict) or not feats:
        raise InputError("feats: expected a dict layer -> [N, D] features with at least one layer")
    sizes = {len(f) for f in feats.values()}
    if len(sizes) != 1 or any(f.ndim != 2 for f in feats.values()):
        raise InputError(f"feats: expected [N, D] tensors with the same N, got shapes "
                         f"{[tuple(f.shape) for f in feats.values()]}")
    n = sizes.pop()
    if n < 4:
        raise InputError(f"feats: {n} images is too few to embed; give at least 4")
    if pca_dims is not None and (isinstance(pca_dims, bool) or not isinstance(pca_dims, int) or pca_dims < 2):
        raise InputError(f"pca_dims: expected an int >= 2 or None, got {pca_dims!r}")
    positive_int("k", k)
    number("perplexity", perplexity, strict=True)
    if steps is not None:
        positive_int("steps", steps)
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (n,):
            raise InputError(f"labels: expected [{n}] class indices, got shape {tuple(labels.shape)}")
    if method == "umap":
        _umap()  # missing: say so before any work
    result = Embedding({}, labels, method, list(feats), k=k, seed=seed)
    for name, f in feats.items():
        f = f.detach().float().cpu()
        coords = _layout(_reduce(f, pca_dims, seed), method, perplexity, seed, n_jobs, steps)
        result.coords[name] = coords
        if scores:
            kk = min(k, (n - 1) // 2)
            result.trustworthiness[name] = trustworthiness(f, coords, kk, seed=seed)
            if labels is not None:
                result.knn_accuracy[name] = knn_accuracy(coords, labels, k)
    return result


def embed(model: nn.Module, dataset: object, layers: str | Sequence[str], method: str = "tsne", *,
          pool: str = "avg", pca_dims: int | None = 50, perplexity: float = 30.0, seed: int = 0,
          labels: torch.Tensor | None = None, batch_size: int | str | None = None, progress: bool = False,
          k: int = 10, n_jobs: int | None = None, steps: int | None = None) -> Embedding:
    """The same images laid out in 2-D at each layer: :func:`features`, then :func:`embed_features`.

    Args:
        dataset: an ImageSet (its labels colour the points unless ``labels`` is given) or a
            ``[N, C, H, W]`` tensor.
        layers: dotted layer names; ``"input"`` is the pixels.
        method: ``"tsne"`` (default), ``"pca"`` or ``"umap"``.
        pool: how a ``[C, H, W]`` map becomes a vector (see :func:`features`).

    Example:
        >>> e = embed(load_model("digits"), underhood.datasets.digits(), ["input", "fc2"])  # doctest: +SKIP
        >>> e.coords["fc2"].shape, e.knn_accuracy["fc2"] > e.knn_accuracy["input"]          # doctest: +SKIP
        (torch.Size([360, 2]), True)
    """
    choice("method", method, METHODS)  # before the forward pass, not after it
    if method == "umap":
        _umap()
    if labels is None:
        labels = getattr(dataset, "labels", None)
    feats = features(model, dataset, layers, pool=pool, batch_size=batch_size, progress=progress)
    return embed_features(feats, method, labels=labels, pca_dims=pca_dims, perplexity=perplexity, seed=seed, k=k,
                          n_jobs=n_jobs, steps=steps)


def swiss_roll(n: int = 1000, *, noise_dims: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of a swiss roll with ``noise_dims`` noise dimensions (EE-559's t-SNE example).

    A point at position ``t ~ U[1.5 pi, 4.5 pi]`` along the roll is ``(t cos t, t sin t)``, followed by
    ``noise_dims`` coordinates drawn from ``U[0, 21]`` (the roll's width, which carries no structure):
    with one noise dimension it is the classic 3-D swiss roll of scikit-learn's ``make_swiss_roll``
    (its coordinates reordered, without its Gaussian jitter).

    Returns:
        ``(points [n, 2 + noise_dims], t [n])``, float32, the same for the same seed.
    """
    positive_int("n", n)
    if isinstance(noise_dims, bool) or not isinstance(noise_dims, int) or noise_dims < 0:
        raise InputError(f"noise_dims: expected an int >= 0, got {noise_dims!r}")
    g = torch.Generator().manual_seed(seed)
    t = 1.5 * torch.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    noise = 21 * torch.rand(n, noise_dims, generator=g, dtype=torch.float64)
    points = torch.cat([torch.stack([t * t.cos(), t * t.sin()], 1), noise], 1)
    return points.float(), t.float()


def grid_cells(coords: torch.Tensor, *, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Each point of a 2-D layout snapped to its own cell of a regular grid (the "t-SNE grid" of
    Karpathy's fc7 figures): ``[N, 2]`` long ``(row, column)``, no two points in the same cell.

    The coordinates are min-max scaled to ``[0, 1]`` per axis; cell ``(r, q)`` of a ``rows x cols``
    grid has centre ``((q + 0.5) / cols, 1 - (r + 0.5) / rows)`` (row 0 at the top, as the layout is
    drawn), and the cells are chosen to minimise the total squared distance from the points to their
    cells: a linear assignment (``scipy.optimize.linear_sum_assignment``), exact.

    Args:
        coords: ``[N, 2]`` layout (t-SNE, PCA ...).
        shape: ``(rows, cols)`` with ``rows * cols >= N`` (default: the smallest square grid).
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    xy = torch.as_tensor(coords).detach().double().cpu()
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise InputError(f"coords: expected a non-empty [N, 2] layout, got shape {tuple(xy.shape)}")
    n = len(xy)
    if shape is None:
        side = int(np.ceil(np.sqrt(n)))
        shape = (side, side)
    rows, cols = (int(v) for v in shape)
    if rows < 1 or cols < 1 or rows * cols < n:
        raise InputError(f"shape: a {rows}x{cols} grid has fewer cells than the {n} points; give rows * cols >= {n}")
    lo, hi = xy.min(0).values, xy.max(0).values
    unit = (xy - lo) / (hi - lo).clamp_min(1e-12)
    r, q = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    centres = torch.stack([(q.flatten() + 0.5) / cols, 1 - (r.flatten() + 0.5) / rows], 1)
    cost = torch.cdist(unit, centres) ** 2
    points, cells = linear_sum_assignment(cost.numpy())
    out = torch.empty(n, 2, dtype=torch.long)
    cells = torch.as_tensor(cells, dtype=torch.long)
    out[torch.as_tensor(points, dtype=torch.long)] = torch.stack([cells // cols, cells % cols], 1)
    return out


__all__ = ["Embedding", "features", "embed", "embed_features", "knn_accuracy", "trustworthiness", "INPUT",
           "swiss_roll", "grid_cells"]

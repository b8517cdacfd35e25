"""Multifaceted feature visualisation (Nguyen, Yosinski & Clune 2016).

A class unit fires for several kinds of images (a "grocery store" for rows of produce and for a
storefront); one activation maximisation mixes them. Nguyen et al. separate the kinds first:

1. the training images of the class are embedded by a layer's activations and clustered (they reduce
   fc7 codes with PCA and t-SNE, then run k-means); each cluster is one *facet*;
2. each facet's optimisation starts from the *mean image* of its cluster, so that it keeps that
   facet's colours, layout and scale;
3. a *centre bias* steers each picture towards one central object instead of repeated fragments: the
   optimisation runs in phases, the first updating the whole image under a strong blur, each later one
   only a smaller centred window under a weaker blur, so that the centre gets more updates than the
   border.

Our version runs k-means (seeded, scikit-learn) on the flattened activations themselves (no t-SNE: the
clusters must not depend on an embedding's randomness), maximises the class logit with
:func:`~underhood.synthesis.render.render` on pixels, and realises the centre bias with render's ``mask``
(the gradient and the blur of phase ``p`` touch only its window). The diversity-term facets of Olah et
al. (:func:`~underhood.synthesis.objectives.diversity`) are the data-free alternative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checks import positive_int
from ..core.device import model_device
from ..core.errors import InputError
from ..core.results import Result
from .objectives import class_logit
from .priors import Priors
from .render import probe, render


@dataclass(repr=False)
class Multifaceted(Result):
    """The facets of class ``target`` at ``layer``: ``images [K, C, H, W]`` in ``[0, 1]``, one per cluster;
    ``starts [K, C, H, W]`` the cluster mean images they started from; ``sizes [K]`` the clusters' sizes;
    ``assignment [n]`` the cluster of each class image, ``indices [n]`` their positions in the data;
    ``start_logit``/``final_logit [K]`` the class logit of the starts and of the facets; ``stages
    [P, K, C, H, W]`` the images after each phase of the centre bias."""

    target: int
    layer: str
    images: torch.Tensor
    starts: torch.Tensor
    sizes: torch.Tensor
    assignment: torch.Tensor
    indices: torch.Tensor
    start_logit: torch.Tensor
    final_logit: torch.Tensor
    stages: torch.Tensor
    windows: torch.Tensor
    info: dict = field(default_factory=dict)

    def scalars(self) -> dict:
        """Class, layer, facets, class images, smallest and largest cluster, mean logit at start and end."""
        return {"target": self.target, "layer": self.layer, "facets": len(self.images), "n": len(self.assignment),
                "smallest": int(self.sizes.min()), "largest": int(self.sizes.max()),
                "start_logit": float(self.start_logit.mean()), "final_logit": float(self.final_logit.mean())}

    def figure(self, titles: Sequence[str] | None = None, **kwargs):
        """Starts (top row) over facets (bottom row), each titled with its cluster size and logit
        (:func:`underhood.viz.synthesis.gallery_figure`; ``kwargs`` go to it)."""
        from ..viz.synthesis import gallery_figure

        k = len(self.images)
        if titles is None:
            titles = ([f"mean of {int(n)}\nlogit {float(v):.1f}" for n, v in zip(self.sizes, self.start_logit)]
                      + [f"facet {i}\nlogit {float(v):.1f}" for i, v in enumerate(self.final_logit)])
        return gallery_figure(torch.cat([self.starts, self.images]), titles, ncols=k, **kwargs)


def centre_windows(size: Sequence[int], phases: int, *, smallest: float = 0.5) -> torch.Tensor:
    """The centre bias's windows: ``[phases, H, W]`` masks, phase ``p`` a centred rectangle whose sides are the
    fraction ``1 - p (1 - smallest) / (phases - 1)`` of the image's (the whole image first, ``smallest`` last).

    Example:
        >>> centre_windows((4, 4), 2).sum((1, 2)).tolist()
        [16.0, 4.0]
    """
    positive_int("phases", phases)
    if not 0 < smallest <= 1:
        raise InputError(f"smallest: expected a fraction in (0, 1], got {smallest!r}")
    h, w = int(size[0]), int(size[1])
    masks = torch.zeros(phases, h, w)
    for p in range(phases):
        frac = 1.0 - p * (1.0 - smallest) / max(phases - 1, 1)
        sh, sw = max(1, round(h * frac)), max(1, round(w * frac))
        top, left = (h - sh) // 2, (w - sw) // 2
        masks[p, top:top + sh, left:left + sw] = 1.0
    return masks


def _class_images(data: object, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of class ``target`` in ``data`` (an ImageSet, or images that are all of the class) and their
    positions."""
    images = getattr(data, "images", data)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError("data: expected an ImageSet or the class's images [N, C, H, W]; got "
                         f"{type(data).__name__}")
    labels = getattr(data, "labels", None)
    if labels is None:
        return images, torch.arange(len(images))
    indices = torch.nonzero(torch.as_tensor(labels) == target).flatten()
    return images[indices], indices


def _activations(model: nn.Module, images: torch.Tensor, layer: str, batch_size: int) -> torch.Tensor:
    """``[n, D]``: ``layer``'s activations of each image, flattened (batched, no gradient)."""
    device = model_device(model)
    with probe(model, [layer], need_logits=False) as run, torch.no_grad():
        return torch.cat([run(images[i:i + batch_size].to(device).float())[0][layer].reshape(
            len(images[i:i + batch_size]), -1).cpu() for i in range(0, len(images), batch_size)])


def _kmeans(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Cluster labels ``[n]`` of seeded k-means (scikit-learn, 10 restarts), numbered by decreasing size."""
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features.double().numpy())
    labels = torch.as_tensor(labels, dtype=torch.long)
    order = torch.argsort(-torch.bincount(labels, minlength=k), stable=True)  # largest cluster first
    return torch.argsort(order)[labels]


def multifaceted(model: nn.Module, data: object, target_class: int, *, layer: str, n_facets: int = 4,
                 steps: int = 150, lr: float = 0.05, phases: int = 3, center_bias: bool = True,
                 smallest: float = 0.5, blur: float = 1.0, l2: float = 0.0, jitter: int = 0, seed: int = 0,
                 batch_size: int = 64, progress: bool = False) -> Multifaceted:
    """Multifaceted feature visualisation of class ``target_class`` (Nguyen, Yosinski & Clune 2016).

    The images of the class in ``data`` are clustered by ``layer``'s activations (k-means with ``n_facets``
    clusters, seeded by ``seed``); each cluster's mean image is the start of one activation maximisation
    of the class logit (pixels, Adam at ``lr``, ``steps`` in all). With ``center_bias`` the ``steps`` are
    split into ``phases``: phase ``p`` updates only the window ``centre_windows(...)[p]`` (the whole image,
    then smaller centred windows down to the fraction ``smallest`` of each side) and blurs it by a
    Gaussian of ``blur * (phases - p) / phases`` pixels after each step (Yosinski et al.'s operation, the
    blur fading as the window shrinks): the centre receives the most updates, so one central object
    forms. Without it, one phase over the whole image at blur ``blur / phases``.

    Args:
        data: an ImageSet (its images labelled ``target_class`` are used) or the class's images ``[N, C, H, W]``
            in ``[0, 1]`` (the paper uses the training set).
        layer: the layer whose activations are clustered (the paper: fc7, the last hidden layer).
        l2: weight of the L2 decay towards grey (:func:`~underhood.synthesis.priors.l2`, a sum over pixels).
        jitter: random shifts of up to ``jitter`` pixels at each step (0: none).
        batch_size: images per forward pass when computing the activations.

    Returns:
        A :class:`Multifaceted`: the facets, their starts (the cluster means), the cluster sizes and
        assignment, the class logit before and after, the images after each phase.

    Example:
        >>> r = multifaceted(model, underhood.datasets.shapes(400, seed=1), 2, layer="features.16")  # doctest: +SKIP
        >>> r.sizes, r.final_logit                                                                   # doctest: +SKIP
    """
    positive_int("n_facets", n_facets)
    positive_int("steps", steps)
    positive_int("phases", phases)
    images, indices = _class_images(data, target_class)
    if len(images) < n_facets:
        raise InputError(f"n_facets: {n_facets} clusters need at least as many images of class {target_class}, "
                         f"got {len(images)}; pass more data or fewer facets")
    images = images.detach().float().cpu()
    assignment = _kmeans(_activations(model, images, layer, batch_size), n_facets, seed)
    sizes = torch.bincount(assignment, minlength=n_facets)
    starts = torch.stack([images[assignment == k].mean(0) for k in range(n_facets)])
    count = phases if center_bias else 1
    windows = centre_windows(images.shape[-2:], count, smallest=smallest) if center_bias \
        else torch.ones(1, *images.shape[-2:])
    per_phase = [steps // count + (1 if p < steps % count else 0) for p in range(count)]
    objective = [class_logit(target_class)] * n_facets
    x, stages, logits = starts, [], None
    size = tuple(images.shape[-3:])
    for p, n_steps in enumerate(per_phase):
        if n_steps == 0:
            stages.append(x)
            continue
        sigma = blur * (count - p) / count if center_bias else blur / phases
        priors = Priors(l2=l2, blur_sigma=sigma) if (sigma or l2) else None
        result = render(model, objective, param="pixels", size=size, steps=n_steps, lr=lr, init=x,
                        transforms={"jitter": jitter} if jitter else "none", priors=priors, seed=seed + p,
                        mask=windows[p], progress=progress)
        if logits is None:
            logits = result.start
        # outside the window the start is kept exactly (the pixel parametrisation's logit/sigmoid round trip
        # would move it by a rounding error)
        x = torch.where(windows[p] > 0, result.images, x)
        stages.append(x)
        final = result.final
    return Multifaceted(target_class, layer, x, starts, sizes, assignment, indices, logits, final, torch.stack(stages),
                        windows, {"steps": steps, "lr": lr, "phases": count, "center_bias": center_bias,
                                  "blur": blur, "l2": l2, "jitter": jitter, "seed": seed})

"""Features over training (Zeiler & Fergus 2014, Fig. 4): what a few units respond to at each weight
snapshot of a training run.

For each snapshot that ``train(checkpoint_every=N)`` (``underhood train --checkpoint-every N``) wrote, and
each chosen unit of a layer, the images of a dataset that excite the unit most, with the receptive-field
patch around the strongest position and its deconvnet projection: :func:`underhood.activations.top_patches`
run on the reloaded snapshot. Zeiler & Fergus show the single strongest activation over the training set
(``k=1``), projected to pixels with their deconvnet, at epochs 1, 2, 5, 10, 20, 30, 40 and 64: lower
layers settle within a few epochs, upper ones only after many.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.errors import InputError
from ..core.inputs import dataset_images
from ..core.results import Result
from ..models.checkpoints import Checkpoint, load_checkpoints
from .patches import top_patches


@dataclass(repr=False)
class Evolution(Result):
    """What :func:`evolution` found: per snapshot ``e`` and unit ``u = units[j]``, its top ``k`` images.

    Attributes:
        layer: the layer's name.
        units: ``[U]`` the channels followed.
        epochs: ``[E]`` the snapshots' epochs (0: the initialisation).
        steps: ``[E]`` optimizer steps at each snapshot.
        accuracy: ``[E]`` held-out accuracy recorded with each snapshot (NaN when not recorded).
        values: ``[E, U, k]`` the unit's maximum over positions on its top images, descending.
        index: ``[E, U, k]`` the dataset index of those images.
        position: ``[E, U, k, 2]`` ``(y, x)`` of the maximum in the layer's map.
        box: ``[E, U, k, 4]`` the receptive field around it, in input pixels (half-open).
        patches: ``[E, U, k, C, fh, fw]`` the images cut to the boxes.
        patterns: ``[E, U, k, C, fh, fw]`` the units' ``rule`` projection cut to the boxes (raw), or ``None``.
        rule: the ReLU rule of the patterns (``"deconvnet"``, ``"guided"``, ``"gradient"``) or ``None``.
        n: images scanned at each snapshot.
    """

    layer: str
    units: torch.Tensor
    epochs: torch.Tensor
    steps: torch.Tensor
    accuracy: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor
    position: torch.Tensor
    box: torch.Tensor
    patches: torch.Tensor
    patterns: torch.Tensor | None = None
    rule: str | None = None
    n: int = 0
    info: dict = field(default_factory=dict)

    def scalars(self) -> dict:
        """Layer, sizes, and how many units' strongest image changed between the last two snapshots."""
        out: dict = {"layer": self.layer, "units": int(self.units.numel()), "snapshots": int(self.epochs.numel()),
                     "k": int(self.index.shape[-1]), "n": self.n}
        if self.rule is not None:
            out["rule"] = self.rule
        if len(self.epochs) >= 2:
            out["changed_last"] = int((self.index[-1, :, 0] != self.index[-2, :, 0]).sum())
        return out

    def figure(self, **kwargs):
        """The grid figure (:func:`underhood.viz.activations_course.evolution_figure`; ``kwargs`` go to it)."""
        from ..viz.activations_course import evolution_figure

        return evolution_figure(self, **kwargs)


def _snapshots(checkpoints: object, epochs: Sequence[int] | None) -> list[Checkpoint]:
    if isinstance(checkpoints, (str, os.PathLike)):
        found = load_checkpoints(checkpoints)
    elif isinstance(checkpoints, Sequence) and all(isinstance(c, Checkpoint) for c in checkpoints):
        found = list(checkpoints)
    else:
        raise InputError(f"checkpoints: expected a checkpoint folder or a list of Checkpoint, got "
                         f"{type(checkpoints).__name__}; give the folder train(..., checkpoint_every=N) wrote")
    if epochs is not None:
        wanted = [int(e) for e in epochs]
        have = {c.epoch: c for c in found}
        missing = [e for e in wanted if e not in have]
        if missing:
            raise InputError(f"epochs: no snapshot at epoch {missing[0]}; the run kept epochs {sorted(have)}")
        found = [have[e] for e in wanted]
    if not found:
        raise InputError("checkpoints: the folder holds no snapshot; give one a training run wrote")
    return found


def evolution(checkpoints: object, data: object, *, layer: str, units: Sequence[int] | torch.Tensor, k: int = 1,
              epochs: Sequence[int] | None = None, pattern: str | None = "deconvnet",
              batch_size: int | str | None = None, device: str | torch.device = "cpu") -> Evolution:
    """The top-``k`` patches of ``units`` of ``layer`` at each weight snapshot (Zeiler & Fergus 2014, Fig. 4).

    Each snapshot is loaded (:meth:`Checkpoint.load`) and :func:`underhood.activations.top_patches` scans
    ``data`` for the chosen channels: a channel's score on an image is its maximum over positions; the
    patch is the receptive field of the winning position, the pattern its ``pattern`` projection
    (Zeiler & Fergus: the deconvnet, ``k=1``).

    Args:
        checkpoints: the folder a ``train(..., checkpoint_every=N)`` run wrote, or a list of
            :class:`~underhood.models.checkpoints.Checkpoint`.
        data: an ImageSet or an ``[N, C, H, W]`` tensor in ``[0, 1]``.
        layer: a layer name of the trained architecture.
        units: the channels to follow.
        k: images per unit and snapshot.
        epochs: the snapshots' epochs to use (default: all, in order).
        pattern: ``"deconvnet"``, ``"guided"``, ``"gradient"`` or ``None`` (patches only).
        device: where the snapshots are loaded and run.

    Example:
        >>> data = test_set("shapes", 500)                                                       # doctest: +SKIP
        >>> ev = evolution("shapes-checkpoints", data, layer="features.10", units=[0, 5])      # doctest: +SKIP
        >>> ev.figure()                                                                          # doctest: +SKIP
    """
    found = _snapshots(checkpoints, epochs)
    images = dataset_images(data, None, "data")
    channels = torch.as_tensor(list(units) if not isinstance(units, torch.Tensor) else units).long().flatten()
    if channels.numel() == 0:
        raise InputError("units: expected at least one channel to follow")
    parts = []
    for cp in found:
        model = cp.load(device)
        parts.append(top_patches(model, images, layer, k, channels=channels.tolist(), pattern=pattern,
                                 batch_size=batch_size))
    stack = {name: torch.stack([getattr(p, name) for p in parts]) for name in
             ("values", "index", "position", "box", "patches")}
    patterns = torch.stack([p.patterns for p in parts]) if pattern is not None else None
    accuracy = torch.tensor([float(cp.metrics.get("test_accuracy", float("nan"))) for cp in found])
    return Evolution(layer, channels, torch.tensor([cp.epoch for cp in found]), torch.tensor([cp.step for cp in found]),
                     accuracy, stack["values"], stack["index"], stack["position"], stack["box"], stack["patches"],
                     patterns, parts[-1].rule, len(images), info={"field": parts[-1].field})

"""Linear probes over training: the probe curve (accuracy against layer) at every weight snapshot of a run.

Alain & Bengio (2016) watched the probes of every layer improve as training went on. Here the snapshots
are the ones ``train(..., checkpoint_every=N)`` keeps (:mod:`underhood.models.checkpoints`): either probe
them afterwards (:func:`probe_history` on the folder) or while training runs (``on_checkpoint=``
:func:`probe_callback`, which also stores each curve in the checkpoint index). Each snapshot is probed with
:func:`underhood.transfer.probe`; the pixels baseline does not change with the weights and is fitted once,
and the epoch-0 snapshot (the initialisation) plays the random copy's part.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.checks import choice, positive_int
from ..core.device import resolve_device
from ..core.errors import InputError
from ..core.results import Result
from ..data.imageset import ImageSet
from ..models.checkpoints import Checkpoint, load_checkpoints
from .probe import L2, PIXELS, POOLS, probe

PROBE_SEED = 864_209_999
"""Seed of the procedural shapes the probes learn from during training: epoch 999 of training seed 864,209, so no
run of fewer than 1,000 epochs draws them (training epochs use seed ``seed * 1000 + epoch``)."""
N_TRAIN = 1000
N_TEST = 500
"""Default probe sets: small, so probing every epoch stays a small share of the training time."""


@dataclass(repr=False)
class ProbeHistory(Result):
    """Probe curves of one training run, one per snapshot.

    Attributes:
        epochs: the snapshots' epochs, in order (0: the initialisation).
        curves: epoch -> ordered layer -> held-out probe accuracy (the model's layers, input to output).
        steps: epoch -> optimizer steps taken by then.
        model_accuracy: epoch -> the model's own accuracy on the probes' test set (``None`` when its classes are
            not the labels').
        pixels: the raw pixels' probe accuracy (one value: it does not depend on the weights); chance: the test
            set's most frequent class's share.
        layers, rf, pool, l2, n_train, n_test, classes: as in :class:`underhood.transfer.ProbeResult`.
    """

    epochs: list[int]
    curves: dict[int, dict[str, float]]
    steps: dict[int, int] = field(default_factory=dict)
    model_accuracy: dict[int, float | None] = field(default_factory=dict)
    pixels: float | None = None
    chance: float = 0.0
    layers: list[str] = field(default_factory=list)
    rf: dict[str, str] = field(default_factory=dict)
    pool: str = "avg"
    l2: float = L2
    n_train: int = 0
    n_test: int = 0
    classes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.curves = OrderedDict((int(e), OrderedDict(c)) for e, c in sorted(self.curves.items()))
        self.epochs = sorted(int(e) for e in self.epochs)

    def scalars(self) -> dict[str, Any]:
        """The sizes, the baselines, and per layer the probe accuracy at the first and the last snapshot."""
        out: dict[str, Any] = {"snapshots": len(self.epochs), "first_epoch": self.epochs[0] if self.epochs else None,
                               "last_epoch": self.epochs[-1] if self.epochs else None, "pool": self.pool,
                               "n_train": self.n_train, "n_test": self.n_test, "chance": self.chance,
                               "pixels": self.pixels}
        if self.epochs:
            first, last = self.curves[self.epochs[0]], self.curves[self.epochs[-1]]
            for name in self.layers:
                out[f"first[{name}]"], out[f"last[{name}]"] = first.get(name), last.get(name)
        return out

    def figure(self, **kwargs):
        """Probe accuracy against layer, one line per epoch (:func:`underhood.viz.transfer.probe_history_figure`)."""
        from ..viz.transfer import probe_history_figure

        return probe_history_figure(self, **kwargs)


class ProbeCallback:
    """``on_checkpoint`` for :func:`underhood.models.train`: probes the snapshots of epoch 0, every ``every``-th
    epoch and the last; the curves so far are :attr:`history`. Make one with :func:`probe_callback`."""

    def __init__(self, train: object, test: object, *, every: int = 1, layers: Sequence[str] | str | None = None,
                 pool: str = "avg", l2: float = L2, batch_size: int | str | None = None,
                 progress: bool = False) -> None:
        positive_int("every", every)
        choice("pool", pool, POOLS)
        if layers is not None:
            names = [layers] if isinstance(layers, str) else list(layers)
            layers = [n for n in names if n != PIXELS]  # the pixels are probed once, as the baseline
            if not layers:
                raise InputError("layers: name at least one layer of the model besides 'pixels' (the pixels are "
                                 "probed once anyway), or leave layers out for the model's stages")
        self.train, self.test, self.every, self.layers = train, test, every, layers
        self.pool, self.l2, self.batch_size, self.progress = pool, l2, batch_size, progress
        self.history: ProbeHistory | None = None

    def due(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.epoch == 0 or checkpoint.epoch % self.every == 0 or checkpoint.last

    def __call__(self, model: nn.Module, checkpoint: Checkpoint) -> dict[str, Any] | None:
        """Probe ``model`` (the snapshot ``checkpoint``) and add its curve; returns what the index stores."""
        if not isinstance(checkpoint, Checkpoint):
            raise InputError(f"checkpoint: expected an underhood.models.checkpoints.Checkpoint, got "
                             f"{type(checkpoint).__name__}; pass the callback as train(..., on_checkpoint=...)")
        if not self.due(checkpoint):
            return None
        first = self.history is None
        r = probe(model, self.train, self.test, layers=self.layers, pool=self.pool,
                  baselines=("pixels",) if first else (), l2=self.l2, batch_size=self.batch_size,
                  progress=self.progress)
        curve = OrderedDict((n, r.accuracy[n]) for n in r.layers)
        if first:
            self.history = ProbeHistory([], {}, pixels=r.pixels, chance=r.chance, layers=list(r.layers), rf=r.rf,
                                        pool=r.pool, l2=r.l2, n_train=r.n_train, n_test=r.n_test,
                                        classes=r.classes)
        h = self.history
        if checkpoint.epoch in h.curves:
            raise InputError(f"checkpoint: epoch {checkpoint.epoch} is probed twice; give each snapshot once")
        h.epochs.append(checkpoint.epoch)
        h.curves[checkpoint.epoch] = curve
        h.steps[checkpoint.epoch] = checkpoint.step
        h.model_accuracy[checkpoint.epoch] = r.model_accuracy
        h.info.setdefault("fits", {})[checkpoint.epoch] = r.info.get("fits", {})
        return {"probe": {"accuracy": dict(curve), "model_accuracy": r.model_accuracy, "pixels": h.pixels,
                          "chance": h.chance, "pool": h.pool, "n_train": h.n_train, "n_test": h.n_test}}


def probe_callback(train: object, test: object, *, every: int = 1, layers: Sequence[str] | str | None = None,
                   pool: str = "avg", l2: float = L2, batch_size: int | str | None = None,
                   progress: bool = False) -> ProbeCallback:
    """An ``on_checkpoint`` that stores the probe curve of every ``every``-th snapshot while a model trains.

    Args:
        train, test: the probes' images and labels (ImageSets or ``(images, labels)``; :func:`probe_sets`
            makes small ones that no training epoch draws).
        every: probe epoch 0, every ``every``-th epoch and the last (a multiple of ``checkpoint_every`` probes
            only some snapshots); layers, pool, l2, batch_size: as for :func:`underhood.transfer.probe`.

    Example:
        >>> train_set, test_set = probe_sets("shapes")                                       # doctest: +SKIP
        >>> cb = probe_callback(train_set, test_set)                                         # doctest: +SKIP
        >>> underhood.models.train("shapes", epochs=6, checkpoint_every=1, checkpoints="ckpt",
        ...                        on_checkpoint=cb)                                         # doctest: +SKIP
        >>> cb.history.figure()                                                              # doctest: +SKIP
    """
    return ProbeCallback(train, test, every=every, layers=layers, pool=pool, l2=l2, batch_size=batch_size,
                         progress=progress)


def probe_history(checkpoints: str | os.PathLike | Sequence[Checkpoint], train: object, test: object, *,
                  layers: Sequence[str] | str | None = None, pool: str = "avg", l2: float = L2,
                  device: str | torch.device = "auto", batch_size: int | str | None = None,
                  progress: bool = False) -> ProbeHistory:
    """Probe every snapshot of a training run (Alain & Bengio 2016's probes over training).

    Args:
        checkpoints: the folder ``train(..., checkpoint_every=N)`` wrote, or its :func:`load_checkpoints` (a
            selection of them).
        train, test: the probes' data, as for :func:`underhood.transfer.probe`.
        device: where the snapshots are loaded and probed.

    Returns:
        A :class:`ProbeHistory`: ``curves[epoch][layer]``, ``.figure()`` (one line per epoch).
    """
    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = load_checkpoints(checkpoints)
    checkpoints = list(checkpoints)
    if not checkpoints or not all(isinstance(c, Checkpoint) for c in checkpoints):
        raise InputError("checkpoints: expected a checkpoint folder or a non-empty list of Checkpoint "
                         "(underhood.models.checkpoints.load_checkpoints(folder))")
    callback = ProbeCallback(train, test, layers=layers, pool=pool, l2=l2, batch_size=batch_size, progress=progress)
    dev = resolve_device(device)
    for checkpoint in sorted(checkpoints, key=lambda c: c.epoch):
        callback(checkpoint.load(dev), Checkpoint(checkpoint.epoch, checkpoint.step, checkpoint.metrics,
                                                  checkpoint.path, last=True))  # every given snapshot is probed
    assert callback.history is not None
    return callback.history


def probe_sets(data: str, probe_data: str | None = None, *, n_train: int | None = None,
               n_test: int | None = None) -> tuple[ImageSet, ImageSet]:
    """Small ``(train, test)`` probe sets for a model trained by ``train(data=DATA)`` (``underhood train``).

    The probes learn from ``n_train`` images no training epoch uses (procedural shapes from
    :data:`PROBE_SEED`; for digits, the training split's first ``n_train``) and are scored on the first
    ``n_test`` images of the run's held-out set (defaults :data:`N_TRAIN`, :data:`N_TEST`). ``probe_data``
    (a data spec, e.g. ``shapes:2000``) replaces the training images (shapes drawn from :data:`PROBE_SEED`).
    An image folder (as ``data`` or as ``probe_data``) is split into two seeded halves, at most ``n_train``
    and ``n_test`` images. (For digits the probes learn from images the model trained on: the dataset has
    no others.)
    """
    from pathlib import Path

    from ..data import from_spec
    from ..data.shapes import shapes
    from ..data.splits import RANDOM_LABELS, SHAPES_TEST_SIZE, test_set, training_data

    n_train = N_TRAIN if n_train is None else positive_int("n_train", n_train)
    n_test = N_TEST if n_test is None else positive_int("n_test", n_test)
    folder = probe_data if probe_data is not None and Path(probe_data).is_dir() else (
        data if probe_data is None and Path(data).is_dir() else None)
    if folder is not None:
        images = training_data(folder)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        half = len(images) // 2
        return images[order[:min(half, n_train)]], images[order[half:half + n_test]]
    if data == "digits":
        held_out = test_set(data)
        held_out = held_out[:min(n_test, len(held_out))]
    else:  # procedural: only the images asked for are made
        held_out = test_set(data, min(n_test, SHAPES_TEST_SIZE))
    if probe_data is not None:
        size, channels = tuple(held_out.images.shape[-2:]), int(held_out.images.shape[1])
        return from_spec(probe_data, seed=PROBE_SEED, size=size, channels=channels), held_out
    if data == "digits":
        return training_data("digits")[:n_train], held_out
    spurious = float(data.partition(":")[2] or 0.9) if data.startswith("shapes-spurious") else 0.0
    if data != RANDOM_LABELS and not data.startswith("shapes"):
        raise InputError(f"data: no probe sets are defined for {data!r}; give probe_data")
    return shapes(n_train, seed=PROBE_SEED, spurious=spurious), held_out


__all__ = ["ProbeHistory", "ProbeCallback", "probe_callback", "probe_history", "probe_sets", "PROBE_SEED"]

"""The training command behind the shipped weights: ``underhood train``.

Shapes models train on freshly generated images (seeds ``seed * 1000 + epoch``) and are
evaluated on images from :data:`SHAPES_TEST_SEED`, a seed no training run uses (the splits
live in :mod:`underhood.data.splits`). The loss is cross-entropy unless a
:class:`TrainingLoss` is given (adversarial training builds one in
:mod:`underhood.adversarial.training`).

Two data specs exist for evaluating attribution methods:

* ``"shapes-spurious[:p]"`` plants a class-coloured marker in a fraction ``p`` of the images (a
  "Clever Hans" shortcut); :func:`shortcut_accuracies` measures whether a model relies on it.
* ``"shapes-random-labels"`` is one fixed set of ``n_train`` images whose labels are a seeded
  permutation of the true ones (Adebayo et al. 2018's data-randomisation test); the model
  memorises it, and its held-out accuracy (true labels) stays near chance.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.checks import positive_int
from ..core.device import model_device, resolve_device
from ..core.errors import InputError
from ..core.io import atomic_path
from ..core.results import Result
from ..core.seeding import seeded
from ..core.state import evaluating, preserved
from ..data.imageset import ImageSet
from ..data.splits import (  # noqa: F401  (re-exported: the training command's public names)
    RANDOM_LABELS,
    SHAPES_TEST_SEED,
    SHAPES_TEST_SIZE,
    SHORTCUT_TEST_SEED,
    test_set,
    training_data,
)
from .architectures import ARCHITECTURES
from .checkpoints import Checkpoint, Snapshots, check_folder, default_folder, load_checkpoints  # noqa: F401
from .normalized import Normalized


@dataclass
class TrainingLoss:
    """A training loss other than cross-entropy, with what it adds to the weights' metadata.

    Attributes:
        fn: ``fn(model, x, y, **cross_entropy_options) -> scalar loss`` of one batch (model in training mode).
        meta: stored in the weights' metadata (e.g. ``{"adversarial": {"method": "fgsm", "eps": ...}}``).
        command: appended to the provenance command in the metadata.
        evaluate: ``evaluate(model, held_out) -> dict`` run after training; merged into the metadata.
    """

    fn: Callable[..., torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    evaluate: Callable[[torch.nn.Module, ImageSet], dict[str, Any]] | None = None


@dataclass(repr=False)
class TrainResult(Result):
    """What :func:`train` produced: the model (eval mode), its test accuracy and the weights file.

    ``history`` has one entry per epoch (``epoch``, ``loss``); evaluated epochs (every epoch up to
    20 epochs, else about ten of them and the last) add ``test_accuracy`` and, for a fixed
    training set, ``train_accuracy``. A saved result (``save``/``core.results.load``) keeps the
    model as its ``state_dict``.
    """

    model: Normalized
    accuracy: float
    path: Path | None
    history: list[dict[str, float]]

    def scalars(self) -> dict[str, Any]:
        """Held-out accuracy, the weights file, epochs and the last epoch's training loss."""
        out: dict[str, Any] = {"accuracy": self.accuracy, "path": None if self.path is None else str(self.path),
                               "epochs": len(self.history)}
        if self.history and "loss" in self.history[-1]:
            out["final_loss"] = self.history[-1]["loss"]
        return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageSet, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (the model's mode is restored)."""
    device = model_device(model)
    correct = 0
    with preserved(model):
        model.eval()
        for i in range(0, len(data), batch_size):
            x = data.images[i:i + batch_size].to(device)
            correct += int((model(x).argmax(1).cpu() == data.labels[i:i + batch_size]).sum())
    return correct / max(1, len(data))


@torch.no_grad()
def shortcut_accuracies(model: torch.nn.Module, n: int = 1000, seed: int = SHORTCUT_TEST_SEED) -> dict[str, Any]:
    """How much a shapes model relies on the spurious marker of ``"shapes-spurious"`` data.

    Three versions of the same ``n`` images (``shapes(n, seed=seed)``; the object is identical):

    * ``with_marker``: accuracy with the marker in its true class's colour (as in training);
    * ``no_marker``: accuracy without any marker (clean images);
    * ``wrong_marker``: accuracy when the marker has the colour of another, random class;
    * ``follows_marker``: the share of those wrong-marker images predicted as the marker's class.

    A model that cheats has high ``with_marker``, clearly lower ``wrong_marker`` and a
    ``follows_marker`` far above chance (1 / 8); a shape-only model scores alike on all three.
    """
    from ..data import shapes
    from ..data.shapes import recolour_markers

    marked = shapes(n, seed=seed, spurious=1.0)
    clean = shapes(n, seed=seed, spurious=0.0)
    k = len(marked.classes)
    g = torch.Generator().manual_seed(seed)
    other = (marked.labels + torch.randint(1, k, (n,), generator=g)) % k
    wrong = recolour_markers(marked, other)
    follows = ImageSet(wrong.images, other, wrong.classes)
    return {"with_marker": accuracy(model, marked), "no_marker": accuracy(model, clean),
            "wrong_marker": accuracy(model, wrong), "follows_marker": accuracy(model, follows),
            "n": n, "seed": seed}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and 90-degree turns (the shape classes are rotation-invariant)."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return torch.rot90(x, int(torch.randint(0, 4, (1,), generator=g)), dims=(-2, -1))


def train(arch: str = "shapes", *, data: str = "shapes", epochs: int = 10, seed: int = 0, batch_size: int = 64,
          lr: float = 3e-3, n_train: int = 16_000, out: str | os.PathLike | None = None, device: str = "auto",
          progress: bool = True, loss: TrainingLoss | None = None, checkpoint_every: int | None = None,
          checkpoints: str | os.PathLike | None = None,
          on_checkpoint: Callable[[Normalized, Checkpoint], dict[str, Any] | None] | None = None,
          n_test: int | None = None, **removed: Any) -> TrainResult:
    """Train a built-in architecture and (optionally) write safetensors weights with metadata.

    Args:
        arch: a key of :data:`ARCHITECTURES` ("shapes", "shapes-resnet", "digits").
        data: "shapes", "shapes-spurious[:p]", "shapes-random-labels", "digits" or an image folder
            (see :func:`training_data`).
        epochs, seed, batch_size, lr: AdamW with a one-cycle schedule.
        n_train: images per epoch for the procedural datasets (fresh images every epoch; the
            size of the one fixed set for "shapes-random-labels").
        out: the ``.safetensors`` file to write, or None.
        loss: None for cross-entropy (with label smoothing 0.05), or a :class:`TrainingLoss`; adversarial
            training: ``loss=underhood.adversarial.training.training_loss("fgsm")`` (see there).
        checkpoint_every: keep weight snapshots (:mod:`underhood.models.checkpoints`) at epoch 0 (the
            initialisation), after every ``checkpoint_every``-th epoch and after the last, each with the step,
            its held-out accuracy (measured at every snapshot) and the epoch's loss; read them back with
            :func:`load_checkpoints`. The training itself is unchanged: the same seed gives the same weights.
        checkpoints: the folder for them (default: ``<out's stem>-checkpoints`` beside ``out``).
        on_checkpoint: ``on_checkpoint(model, checkpoint)`` after each snapshot, the model in eval mode (put
            back in training mode after; it must not change the weights; the random generators are restored
            after it); a dict it returns is stored in the snapshot's index entry. E.g.
            ``underhood.transfer.probe_callback(train, test)``: the probe curve at every snapshot.
        n_test: measure the held-out accuracy on the first ``n_test`` images of the held-out set only
            (default: all of it; a quick run, such as a course demo, spends less on evaluation).

    The metadata records the held-out accuracy, the accuracy on the training set when it is
    fixed (``train_accuracy``; not for fresh procedural images) and, for "shapes-spurious",
    :func:`shortcut_accuracies` (``shortcut``).
    """
    if removed:
        name = next(iter(removed))
        if name.startswith("adversarial"):
            raise InputError(f"{name}: train() takes the adversarial loss as loss=; use "
                             "loss=underhood.adversarial.training.training_loss(method, eps=..., steps=...)")
        raise InputError(f"{name}: train() has no such argument")
    if arch not in ARCHITECTURES:
        raise InputError(f"arch: unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("n_train", n_train)):
        positive_int(name, value)
    if n_test is not None:
        positive_int("n_test", n_test)
    folder = _checkpoint_folder(checkpoint_every, checkpoints, on_checkpoint, out)
    dev = resolve_device(device)
    with seeded(seed, dev):  # initialisation and shuffling draw from the global generators: restored after
        model, history = _fit(arch, data, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, n_train=n_train,
                              dev=dev, progress=progress, loss=loss, n_test=n_test,
                              snapshots=None if folder is None else (folder, checkpoint_every, on_checkpoint))
    path = save(model, out) if out is not None else None
    return TrainResult(model, history[-1]["test_accuracy"], path, history)


def _checkpoint_folder(every: int | None, folder: str | os.PathLike | None, callback: Callable | None,
                       out: str | os.PathLike | None) -> Path | None:
    """The snapshots' folder (checked before any work), or None without ``checkpoint_every``."""
    if every is None:
        for name, value in (("checkpoints", folder), ("on_checkpoint", callback)):
            if value is not None:
                raise InputError(f"{name}: only used with checkpoint_every=N (snapshots every N epochs); add it")
        return None
    positive_int("checkpoint_every", every)
    if callback is not None and not callable(callback):
        raise InputError(f"on_checkpoint: expected a function (model, checkpoint), got {type(callback).__name__}")
    if folder is None and out is None:
        raise InputError("checkpoints: give the folder for the snapshots (checkpoints=...), or out=... to keep "
                         "them beside the weights")
    return check_folder(folder if folder is not None else default_folder(out))


def _fit(arch: str, data: str, *, epochs: int, seed: int, batch_size: int, lr: float, n_train: int,
         dev: torch.device, progress: bool, loss: TrainingLoss | None,
         snapshots: tuple[Path, int, Callable | None] | None = None,
         n_test: int | None = None) -> tuple[Normalized, list[dict[str, float]]]:
    """The training loop of :func:`train` and the model's metadata; returns the model and its history."""
    from tqdm.auto import tqdm

    first = training_data(data, seed=seed, epoch=0, n_train=n_train)
    fresh = data.startswith("shapes") and data != RANDOM_LABELS  # new procedural images every epoch
    augment = fresh and not data.startswith("shapes-spurious")
    channels = first.images.shape[1]
    flat = first.images.transpose(0, 1).reshape(channels, -1)
    mean, std = flat.mean(1).tolist(), flat.std(1).clamp_min(1e-3).tolist()
    net = ARCHITECTURES[arch](num_classes=len(first.classes), in_channels=channels)
    model = Normalized(net, mean, std, first.classes, tuple(first.images.shape[1:])).to(dev)
    held_out = test_set(data, n_test) if not Path(data).is_dir() else first
    steps = epochs * ((len(first) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    history = []
    every = 1 if epochs <= 20 else -(-epochs // 10)  # evaluate every epoch, or about ten times (and last)
    run = {"arch": arch, "dataset": data, "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
           "n_train": n_train}
    command = (f"underhood train --data {data} --arch {arch} --epochs {epochs} --seed {seed}"
               f" --batch-size {batch_size} --lr {lr} --n-train {n_train}") + (loss.command if loss else "")
    writer, callback = None, None
    if snapshots is not None:
        writer = Snapshots(snapshots[0], snapshots[1], epochs, {**run, **(loss.meta if loss else {}),
                                                                "command": command})
        callback = snapshots[2]

    def snapshot(epoch: int, step: int, metrics: dict[str, float]) -> None:
        checkpoint = writer.write(model.net.state_dict(), {**metadata(model), **run, **(loss.meta if loss else {}),
                                                           "command": command}, epoch, step, metrics)
        if callback is not None:
            # the callback sees the model in eval mode, and leaves the global generators (dropout, ...) as they were
            accelerator = None if dev.type == "cpu" else dev.type
            with evaluating(model), torch.random.fork_rng(devices=[dev] if accelerator else [],
                                                          device_type=accelerator):
                extra = callback(model, checkpoint)
            if extra:
                writer.annotate(dict(extra))

    if writer is not None:  # epoch 0: the initialisation
        first_metrics = {"test_accuracy": accuracy(model, held_out)}
        if not fresh:
            first_metrics["train_accuracy"] = accuracy(model, first)
        snapshot(0, 0, first_metrics)
    done = 0  # optimizer steps so far
    bar = tqdm(total=steps, desc=f"train {arch}", disable=not progress, unit="step")
    start = time.perf_counter()
    for epoch in range(epochs):
        # procedural data is fresh every epoch; a fixed dataset (digits, a folder, random labels) is read once
        dataset = first if epoch == 0 or not fresh else training_data(data, seed=seed, epoch=epoch, n_train=n_train)
        order = torch.randperm(len(dataset), generator=g)
        model.train()
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = dataset.images[idx]
            if augment:
                x = _augment(x, g)
            x, y = x.to(dev), dataset.labels[idx].to(dev)
            if loss is None:
                value = F.cross_entropy(model(x), y, label_smoothing=0.05)
            else:
                value = loss.fn(model, x, y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            done += 1
            total += value.item() * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{value.item():.3f}")
        entry = {"epoch": epoch + 1, "loss": total / len(order)}
        if (epoch + 1) % every == 0 or epoch + 1 == epochs or (writer is not None and writer.due(epoch + 1)):
            entry["test_accuracy"] = accuracy(model, held_out)
            line = (f"epoch {epoch + 1}/{epochs}: loss {entry['loss']:.4f}, "
                    f"held-out accuracy {entry['test_accuracy']:.4f}")
            if not fresh:
                entry["train_accuracy"] = accuracy(model, first)
                line += f", training accuracy {entry['train_accuracy']:.4f}"
            bar.write(line)
        history.append(entry)
        if writer is not None and writer.due(epoch + 1):
            snapshot(epoch + 1, done, {k: v for k, v in entry.items() if k != "epoch"})
    bar.close()
    model.eval()
    held_out_name = (f"shapes seed {SHAPES_TEST_SEED}, {n_test or SHAPES_TEST_SIZE} images" if data.startswith("shapes")
                     else f"{data} test split")
    if data.startswith("shapes-spurious"):
        held_out_name += f", marker in a fraction {data.partition(':')[2] or 0.9} of them"
    elif data == RANDOM_LABELS:
        held_out_name += ", true labels"
    model.meta.update({
        **run, "test_accuracy": history[-1]["test_accuracy"], "test_set": held_out_name,
        "train_seconds": round(time.perf_counter() - start, 1), "command": command,
    })
    if not fresh:
        model.meta["train_accuracy"] = history[-1]["train_accuracy"]
    if loss is not None:
        model.meta.update(loss.meta)
        if loss.evaluate is not None:
            model.meta.update(loss.evaluate(model, held_out))
    if data.startswith("shapes-spurious"):
        model.meta["shortcut"] = shortcut_accuracies(model)
    return model, history


def metadata(model: Normalized) -> dict[str, Any]:
    """The JSON-able description stored beside the weights."""
    return {"classes": model.classes, "input_size": list(model.input_size or []),
            "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(), **model.meta}


def save(model: Normalized, path: str | os.PathLike) -> Path:
    """Write the network's weights and metadata to one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"out: weights are written as safetensors; name the file '{path.stem}.safetensors'")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"underhood": json.dumps(metadata(model))})
    return path

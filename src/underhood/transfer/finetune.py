"""A pre-trained network on the user's own data: frozen against fine-tuned features, layer by layer.

For each layer ``L`` (the model's stages by default, as :func:`probe` chooses them) the network is cut after ``L``
and a new linear head reads ``L``'s pooled output:

* ``frozen``: only the head is trained (a linear probe: logistic regression to convergence on the frozen
  features, :func:`probe`'s fit);
* ``finetuned``: the head starts from that fit and every layer up to ``L`` is trained with it (AdamW) on the
  target images, on a copy of the model ("linear probing, then fine-tuning");
* ``random``: the frozen head on a randomly re-initialised copy (what the architecture alone gives).

This is the transfer-learning recipe the lectures teach (use a pre-trained network's features, or initialise
from its weights) read per layer: where frozen features stop being good enough for the new task, and how much
fine-tuning buys back. The user's model is never changed: the fine-tuning runs on deep copies.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import resolve_batch_size
from ..core.checks import choice, number, positive_int
from ..core.device import model_device
from ..core.errors import InputError
from ..core.hooks import differentiable
from ..core.randomize import randomized_copy
from ..core.results import Result
from ..core.seeding import seeded
from .curve import interval
from .probe import L2, POOLS, _classes, _features, _layers, _pool, _receptive_fields, _split, logistic_regression

FINETUNE_TREATMENTS = ("frozen", "finetuned", "random")


@dataclass(repr=False)
class FinetuneResult(Result):
    """Held-out accuracy on the target task of a new linear head on each layer, frozen or fine-tuned.

    Attributes:
        layers: the layers cut at, input to output; rf: layer -> receptive field label.
        runs: rows ``{"treatment": "frozen"|"finetuned"|"random", "layer", "seed", "accuracy"}``; the frozen and
            random fits are deterministic (one row, seed 0), the fine-tuning has one row per seed.
        chance: the share of the test set's most frequent class; classes: the target classes.
        settings: epochs, learning rate, pool, L2; info: sizes and timings.
    """

    layers: list[str]
    runs: list[dict[str, Any]]
    rf: dict[str, str] = field(default_factory=dict)
    chance: float = 0.0
    classes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def treatments(self) -> list[str]:
        return [t for t in FINETUNE_TREATMENTS if any(r["treatment"] == t for r in self.runs)]

    def values(self, treatment: str, layer: str) -> list[float]:
        return [float(r["accuracy"]) for r in self.runs if r["treatment"] == treatment and r["layer"] == layer]

    def curve(self, treatment: str) -> dict[str, tuple[float, float, float]]:
        """layer -> (mean, low, high) over seeds (95% interval) of one treatment."""
        return {n: interval(v, bounds=(0.0, 1.0)) for n in self.layers if (v := self.values(treatment, n))}

    def statements(self) -> list[str]:
        """What the curves say, from the measured numbers."""
        frozen, tuned, rnd = self.curve("frozen"), self.curve("finetuned"), self.curve("random")
        out = []
        if frozen:
            best = max(frozen, key=lambda n: frozen[n][0])
            out.append(f"Frozen features are best at {best} ({frozen[best][0]:.1%} on the target task, chance "
                       f"{self.chance:.1%})" + (f"; the last layer, {self.layers[-1]}, gives "
                                                f"{frozen[self.layers[-1]][0]:.1%}: the deepest features are more "
                                                "specific to the original task." if best != self.layers[-1]
                                                and frozen[self.layers[-1]][0] < frozen[best][0] - 0.01
                                                else "."))
        if frozen and tuned:
            gains = {n: tuned[n][0] - frozen[n][0] for n in tuned if n in frozen}
            top = max(gains, key=gains.get)
            best = max(tuned, key=lambda n: tuned[n][0])
            out.append(f"Fine-tuning adds the most at {top} ({gains[top] * 100:+.1f} points); the best fine-tuned "
                       f"cut is {best} ({tuned[best][0]:.1%}).")
        if frozen and rnd:
            last = self.layers[-1]
            out.append(f"A randomly re-initialised copy reaches {rnd[last][0]:.1%} at {last}, against "
                       f"{frozen[last][0]:.1%} for the pre-trained features: what the pre-training is worth there.")
        return out

    def scalars(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chance": self.chance, "n_train": self.info.get("n_train"),
                               "n_test": self.info.get("n_test")}
        for t in self.treatments:
            for n, (m, _, _) in self.curve(t).items():
                out[f"{t}[{n}]"] = m
        return out

    def figure(self, **kwargs):
        """Frozen, fine-tuned and random-copy accuracy per layer (:func:`.viz.transfer_curves.finetune_figure`)."""
        from ..viz.transfer_curves import finetune_figure

        return finetune_figure(self, **kwargs)


class _Cut(nn.Module):
    """A copy of the model cut after ``layer``, its output pooled and read by a linear head."""

    def __init__(self, model: nn.Module, layer: str, pool: str, size: tuple[int, int], head: nn.Linear) -> None:
        super().__init__()
        self.model, self.layer, self.pool, self.size, self.head = model, layer, pool, size, head

    def forward(self, run, x: torch.Tensor) -> torch.Tensor:
        feats, _ = run(x)
        return self.head(_pool(feats[self.layer], self.pool, self.size, self.layer).float())


def finetune_curve(model: nn.Module, train: object, test: object, *, layers: Sequence[str] | str | None = None,
                   treatments: Sequence[str] = FINETUNE_TREATMENTS, seeds: int = 1, epochs: int = 3,
                   lr: float = 1e-4, batch_size: int = 32, pool: str = "avg", l2: float = L2, seed: int = 0,
                   progress: bool = False) -> FinetuneResult:
    """Frozen against fine-tuned features of a (pre-trained) model on a new task, cut after each layer.

    Args:
        model: any module taking ``[N, C, H, W]`` pixels in ``[0, 1]``; left unchanged (copies are fine-tuned).
        train, test: the target task's ImageSets (or ``(images, labels)`` pairs); any classes.
        layers: where to cut (default: the model's stages and last hidden layer, as :func:`probe`).
        treatments: any of ``"frozen"``, ``"finetuned"``, ``"random"`` (``"finetuned"`` needs ``"frozen"``'s fit,
            which always runs).
        seeds: fine-tuning repetitions (shuffling orders); epochs, lr, batch_size: AdamW fine-tuning.
        pool, l2: as in :func:`probe`.

    Returns:
        A :class:`FinetuneResult` (``.curve(t)``, ``.statements()``, ``.figure()``).

    Example:
        >>> r = finetune_curve(load_model("shapes"), target_train, target_test)   # doctest: +SKIP
        >>> r.curve("finetuned")                                                 # doctest: +SKIP
    """
    treatments = [treatments] if isinstance(treatments, str) else list(treatments)
    for t in treatments:
        choice("treatments", t, FINETUNE_TREATMENTS)
    if not treatments:
        raise InputError("treatments: give at least one of frozen, finetuned, random")
    choice("pool", pool, POOLS)
    number("l2", l2)
    number("lr", lr, strict=True)
    for name, value in (("seeds", seeds), ("epochs", epochs), ("batch_size", batch_size)):
        positive_int(name, value)
    tr, te = _split(train, "train", model), _split(test, "test", model)
    classes = _classes(tr, te)
    names = _layers(model, layers)
    if not names:
        raise InputError("layers: name at least one layer of the model to cut after; see `underhood layers`")
    device = model_device(model)
    size = (int(tr[0].shape[-2]), int(tr[0].shape[-1]))
    fwd = resolve_batch_size(None, model, tuple(tr[0].shape[1:]))
    y_train, y_test = tr[1].to(device), te[1].to(device)
    start = time.perf_counter()
    f_train = _features(model, tr[0], names, pool, fwd, False, progress, "features (train)")
    f_test = _features(model, te[0], names, pool, fwd, False, progress, "features (test)")
    runs: list[dict[str, Any]] = []
    heads = {}
    for n in names:
        mean, std = f_train[n].mean(0), f_train[n].std(0)
        std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
        W, b, _ = logistic_regression((f_train[n] - mean) / std, y_train, len(classes), l2=l2)
        acc = float(((((f_test[n] - mean) / std) @ W + b).argmax(1) == y_test).float().mean())
        if "frozen" in treatments:
            runs.append({"treatment": "frozen", "layer": n, "seed": 0, "accuracy": acc})
        heads[n] = (W / std[:, None], b - (mean / std) @ W)  # the same map on unstandardised features
    if "random" in treatments:
        twin = randomized_copy(model, seed=seed)
        r_train = _features(twin, tr[0], names, pool, fwd, False, progress, "random copy (train)")
        r_test = _features(twin, te[0], names, pool, fwd, False, progress, "random copy (test)")
        for n in names:
            mean, std = r_train[n].mean(0), r_train[n].std(0)
            std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
            W, b, _ = logistic_regression((r_train[n] - mean) / std, y_train, len(classes), l2=l2)
            acc = float(((((r_test[n] - mean) / std) @ W + b).argmax(1) == y_test).float().mean())
            runs.append({"treatment": "random", "layer": n, "seed": 0, "accuracy": acc})
        del twin
    if "finetuned" in treatments:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * seeds, desc="fine-tune", unit="cut", disable=not progress)
        for n in names:
            for s in range(seeds):
                runs.append({"treatment": "finetuned", "layer": n, "seed": s,
                             "accuracy": _finetune(model, n, heads[n], tr[0], y_train, te[0], y_test, pool, size,
                                                   epochs, lr, batch_size, seed + s, fwd)})
                bar.update(1)
        bar.close()
    chance = float(torch.bincount(te[1].cpu(), minlength=len(classes)).max()) / len(te[1])
    return FinetuneResult(layers=names, runs=runs, rf=_receptive_fields(model, tr[0].shape[1:], names), chance=chance,
                          classes=classes, settings={"epochs": epochs, "lr": lr, "batch_size": batch_size, "pool": pool,
                                                     "l2": float(l2), "seeds": seeds},
                          info={"n_train": len(tr[0]), "n_test": len(te[0]),
                                "seconds": round(time.perf_counter() - start, 1)})


def _finetune(model: nn.Module, layer: str, head: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
              y: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, pool: str, size: tuple[int, int], epochs: int,
              lr: float, batch_size: int, seed: int, eval_batch: int) -> float:
    """Fine-tune a copy of ``model`` cut after ``layer`` with a linear head started at ``head``; its test accuracy."""
    device = model_device(model)
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # any failure to copy means the same to the user
        raise InputError(f"model: cannot deep-copy {type(model).__name__} ({exc}); fine-tuning runs on a copy") from exc
    twin.requires_grad_(True)
    linear = nn.Linear(head[0].shape[0], head[0].shape[1]).to(device)
    with torch.no_grad():
        linear.weight.copy_(head[0].T)
        linear.bias.copy_(head[1])
    cut = _Cut(twin, layer, pool, size, linear)
    g = torch.Generator().manual_seed(seed)
    with differentiable(twin, [layer], stop=True) as run:
        twin.eval()
        with torch.no_grad():
            run(x[:2].to(device))  # the first call learns where to stop
        used = [p for p in cut.parameters()]
        opt = torch.optim.AdamW(used, lr=lr, weight_decay=1e-4)
        with seeded(seed, device):
            for _ in range(epochs):
                twin.train()
                order = torch.randperm(len(x), generator=g)
                for i in range(0, len(order), batch_size):
                    idx = order[i:i + batch_size]
                    if len(idx) < 2:
                        continue
                    loss = F.cross_entropy(cut(run, x[idx].to(device)), y[idx.to(y.device)])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        twin.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(tx), eval_batch):
                hits += int((cut(run, tx[i:i + eval_batch].to(device)).argmax(1) == ty[i:i + eval_batch]).sum())
    return hits / len(tx)


__all__ = ["finetune_curve", "FinetuneResult", "FINETUNE_TREATMENTS"]

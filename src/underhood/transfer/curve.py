"""Yosinski et al. (2014)'s transfer experiment on a built-in architecture: how general is each layer.

The classes of a dataset are split into two halves, A and B. Base networks are trained on each half
(``baseA``, ``baseB``). For every depth ``n`` a new network for B keeps the first ``n`` blocks of a base
network and retrains the rest on B:

* ``BnB``: the first ``n`` blocks of baseB, frozen ("selffer": only the upper layers relearn);
* ``AnB``: the first ``n`` blocks of baseA, frozen ("transfer": are A's layers general enough for B?);
* ``BnB+`` / ``AnB+``: the same, then the whole network fine-tuned on B;
* ``random``: the first ``n`` blocks at their random initialisation, frozen (Jarrett et al. 2009's random
  filters; Yosinski's Fig. 3);
* reduced-data baselines: baseB trained from scratch on a fraction of B's images (what data the transfer
  is worth).

Each depth and treatment is trained for every seed (a new split per seed for ``split="random"``), and the
result holds the held-out accuracy on B of every network, the mean and 95% interval per depth, a per-layer
generality score that needs no retraining (linear CKA between baseA and baseB on the same images, and a
linear probe on B of baseA's frozen features), and the sentences the report prints from these numbers.

Two choices make the grid cheap (minutes on 2 CPU cores, where the paper spent 9.5 GPU-days per network):
the frozen treatments train their upper blocks on the frozen blocks' outputs computed once per depth (exact:
frozen blocks run in eval mode, and the training images are not augmented); and the fine-tuned treatments
start from the trained frozen network (its copied blocks and its trained upper blocks), then train every
layer for half as many epochs with a new one-cycle schedule ("linear probing, then fine-tuning", as Kumar et
al. 2022 call it), where Yosinski trained the fine-tuned networks' upper layers from their random
initialisation together with the copied ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import choice, number, positive_int
from ..core.device import resolve_device
from ..core.errors import InputError
from ..core.results import Result
from ..core.seeding import seeded
from ..data.imageset import ImageSet
from ..models.architectures import ARCHITECTURES
from .cka import linear_cka
from .probe import _fit_and_score

TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+")
"""Yosinski's four treatments: selffer / transfer, frozen / fine-tuned (``+``)."""
CONTROLS = ("random",)
SPLITS = ("random", "dissimilar")
DISSIMILAR = {
    "shapes": (["square", "triangle", "star", "cross", "tee"], ["circle", "ring", "crescent"]),
}
"""The ``"dissimilar"`` split per dataset: angular shapes against round ones (Yosinski's man-made against
natural classes)."""
TRANSFER_SIZE = 32
"""Side of the shapes images the built-in grid draws: a quarter of the pixels of the shipped models' 64, so the
grid takes minutes, and a harder task, so the curves do not all sit at 100%."""
DATA_SEED = 77
"""Seed of the shapes training images of the transfer grid (no training epoch of the shipped models uses it)."""
MIN_PER_CLASS = 10
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
"""Student's t 97.5% quantiles for 1 to 20 degrees of freedom (the 95% interval of a mean over seeds)."""


# --- the built-in architectures as chains of blocks ------------------------------------------------------------

def blocks(arch: str, net: nn.Module) -> tuple[list[nn.Module], list[str]]:
    """``(pieces, names)``: ``net`` cut into blocks whose composition is its forward pass.

    The blocks share ``net``'s parameters; ``names[i]`` is the layer whose output block ``i`` ends with (the
    depth-``i+1`` feature map, by its name in ``net``). The last block is the head (pooling and classifier); the
    transfer depths are ``1 .. len(pieces) - 1``.

    * ``"shapes"`` (VGG-style): one block per conv-BN-ReLU (with its max-pool): features.3, .6, .10, .13, .17;
    * ``"shapes-resnet"``: the stem (conv1, bn1, relu, maxpool), layer1, layer2, layer3;
    * ``"digits"`` (LeNet-5): conv1+pool1, conv2+pool2, fc1, fc2.
    """
    if arch == "shapes":
        f = net.features
        cuts = [(0, 4), (4, 7), (7, 11), (11, 14), (14, 18)]
        pieces = [nn.Sequential(*[f[i] for i in range(a, b)]) for a, b in cuts]
        names = [f"features.{b - 1}" for _, b in cuts]
        head = nn.Sequential(net.pool, nn.Flatten(1), net.classifier)
        return pieces + [head], names
    if arch == "shapes-resnet":
        pieces = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), net.layer1, net.layer2, net.layer3]
        return pieces + [nn.Sequential(net.avgpool, nn.Flatten(1), net.fc)], ["maxpool", "layer1", "layer2", "layer3"]
    if arch == "digits":
        pieces = [nn.Sequential(net.conv1, nn.ReLU(), net.pool1), nn.Sequential(net.conv2, nn.ReLU(), net.pool2,
                                                                                 nn.Flatten(1)),
                  nn.Sequential(net.fc1, nn.ReLU()), nn.Sequential(net.fc2, nn.ReLU())]
        return pieces + [net.fc3], ["pool1", "pool2", "fc1", "fc2"]
    raise InputError(f"arch: unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


class _Chain(nn.Module):
    """A built-in network as its blocks: ``forward(x, start)`` runs blocks ``start..`` on the depth-``start``
    features ``x``."""

    def __init__(self, arch: str, n_classes: int, in_channels: int, seed: int, device: torch.device) -> None:
        super().__init__()
        with seeded(seed, device):
            # channels-last: about 30% faster convolutions on CPUs (and the layout GPUs' tensor cores prefer)
            self.net = ARCHITECTURES[arch](num_classes=n_classes, in_channels=in_channels).to(
                device, memory_format=torch.channels_last)
        pieces, self.names = blocks(arch, self.net)
        self.pieces = nn.ModuleList(pieces)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        for piece in self.pieces[start:]:
            x = piece(x)
        return x

    def copy_lower(self, source: _Chain, n: int) -> None:
        for mine, theirs in zip(self.pieces[:n], source.pieces[:n]):
            mine.load_state_dict(theirs.state_dict())


# --- training ----------------------------------------------------------------------------------------------------

@dataclass
class Settings:
    """How every network of the grid is trained (AdamW, one-cycle schedule, cross-entropy with label smoothing
    0.05, no augmentation: the frozen blocks' outputs are computed once)."""

    epochs: int = 6
    finetune_epochs: int = 3
    lr: float = 3e-3
    finetune_lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 5e-4


def _fit(chain: _Chain, start: int, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, s: Settings,
         seed: int, device: torch.device) -> None:
    """Train blocks ``start..`` of ``chain`` on depth-``start`` features ``x`` (blocks below stay frozen)."""
    params = [p for piece in chain.pieces[start:] for p in piece.parameters()]
    for piece in chain.pieces[:start]:
        piece.eval()
        piece.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
    steps = epochs * math.ceil(len(x) / s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for piece in chain.pieces[start:]:
        piece.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order), s.batch_size):
            idx = order[i:i + s.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one image
                continue
            loss = F.cross_entropy(chain(x[idx].to(device), start), y[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    chain.eval()
    chain.requires_grad_(True)


@torch.no_grad()
def _depth_features(chain: _Chain, x: torch.Tensor, depths: int, batch_size: int,
                    device: torch.device) -> list[torch.Tensor]:
    """``[x, block1(x), block2(block1(x)), ...]`` up to depth ``depths``, on the CPU, in eval mode."""
    chain.eval()
    out = [x]
    for d in range(depths):
        piece = chain.pieces[d]
        out.append(torch.cat([piece(_layout(out[-1][i:i + 4 * batch_size].to(device))).cpu()
                              for i in range(0, len(x), 4 * batch_size)]))
    return out


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@torch.no_grad()
def _accuracy(chain: _Chain, start: int, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              device: torch.device) -> float:
    chain.eval()
    hits = 0
    for i in range(0, len(x), 4 * batch_size):
        hits += int((chain(x[i:i + 4 * batch_size].to(device), start).argmax(1).cpu() == y[i:i + 4 * batch_size]).sum())
    return hits / len(x)


# --- data ----------------------------------------------------------------------------------------------------------

def _dataset(data: object, test: object, size: int) -> tuple[ImageSet, ImageSet, str]:
    """``(train, test, name)`` from a spec (``"shapes:N"``, ``"digits"``) or an ImageSet (and its test set, or a
    seeded 25% of it held out per class)."""
    from ..data import digits, shapes
    from ..data.splits import SHAPES_TEST_SEED, SHAPES_TEST_SIZE

    if isinstance(data, str):
        name, _, count = data.partition(":")
        if name == "shapes":
            n = 6000 if not count else _count(count)
            return (shapes(n, seed=DATA_SEED, size=size), shapes(SHAPES_TEST_SIZE, seed=SHAPES_TEST_SEED, size=size),
                    "shapes")
        if name == "digits":
            train, held_out = digits(split="train"), digits(split="test")
            return (train if not count else train[:_count(count)]), held_out, "digits"
        raise InputError(f"data: unknown dataset {data!r}; give shapes[:N], digits or an ImageSet")
    if not isinstance(data, ImageSet):
        raise InputError(f"data: expected 'shapes:N', 'digits' or an ImageSet, got {type(data).__name__}")
    if test is not None:
        if not isinstance(test, ImageSet) or list(test.classes) != list(data.classes):
            raise InputError("test: expected an ImageSet with the training set's classes; or leave it out to hold "
                             "out 25% of data")
        return data, test, str(data.info.get("dataset", "images"))
    g = torch.Generator().manual_seed(DATA_SEED)
    held = torch.zeros(len(data), dtype=torch.bool)
    for c in range(len(data.classes)):
        idx = (data.labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held[idx[:len(idx) // 4]] = True
    return data[~held], data[held], str(data.info.get("dataset", "images"))


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise InputError(f"data: the count after ':' must be a positive integer, got {text!r}; e.g. shapes:6000")
    return n


def _halves(split: object, classes: list[str], dataset: str, seed: int) -> tuple[list[int], list[int], str]:
    """``(A, B, kind)``: the two halves as class indices."""
    if isinstance(split, str):
        choice("split", split, SPLITS)
        if split == "random":
            perm = torch.randperm(len(classes), generator=torch.Generator().manual_seed(10_007 + seed)).tolist()
            half = len(classes) // 2
            return sorted(perm[:half]), sorted(perm[half:]), "random"
        if dataset not in DISSIMILAR:
            raise InputError(f"split: no 'dissimilar' split is defined for {dataset!r}; give the halves as "
                             "(classes_a, classes_b)")
        a, b = DISSIMILAR[dataset]
        return [classes.index(c) for c in a], [classes.index(c) for c in b], "dissimilar"
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise InputError(f"split: expected 'random', 'dissimilar' or (classes_a, classes_b), got {split!r}")
    halves = []
    for name, half in zip(("A", "B"), split):
        ids = []
        for c in half:
            if isinstance(c, str) and c in classes:
                ids.append(classes.index(c))
            elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(classes):
                ids.append(c)
            else:
                raise InputError(f"split: {c!r} in half {name} is not a class of the data ({', '.join(classes)})")
        if len(set(ids)) < 2:
            raise InputError(f"split: half {name} has {len(set(ids))} class(es); each half needs at least 2 "
                             "(a classifier needs two classes to tell apart)")
        halves.append(sorted(set(ids)))
    if set(halves[0]) & set(halves[1]):
        raise InputError(f"split: {classes[sorted(set(halves[0]) & set(halves[1]))[0]]!r} is in both halves; "
                         "the halves must be disjoint")
    return halves[0], halves[1], "custom"


def _subset(data: ImageSet, ids: list[int], which: str, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the classes ``ids``, relabelled ``0..len(ids)-1``; too few images per class is an error."""
    keep = torch.isin(data.labels, torch.tensor(ids))
    remap = torch.full((int(data.labels.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(ids)] = torch.arange(len(ids))
    x, y = data.images[keep], remap[data.labels[keep]]
    counts = torch.bincount(y, minlength=len(ids))
    if int(counts.min()) < MIN_PER_CLASS:
        worst = int(counts.argmin())
        raise InputError(f"data: class {data.classes[ids[worst]]!r} of half {which} has {int(counts[worst])} "
                         f"{role} image(s); each class needs at least {MIN_PER_CLASS}: give more images "
                         "(e.g. shapes:6000)")
    return x, y


# --- the result -------------------------------------------------------------------------------------------------

def interval(values: Sequence[float], *, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its 95% Student-t interval (the mean alone for one value), cut to
    ``bounds`` when given (an accuracy's interval stops at 0 and 1)."""
    v = [float(a) for a in values]
    mean = sum(v) / len(v)
    if len(v) < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((a - mean) ** 2 for a in v) / (len(v) - 1))
    half = T975[min(len(v) - 1, len(T975)) - 1] * sd / math.sqrt(len(v))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return mean, low, high


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / den if den > 0 else float("nan")


@dataclass(repr=False)
class TransferResult(Result):
    """Every network of Yosinski's transfer grid and what it scored on B's held-out images.

    Attributes:
        arch, dataset: the architecture and the data it ran on.
        split: ``"random"``, ``"dissimilar"`` or ``"custom"``; halves: per seed ``{"A": [classes], "B": [...]}``.
        layers: the layer each depth ends with (depth ``n`` = ``layers[n - 1]``); rf: layer -> receptive field.
        runs: one row per network: ``{"treatment", "depth", "seed", "accuracy"}`` (and ``"fraction"`` for the
            reduced-data baselines, treatment ``"reduced"``); the bases are ``"baseA"`` (scored on A) and
            ``"baseB"``, at depth 0.
        cka: per seed, layer -> linear CKA between baseA's and baseB's outputs on the same images.
        probe_ab: per seed, layer -> held-out accuracy on B of a linear probe on baseA's frozen (pooled) features.
        probe_bb: the same on baseB's own features (the reference the A probe is read against).
        chance: accuracy of always guessing B's most frequent test class.
        settings: the training settings; info: sizes and timings.
    """

    arch: str
    dataset: str
    split: str
    halves: list[dict[str, list[str]]]
    layers: list[str]
    runs: list[dict[str, Any]]
    cka: list[dict[str, float]] = field(default_factory=list)
    probe_ab: list[dict[str, float]] = field(default_factory=list)
    probe_bb: list[dict[str, float]] = field(default_factory=list)
    rf: dict[str, str] = field(default_factory=dict)
    chance: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def depths(self) -> list[int]:
        return list(range(1, len(self.layers) + 1))

    @property
    def seeds(self) -> list[int]:
        return sorted({int(r["seed"]) for r in self.runs})

    @property
    def treatments(self) -> list[str]:
        return [t for t in TREATMENTS + CONTROLS if any(r["treatment"] == t for r in self.runs)]

    def values(self, treatment: str, depth: int | None = None, fraction: float | None = None) -> list[float]:
        """The accuracies of one treatment at one depth (bases: depth 0), one per seed."""
        return [float(r["accuracy"]) for r in self.runs if r["treatment"] == treatment
                and (depth is None or r["depth"] == depth)
                and (fraction is None or abs(r.get("fraction", 0) - fraction) < 1e-9)]

    def base(self) -> tuple[float, float, float]:
        """baseB's mean accuracy on B and its 95% interval."""
        return interval(self.values("baseB"), bounds=(0.0, 1.0))

    def curve(self, treatment: str) -> dict[int, tuple[float, float, float]]:
        """depth -> (mean, low, high) of a treatment (depths it has)."""
        return {d: interval(v, bounds=(0.0, 1.0)) for d in self.depths if (v := self.values(treatment, d))}

    def drop(self, treatment: str) -> dict[int, tuple[float, float, float]]:
        """depth -> (mean, low, high) of ``treatment - baseB`` paired by seed, in accuracy (not points)."""
        base = {int(r["seed"]): float(r["accuracy"]) for r in self.runs if r["treatment"] == "baseB"}
        out = {}
        for d in self.depths:
            diffs = [float(r["accuracy"]) - base[int(r["seed"])] for r in self.runs
                     if r["treatment"] == treatment and r["depth"] == d and int(r["seed"]) in base]
            if diffs:
                out[d] = interval(diffs)
        return out

    @property
    def fractions(self) -> list[float]:
        return sorted({float(r["fraction"]) for r in self.runs if r["treatment"] == "reduced"})

    def layer_mean(self, table: list[dict[str, float]]) -> dict[str, float]:
        """layer -> mean over seeds of a per-seed table (``cka``, ``probe_ab``, ``probe_bb``)."""
        return {n: sum(t[n] for t in table) / len(table) for n in self.layers if table and all(n in t for t in table)}

    def generality(self) -> dict[str, Any]:
        """The no-retraining generality scores beside the AnB drop, and their rank correlations (Spearman)."""
        drop = {d: -m for d, (m, _, _) in self.drop("AnB").items()}
        cka, pab = self.layer_mean(self.cka), self.layer_mean(self.probe_ab)
        xs = [drop[d] for d in self.depths if d in drop and self.layers[d - 1] in cka]
        out: dict[str, Any] = {"anb_drop": {self.layers[d - 1]: v for d, v in drop.items()}, "cka": cka,
                               "probe_ab": pab}
        if len(xs) >= 3:
            out["rho_cka"] = spearman([cka[self.layers[d - 1]] for d in self.depths if d in drop], xs)
            if pab:
                out["rho_probe"] = spearman([pab[self.layers[d - 1]] for d in self.depths if d in drop], xs)
        return out

    def statements(self) -> list[str]:
        """What the grid shows, each sentence from the measured numbers (with 95% intervals over seeds)."""
        return statements(self)

    def scalars(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arch": self.arch, "split": self.split, "seeds": len(self.seeds),
                               "networks": len(self.runs), "baseB": self.base()[0]}
        for t in self.treatments:
            for d, (m, _, _) in self.curve(t).items():
                out[f"{t}[{d}]"] = m
        out["seconds"] = self.info.get("seconds")
        return out

    def figure(self, kind: str = "grid", **kwargs):
        """``"grid"``: Yosinski's Fig. 2 (every network a point, the four mean lines); ``"generality"``: the AnB
        drop beside CKA and the A-probe per layer (:mod:`underhood.viz.transfer_curves`)."""
        from ..viz import transfer_curves

        choice("kind", kind, ("grid", "generality"))
        return (transfer_curves.transfer_figure(self, **kwargs) if kind == "grid"
                else transfer_curves.generality_figure(self, **kwargs))


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def _ci(m: float, lo: float, hi: float) -> str:
    return f"{m * 100:+.1f} points (95% interval {lo * 100:+.1f} to {hi * 100:+.1f})"


def statements(r: TransferResult) -> list[str]:
    """The report's sentences: the AnB drop with depth, the BnB dip, AnB+ against the base, the random-filter
    control, the reduced-data baselines and the generality scores; every number computed from ``r``."""
    out = []
    n = len(r.seeds)
    b, blo, bhi = r.base()
    out.append(f"baseB scores {b:.1%} on B's held-out images (95% interval {blo:.1%}-{bhi:.1%}, {n} seed(s); "
               f"chance {r.chance:.1%}).")
    anb = r.drop("AnB")
    if anb:
        first, last = min(anb), max(anb)
        worst = min(anb, key=lambda d: anb[d][0])
        grows = anb[last][0] < anb[first][0]
        out.append(
            f"Frozen layers transferred from A (AnB) score {_ci(*anb[first])} against baseB at depth {first} "
            f"({r.layers[first - 1]}) and {_ci(*anb[last])} at depth {last} ({r.layers[last - 1]}): "
            + ("the features get more specific to A with depth, as Yosinski et al. found."
               if grows else "no growing loss with depth here, unlike Yosinski et al.'s ImageNet networks.")
            + (f" The largest loss is at depth {worst} ({_pts(anb[worst][0])} points)."
               if worst != last and anb[worst][0] < 0 else ""))
    bnb = r.drop("BnB")
    if len(bnb) >= 3:
        inner = [d for d in bnb if d not in (min(bnb), max(bnb))]
        dip = min(inner, key=lambda d: bnb[d][0])
        m, lo, hi = bnb[dip]
        if hi < 0:
            out.append(f"Selffer networks (BnB) dip in the middle: {_ci(m, lo, hi)} at depth {dip} "
                       f"({r.layers[dip - 1]}), the co-adapted layers Yosinski et al. describe (their dip is at "
                       "layers 3-5 of 8).")
        else:
            out.append(f"No BnB dip on this small network: the lowest selffer score in the middle is "
                       f"{_ci(m, lo, hi)} at depth {dip}, an interval that includes 0 "
                       "(Yosinski et al. saw one at layers 3-5 of their 8-layer network).")
    anbp = r.drop("AnB+")
    if anbp:
        diffs = [v for d in anbp for v in _paired(r, "AnB+", d)]
        m, lo, hi = interval(diffs)
        verdict = ("better than" if lo > 0 else "worse than" if hi < 0 else "level with")
        out.append(f"Transfer then fine-tuning (AnB+) is {verdict} baseB: {_ci(m, lo, hi)} averaged over depths "
                   "(Yosinski et al. report a lasting gain of about +2 points on ImageNet).")
    bnbp = r.drop("BnB+")
    if bnbp:
        m, lo, hi = interval([v for d in bnbp for v in _paired(r, "BnB+", d)])
        extra = r.settings.get("finetune_epochs")
        out.append(f"Selffer fine-tuning (BnB+) against baseB: {_ci(m, lo, hi)}"
                   + (f" (the + networks train {extra} epoch(s) more than baseB" if extra else " (")
                   + "; Yosinski et al.: level).")
    if anbp and bnbp:
        diffs = [a - b for d in anbp if d in bnbp for a, b in zip(_paired(r, "AnB+", d), _paired(r, "BnB+", d))]
        m, lo, hi = interval(diffs)
        verdict = ("A's weights add to" if lo > 0 else "A's weights take away from" if hi < 0
                   else "A's weights neither add to nor take away from")
        out.append(f"AnB+ against BnB+, the same training on the same data from B's own blocks: {_ci(m, lo, hi)}; "
                   f"{verdict} what the extra training gives (Yosinski et al. found AnB+ above BnB+, the boost that "
                   "lingers after fine-tuning).")
    rnd = r.drop("random")
    if rnd and anb:
        d = max(rnd)
        out.append(f"Random frozen filters (the control) score {_ci(*rnd[min(rnd)])} against baseB at depth "
                   f"{min(rnd)} and {_ci(*rnd[d])} at depth {d}; A's frozen layers at depth {d}: {_pts(anb[d][0])} "
                   "points.")
    for f in r.fractions:
        m, lo, hi = interval(r.values("reduced", 0, f), bounds=(0.0, 1.0))
        out.append(f"baseB trained on {f:.0%} of B's images scores {m:.1%} (95% interval {lo:.1%}-{hi:.1%}): "
                   "the level a transfer must beat when the target data are that scarce.")
    g = r.generality()
    if "rho_cka" in g:
        first, last = g["cka"][r.layers[0]], g["cka"][r.layers[-1]]
        out.append(f"Without retraining, the CKA between baseA's and baseB's layers "
                   f"{'falls' if last < first else 'goes'} from {first:.2f} at {r.layers[0]} to {last:.2f} at "
                   f"{r.layers[-1]}; "
                   f"its rank correlation with the AnB drop is {g['rho_cka']:+.2f}"
                   + (f", and that of the probe on B of A's features {g['rho_probe']:+.2f}." if "rho_probe" in g
                      else "."))
    return out


def _paired(r: TransferResult, treatment: str, depth: int) -> list[float]:
    base = {int(x["seed"]): float(x["accuracy"]) for x in r.runs if x["treatment"] == "baseB"}
    return [float(x["accuracy"]) - base[int(x["seed"])] for x in r.runs
            if x["treatment"] == treatment and x["depth"] == depth and int(x["seed"]) in base]


def compare(similar: TransferResult, dissimilar: TransferResult) -> list[str]:
    """Sentences comparing the AnB drop of a random split with that of a dissimilar one (Yosinski's Fig. 3)."""
    a, b = similar.drop("AnB"), dissimilar.drop("AnB")
    common = [d for d in a if d in b]
    if not common:
        return []
    d = max(common)
    gap = [b[k][0] - a[k][0] for k in common]
    worse = sum(1 for v in gap if v < 0)
    return [f"Transferring from a dissimilar half costs more than from a random one at {worse} of {len(common)} "
            f"depths; at depth {d} ({similar.layers[d - 1]}) the drops are {_pts(b[d][0])} (dissimilar) and "
            f"{_pts(a[d][0])} points (random) — Yosinski et al. found the gap grows with depth."]


# --- the grid ---------------------------------------------------------------------------------------------------

def transfer_curve(arch: str = "shapes", data: object = "shapes:6000", *, split: object = "random",
                   treatments: Sequence[str] = TREATMENTS, controls: Sequence[str] = CONTROLS,
                   reduced: Sequence[float] = (0.25,), seeds: int = 3, depths: Sequence[int] | None = None,
                   test: ImageSet | None = None, size: int = TRANSFER_SIZE, epochs: int = 6, finetune_epochs: int = 3,
                   lr: float = 3e-3, finetune_lr: float = 3e-3, batch_size: int = 64, n_cka: int = 1000,
                   device: str = "auto", out: str | Path | None = None, progress: bool = False,
                   on_run: Callable[[dict[str, Any]], None] | None = None) -> TransferResult:
    """Yosinski et al. (2014)'s transfer grid for a built-in architecture (see the module docstring).

    Args:
        arch: ``"shapes"`` (5 depths), ``"shapes-resnet"`` (4) or ``"digits"`` (LeNet, 4).
        data: ``"shapes:N"`` (N training images at ``size`` pixels, default 6000), ``"digits"`` or an ImageSet.
        split: ``"random"`` (a new random half of the classes per seed), ``"dissimilar"`` (shapes: angular A,
            round B) or ``(classes_a, classes_b)`` (names or indices, each at least 2, disjoint).
        treatments: any of ``"BnB"``, ``"BnB+"``, ``"AnB"``, ``"AnB+"`` (a ``+`` one also trains its frozen one).
        controls: ``("random",)``: random frozen blocks; ``()`` for none.
        reduced: fractions of B's training images for extra from-scratch baselines (``()`` for none).
        seeds: independent repetitions (base networks, splits for "random", initialisations, orders).
        depths: the depths to transfer at (default every depth).
        test: the held-out images for an ImageSet ``data`` (default: a seeded 25% of each class).
        epochs, lr: training of the bases and of the frozen treatments' upper blocks; finetune_epochs,
            finetune_lr: the ``+`` treatments' extra training of the whole network.
        n_cka: images (B's held-out ones first) for CKA between baseA and baseB.
        out: a folder to keep finished networks' scores in (``runs.json``): a rerun with the same settings
            resumes from it.
        on_run: called with each finished row (progress for the CLI).

    Returns:
        A :class:`TransferResult` (``.runs``, ``.curve(t)``, ``.drop(t)``, ``.statements()``, ``.figure()``).

    Example:
        >>> r = transfer_curve("shapes", "shapes:6000", seeds=3)          # doctest: +SKIP
        >>> r.drop("AnB")[5]                                               # doctest: +SKIP
        (-0.21, -0.25, -0.17)
    """
    if arch not in ARCHITECTURES:
        raise InputError(f"arch: unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    treatments = [treatments] if isinstance(treatments, str) else list(treatments)
    for t in treatments:
        choice("treatments", t, TREATMENTS)
    controls = [controls] if isinstance(controls, str) else list(controls or ())
    for c in controls:
        choice("controls", c, CONTROLS)
    reduced = [float(number("reduced", f)) for f in (reduced or ())]
    for f in reduced:
        if not 0 < f < 1:
            raise InputError(f"reduced: fractions lie strictly between 0 and 1, got {f}; e.g. reduced=(0.25,)")
    for name, value in (("seeds", seeds), ("epochs", epochs), ("finetune_epochs", finetune_epochs),
                        ("batch_size", batch_size), ("n_cka", n_cka), ("size", size)):
        positive_int(name, value)
    number("lr", lr, strict=True)
    number("finetune_lr", finetune_lr, strict=True)
    dev = resolve_device(device)
    names = blocks(arch, ARCHITECTURES[arch](num_classes=2, in_channels=1))[1]
    n_depths = len(names)
    depths = list(range(1, n_depths + 1)) if depths is None else sorted(set(int(d) for d in depths))
    if not depths or depths[0] < 1 or depths[-1] > n_depths:
        raise InputError(f"depths: {arch!r} has depths 1..{n_depths}; got {depths}")
    train, held_out, dataset = _dataset(data, test, size)
    classes = list(train.classes)
    settings = Settings(epochs, finetune_epochs, lr, finetune_lr, batch_size)
    mean = train.images.transpose(0, 1).flatten(1).mean(1)[None, :, None, None]
    std = train.images.transpose(0, 1).flatten(1).std(1).clamp_min(1e-3)[None, :, None, None]
    norm = (lambda t: (t - mean) / std)
    store = _Store(out, {"arch": arch, "data": data if isinstance(data, str) else dataset, "split": str(split),
                         "size": size, "settings": vars(settings), "n_train": len(train)})
    start = time.perf_counter()
    want = [t for t in ("BnB", "AnB") if t in treatments or f"{t}+" in treatments]
    grid = _Grid(arch, settings, dev, store, int(train.images.shape[1]), on_run,
                 _bar(progress, seeds * (2 + len(reduced) + len(depths) * (len(want) + sum(t.endswith("+")
                                                                                        for t in treatments)
                                                                         + len(controls)))))
    halves, cka_rows, probe_ab, probe_bb, kinds = [], [], [], [], set()
    chance = 0.0
    for s in range(seeds):
        a_ids, b_ids, kind = _halves(split, classes, dataset, s)
        kinds.add(kind)
        halves.append({"A": [classes[i] for i in a_ids], "B": [classes[i] for i in b_ids]})
        xa, ya = _subset(train, a_ids, "A", "training")
        xb, yb = _subset(train, b_ids, "B", "training")
        ta, tya = _subset(held_out, a_ids, "A", "held-out")
        tb, tyb = _subset(held_out, b_ids, "B", "held-out")
        h = _Seed(s, {"A": (norm(xa), ya, norm(ta), tya), "B": (norm(xb), yb, norm(tb), tyb)})
        chance = max(chance, float(torch.bincount(tyb).max()) / len(tyb))
        rows = grid.seed(h, treatments, want, controls, reduced, depths, n_cka, names)
        cka_rows.append(rows[0])
        probe_bb.append(rows[2])
        if rows[1]:
            probe_ab.append(rows[1])
    kind = kinds.pop() if len(kinds) == 1 else "custom"
    return TransferResult(arch=arch, dataset=dataset, split=kind, halves=halves, layers=list(names), runs=grid.rows,
                          cka=cka_rows, probe_ab=probe_ab, probe_bb=probe_bb, rf=_rf(arch, train, list(names)),
                          chance=chance, settings=vars(settings),
                          info={"n_train": len(train), "n_test": len(held_out), "size": int(train.images.shape[-1]),
                                "depths": depths, "seconds": round(time.perf_counter() - start, 1),
                                "device": str(dev)})


@dataclass
class _Seed:
    """One repetition: its seed and, per half, ``(train images, labels, test images, labels)`` (normalised)."""

    seed: int
    data: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]

    def key(self, offset: int) -> int:
        return 1000 * self.seed + offset


class _Grid:
    """Trains and scores the networks of one seed after another; finished rows are kept (and resumed) by the store."""

    def __init__(self, arch: str, settings: Settings, dev: torch.device, store: _Store, channels: int,
                 on_run: Callable[[dict[str, Any]], None] | None, bar: Callable[[dict[str, Any]], None]) -> None:
        self.arch, self.s, self.dev, self.store, self.c = arch, settings, dev, store, channels
        self.on_run, self.bar = on_run, bar
        self.rows: list[dict[str, Any]] = []

    def run(self, key: dict[str, Any], fn: Callable[[], float]) -> float:
        """The row for ``key``: kept from an earlier run, or ``fn()`` trained and scored now."""
        row = self.store.get(key)
        if row is None:
            t0 = time.perf_counter()
            row = {**key, "accuracy": fn(), "seconds": round(time.perf_counter() - t0, 2)}
            self.store.put(row)
        self.rows.append(row)
        self.bar(row)
        if self.on_run is not None:
            self.on_run(row)
        return row["accuracy"]

    def chain(self, n_classes: int, seed: int) -> _Chain:
        return _Chain(self.arch, n_classes, self.c, seed, self.dev)

    def fit(self, net: _Chain, start: int, x: torch.Tensor, y: torch.Tensor, seed: int, *, tune: bool = False) -> None:
        s = self.s
        _fit(net, start, x, y, s.finetune_epochs if tune else s.epochs, s.finetune_lr if tune else s.lr, s, seed,
             self.dev)

    def score(self, net: _Chain, start: int, x: torch.Tensor, y: torch.Tensor) -> float:
        return _accuracy(net, start, x, y, self.s.batch_size, self.dev)

    def base(self, h: _Seed, which: str, bases: dict[str, _Chain]) -> _Chain:
        """baseA or baseB of this seed: trained once (or loaded from the store)."""
        if which not in bases:
            x, y, _, _ = h.data[which]
            net = self.chain(int(y.max()) + 1, h.key(1 if which == "A" else 2))
            name = f"seed{h.seed}-base{which}"
            if not self.store.load_net(name, net):
                self.fit(net, 0, x, y, h.key(3))
                self.store.save_net(name, net)
            bases[which] = net
        return bases[which]

    def reduced(self, h: _Seed, f: float) -> float:
        x, y, tx, ty = h.data["B"]
        g = torch.Generator().manual_seed(5000 + h.seed)
        keep = []
        for k in range(int(y.max()) + 1):
            idx = (y == k).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)][:max(2, round(f * len(idx)))])
        keep = torch.cat(keep)
        net = self.chain(int(y.max()) + 1, h.key(4))
        self.fit(net, 0, x[keep], y[keep], h.key(5))
        return self.score(net, 0, tx, ty)

    def frozen(self, h: _Seed, lower: _Chain, d: int, feats: list[torch.Tensor], offset: int,
               cell: dict[str, _Chain]) -> _Chain:
        """A network for B whose first ``d`` blocks are ``lower``'s, frozen, the rest trained on the cached features."""
        if "net" not in cell:
            y = h.data["B"][1]
            net = self.chain(int(y.max()) + 1, h.key(offset + d))
            net.copy_lower(lower, d)
            self.fit(net, d, feats[d], y, h.key(offset + 20 + d))
            cell["net"] = net
        return cell["net"]

    def frozen_score(self, h: _Seed, lower: _Chain, d: int, feats: list[torch.Tensor], tfeats: list[torch.Tensor],
                     offset: int, cell: dict[str, _Chain]) -> float:
        return self.score(self.frozen(h, lower, d, feats, offset, cell), d, tfeats[d], h.data["B"][3])

    def tuned_score(self, h: _Seed, lower: _Chain, d: int, feats: list[torch.Tensor], offset: int,
                    cell: dict[str, _Chain]) -> float:
        """The frozen network, then every layer fine-tuned on B (from where the frozen training ended)."""
        x, y, tx, ty = h.data["B"]
        net = self.frozen(h, lower, d, feats, offset, cell)
        self.fit(net, 0, x, y, h.key(offset + 40 + d), tune=True)
        return self.score(net, 0, tx, ty)

    def seed(self, h: _Seed, treatments: list[str], want: list[str], controls: list[str], reduced: list[float],
             depths: list[int], n_cka: int, names: list[str]) -> tuple[dict, dict, dict]:
        """Every network of one seed; returns its CKA, A-probe and B-probe rows."""
        bases: dict[str, _Chain] = {}
        xa, ya, ta, tya = h.data["A"]
        xb, yb, tb, tyb = h.data["B"]
        self.run({"treatment": "baseA", "depth": 0, "seed": h.seed},
                 lambda: self.score(self.base(h, "A", bases), 0, ta, tya))
        self.run({"treatment": "baseB", "depth": 0, "seed": h.seed},
                 lambda: self.score(self.base(h, "B", bases), 0, tb, tyb))
        for f in reduced:
            self.run({"treatment": "reduced", "depth": 0, "seed": h.seed, "fraction": f}, partial(self.reduced, h, f))
        top, bs = max(depths), self.s.batch_size
        lowers = {w: self.base(h, w, bases) for w in ("B", "A") if w == "B" or "AnB" in want}
        if controls:
            lowers["random"] = self.chain(int(yb.max()) + 1, h.key(6))
        feats = {w: _depth_features(net, xb, top, bs, self.dev) for w, net in lowers.items()}
        tfeats = {w: _depth_features(net, tb, top, bs, self.dev) for w, net in lowers.items()}
        for d in depths:
            for w in ("B", "A"):
                if f"{w}nB" not in want:
                    continue
                cell: dict[str, _Chain] = {}
                offset = 10 if w == "B" else 110
                args = (h, lowers[w], d, feats[w])
                self.run({"treatment": f"{w}nB", "depth": d, "seed": h.seed},
                         partial(self.frozen_score, *args, tfeats[w], offset, cell))
                if f"{w}nB+" in treatments:
                    self.run({"treatment": f"{w}nB+", "depth": d, "seed": h.seed},
                             partial(self.tuned_score, *args, offset, cell))
            if controls:
                self.run({"treatment": "random", "depth": d, "seed": h.seed},
                         partial(self.frozen_score, h, lowers["random"], d, feats["random"], tfeats["random"], 60, {}))
        # generality without retraining: CKA between the bases on the same images, a probe on B of each base's
        # features (the cached ones: B's training and held-out images through A's and B's blocks)
        ca = _depth_features(self.base(h, "A", bases), tb[:n_cka], top, bs, self.dev)
        cb = _depth_features(self.base(h, "B", bases), tb[:n_cka], top, bs, self.dev)
        cka = {names[d - 1]: linear_cka(ca[d], cb[d]) for d in depths}
        k = int(yb.max()) + 1
        pab = ({names[d - 1]: _fit_and_score(_pool_features(feats["A"][d]), yb, _pool_features(tfeats["A"][d]), tyb,
                                             k, 1e-3)[0] for d in depths} if "A" in feats else {})
        pbb = {names[d - 1]: _fit_and_score(_pool_features(feats["B"][d]), yb, _pool_features(tfeats["B"][d]), tyb, k,
                                            1e-3)[0] for d in depths}
        return cka, pab, pbb


def _pool_features(f: torch.Tensor) -> torch.Tensor:
    return f.flatten(2).mean(2) if f.ndim == 4 else f.flatten(1)


def _rf(arch: str, train: ImageSet, layers: list[str]) -> dict[str, str]:
    from ..core.layers import layers as layer_table

    net = ARCHITECTURES[arch](num_classes=2, in_channels=train.images.shape[1])
    try:
        rows = {r.name: r for r in layer_table(net, input_size=tuple(train.images.shape[1:]))}
    except Exception:  # the figure goes without receptive fields
        return {}
    return {n: rows[n].rf_size for n in layers if n in rows}


def _bar(progress: bool, total: int) -> Callable[[dict[str, Any]], None]:
    if not progress:
        return lambda row: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="transfer grid", unit="net")

    def tick(row: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(last=f"{row['treatment']}@{row['depth']}:{row['accuracy']:.3f}")
        if bar.n >= bar.total:
            bar.close()
    return tick


class _Store:
    """The finished rows, kept in ``out/runs.json`` (atomically) when ``out`` is given; a run with other settings
    starts over."""

    def __init__(self, out: str | Path | None, settings: dict[str, Any]) -> None:
        import json

        self.path = None if out is None else Path(out) / "runs.json"
        self.settings = json.loads(json.dumps(settings, default=str))
        self.rows: list[dict[str, Any]] = []
        if self.path is not None:
            if self.path.parent.exists() and not self.path.parent.is_dir():
                raise InputError(f"out: {self.path.parent} is a file; give a folder")
            if self.path.is_file():
                saved = json.loads(self.path.read_text())
                if saved.get("settings") == self.settings:
                    self.rows = saved.get("runs", [])

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple:
        return row["treatment"], int(row["depth"]), int(row["seed"]), round(float(row.get("fraction", 0)), 9)

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        k = self._key(key)
        return next((r for r in self.rows if self._key(r) == k), None)

    def load_net(self, name: str, chain: _Chain) -> bool:
        """Load a base network kept by an earlier run with these settings into ``chain``; False when there is none."""
        if self.path is None or not self.rows or not (self.path.parent / f"{name}.safetensors").is_file():
            return False
        from safetensors.torch import load_file

        state = load_file(str(self.path.parent / f"{name}.safetensors"))
        chain.net.load_state_dict({k: v.to(next(chain.parameters()).device) for k, v in state.items()})
        return True

    def save_net(self, name: str, chain: _Chain) -> None:
        if self.path is None:
            return
        from safetensors.torch import save_file

        from ..core.io import atomic_path

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path.parent / f"{name}.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in chain.net.state_dict().items()}, str(tmp))

    def put(self, row: dict[str, Any]) -> None:
        import json

        from ..core.io import write_text

        self.rows.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.path, json.dumps({"settings": self.settings, "runs": self.rows}, indent=1) + "\n")


__all__ = ["transfer_curve", "TransferResult", "blocks", "statements", "compare", "interval", "spearman",
           "TREATMENTS", "CONTROLS", "SPLITS", "DISSIMILAR", "TRANSFER_SIZE"]

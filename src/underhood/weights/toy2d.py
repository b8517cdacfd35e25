"""A toy MLP on a 2-D dataset, drawn as its hidden units' lines while it trains.

A one-hidden-layer ReLU network ``f(x) = V relu(W x + b) + c`` from R^2 to 2 classes. Hidden
unit ``i`` is zero exactly on the line ``{x : w_i . x + b_i = 0}``, so the decision boundary
is piecewise linear with its kinks on those lines. Drawing the lines over the decision regions
at log-spaced training steps shows how the units move to carve the data.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.checks import choice, number, positive_int
from ..core.device import threads
from ..core.errors import InputError
from ..core.results import Result
from ..core.seeding import seeded
from ..viz.render import figure_to_png

DATASETS = ("moons", "circles", "spiral", "blobs")
# class 0 orange, class 1 blue (tab10's first two, swapped to keep blue for class 1): red means "wrong" elsewhere
CLASS_COLORS = ("#ff7f0e", "#1f77b4")
REGION_COLORS = ("#fdd0a2", "#f7f7f7", "#b3cde8")  # class-1 probability 0, 0.5, 1
Line = tuple[float, float, float, float]


@dataclass(frozen=True, repr=False)
class Snapshot(Result):
    """Detached copies of the parameters right after ``step`` optimisation steps (0 = initialisation)."""

    step: int
    weight: torch.Tensor  # [hidden, 2]
    bias: torch.Tensor  # [hidden]
    out_weight: torch.Tensor  # [2, hidden]
    out_bias: torch.Tensor  # [2]
    loss: float
    accuracy: float


@dataclass(repr=False)
class Toy2D(Result):
    """What :func:`toy2d` returns: the data, the trained model and the snapshots."""

    x: torch.Tensor  # [n, 2]
    y: torch.Tensor  # [n]
    model: nn.Sequential
    snapshots: list[Snapshot] = field(default_factory=list)
    final_accuracy: float = 0.0

    def scalars(self) -> dict:
        """Points, hidden units, snapshots (and the last one's step), final training accuracy."""
        weight = self.snapshots[-1].weight if self.snapshots else getattr(self.model[0], "weight", None) \
            if isinstance(self.model, nn.Sequential) else None
        out = {"n": len(self.x), "hidden": len(weight) if weight is not None else None,
               "snapshots": len(self.snapshots)}
        if self.snapshots:
            out["last_step"] = self.snapshots[-1].step
        out["final_accuracy"] = self.final_accuracy
        return out

    def figure(self, k: int = 8):
        """A strip of ``k`` frames (:func:`toy2d_strip`)."""
        return toy2d_strip(self, k=k)


# ----------------------------------------------------------------------------- data


def toy_data(name: str = "moons", n: int = 400, *, noise: float = 0.1, seed: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A standardised 2-class 2-D dataset: ``x [n, 2]`` float32 and labels ``y [n]`` int64.

    ``moons``: two interleaved half circles; ``circles``: a circle of radius 0.5 inside one of
    radius 1; ``spiral``: two interleaved arms ``r = t, theta = 3 pi t + c pi`` (``t`` in [0, 1]);
    ``blobs``: Gaussians of std 1 centred at (-1.5, -1.5) and (1.5, 1.5). ``noise`` is the std
    of the Gaussian noise added to every point (for blobs, added to the cluster std). Each
    column is then standardised to mean 0 and std 1.

    Example:
        >>> x, y = toy_data("moons", 100, seed=0)
        >>> tuple(x.shape), int(y.sum())
        ((100, 2), 50)
    """
    choice("name", name, DATASETS)
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise InputError(f"n: expected an integer >= 2, got {n!r}; pass at least two points")
    number("noise", noise)
    rng = np.random.default_rng(seed)
    sizes = (n - n // 2, n // 2)
    y = np.concatenate([np.zeros(sizes[0], np.int64), np.ones(sizes[1], np.int64)])
    if name == "moons":
        t0, t1 = np.linspace(0, math.pi, sizes[0]), np.linspace(0, math.pi, sizes[1])
        x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1),
                            np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    elif name == "circles":
        t0, t1 = (np.linspace(0, 2 * math.pi, s, endpoint=False) for s in sizes)
        x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1),
                            0.5 * np.stack([np.cos(t1), np.sin(t1)], 1)])
    elif name == "spiral":
        arms = []
        for c, s in enumerate(sizes):
            t = np.sqrt(rng.uniform(0.02, 1.0, s))  # sqrt: even density along the arm
            theta = 3 * math.pi * t + c * math.pi
            arms.append(t[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1))
        x = np.concatenate(arms)
    else:
        centres = np.repeat(np.array([[-1.5, -1.5], [1.5, 1.5]]), sizes, axis=0)
        x = centres + rng.normal(0, 1.0, (n, 2))
    x = x + rng.normal(0, noise, x.shape)
    x = (x - x.mean(0)) / x.std(0)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


# ----------------------------------------------------------------------------- training


def default_snapshot_steps(steps: int, count: int = 20) -> list[int]:
    """Log-spaced integers from 1 to ``steps - 1`` (both included; just ``[1]`` when ``steps <= 2``)."""
    if steps <= 2:
        return [1]
    return [int(s) for s in np.unique(np.round(np.logspace(0, math.log10(steps - 1), count)))]


def _snapshot(step: int, model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> Snapshot:
    with torch.no_grad():
        logits = model(x)
        loss = float(nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(1) == y).float().mean())
    first, last = model[0], model[2]
    return Snapshot(step, first.weight.detach().clone(), first.bias.detach().clone(),
                    last.weight.detach().clone(), last.bias.detach().clone(), loss, accuracy)


def toy2d(data: str = "moons", *, hidden: int = 20, steps: int = 5000, lr: float = 0.01, n: int = 400,
          noise: float = 0.1, seed: int = 0, snapshots: list[int] | None = None) -> Toy2D:
    """Train ``Linear(2, hidden) -> ReLU -> Linear(hidden, 2)`` on a toy dataset, with snapshots.

    Full-batch Adam on the cross-entropy loss. Hidden unit ``i`` computes
    ``relu(w_i . x + b_i)``; its line ``{x : w_i . x + b_i = 0}`` is where it switches on
    (see :func:`unit_lines`). A snapshot at step ``s`` holds detached copies of the parameters
    right after ``s`` optimisation steps (``s = 0``: the initialisation), with the training
    loss and accuracy of those parameters. The initialisation is seeded with ``seed`` inside
    :func:`underhood.core.seeding.seeded`, so the global generators are left as they were.

    Args:
        data: ``"moons"``, ``"circles"``, ``"spiral"`` or ``"blobs"`` (see :func:`toy_data`).
        hidden: number of hidden units.
        steps: number of optimisation steps.
        lr: Adam learning rate.
        n, noise: dataset size and noise.
        seed: seeds the data and the initialisation.
        snapshots: steps in ``[0, steps]`` to record; default log-spaced from 1 to ``steps - 1``.

    Example:
        >>> result = toy2d("moons", steps=300)
        >>> result.snapshots[-1].step, tuple(result.snapshots[-1].weight.shape)
        (299, (20, 2))
    """
    positive_int("hidden", hidden)
    positive_int("steps", steps)
    number("lr", lr, strict=True)
    if snapshots is None:
        snapshots = default_snapshot_steps(steps)
    bad = [s for s in snapshots if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= steps]
    if bad:
        raise InputError(f"snapshots: steps must be integers in [0, {steps}], got {bad!r}; drop or fix them")
    wanted = sorted(set(snapshots))
    x, y = toy_data(data, n, noise=noise, seed=seed)
    with seeded(seed):
        model = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    taken = [_snapshot(0, model, x, y)] if wanted and wanted[0] == 0 else []
    with threads(1):  # a 400 x 2 problem: threads only add waiting
        for step in range(1, steps + 1):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if step in wanted:
                taken.append(_snapshot(step, model, x, y))
    model.eval()
    return Toy2D(x, y, model, taken, _snapshot(steps, model, x, y).accuracy)


# ----------------------------------------------------------------------------- geometry


def unit_lines(snapshot: Snapshot, xlim: tuple[float, float], ylim: tuple[float, float]) -> list[Line | None]:
    """Each hidden unit's line ``{x : w . x + b = 0}`` clipped to the box ``xlim x ylim``.

    Returns one ``(x0, y0, x1, y1)`` segment per hidden unit, or ``None`` where the line
    misses the box (or only touches a corner) or ``w = 0``.

    Example:
        >>> s = Snapshot(1, torch.tensor([[1.0, 0.0]]), torch.tensor([-0.5]), torch.zeros(2, 1), torch.zeros(2), 0, 0)
        >>> unit_lines(s, (-1, 1), (-1, 1))
        [(0.5, -1.0, 0.5, 1.0)]
    """
    (xa, xb), (ya, yb) = (float(v) for v in xlim), (float(v) for v in ylim)
    tol = 1e-12 * max(abs(xa), abs(xb), abs(ya), abs(yb), 1.0)
    lines: list[Line | None] = []
    for (w0, w1), b in zip(snapshot.weight.double().tolist(), snapshot.bias.double().tolist()):
        points = []
        if w1 != 0:  # crossings of the vertical edges x = xa, x = xb
            points += [(xe, -(b + w0 * xe) / w1) for xe in (xa, xb)]
        if w0 != 0:  # crossings of the horizontal edges y = ya, y = yb
            points += [(-(b + w1 * ye) / w0, ye) for ye in (ya, yb)]
        inside = [(px, py) for px, py in points if xa - tol <= px <= xb + tol and ya - tol <= py <= yb + tol]
        if len(inside) < 2:
            lines.append(None)
            continue
        # the two crossings farthest apart (a line through a corner crosses two edges there)
        p, q = max(((p, q) for i, p in enumerate(inside) for q in inside[i + 1:]),
                   key=lambda pq: (pq[0][0] - pq[1][0]) ** 2 + (pq[0][1] - pq[1][1]) ** 2)
        lines.append(None if p == q or math.dist(p, q) <= tol else (p[0], p[1], q[0], q[1]))
    return lines


# ----------------------------------------------------------------------------- drawing


def _box(x: torch.Tensor, margin: float = 0.15) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = x.min(0).values.tolist(), x.max(0).values.tolist()
    pad = [margin * (h - low) for low, h in zip(lo, hi)]
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def _class1_probability(snapshot: Snapshot, points: np.ndarray) -> np.ndarray:
    """``softmax(V relu(W x + b) + c)[1]`` for ``points [m, 2]`` with the snapshot's parameters."""
    w, b = snapshot.weight.double().numpy(), snapshot.bias.double().numpy()
    v, c = snapshot.out_weight.double().numpy(), snapshot.out_bias.double().numpy()
    logits = np.maximum(points @ w.T + b, 0) @ v.T + c
    return 1 / (1 + np.exp(np.clip(logits[:, 0] - logits[:, 1], -50, 50)))


def toy2d_frame(result: Toy2D, index: int, *, ax=None, resolution: int = 200):
    """Draw snapshot ``index``: decision regions, the data, and each hidden unit's line.

    The background is the class-1 probability of the network with that snapshot's parameters
    (soft orange/blue), the black contour its decision boundary, the grey lines the hidden units'
    lines ``w_i . x + b_i = 0`` (:func:`unit_lines`). Returns the axes.

    Example:
        >>> ax = toy2d_frame(toy2d(steps=100), -1)   # doctest: +SKIP
    """
    if not -len(result.snapshots) <= index < len(result.snapshots):
        raise InputError(f"index: {index} is out of range for {len(result.snapshots)} snapshots; "
                         f"pass -1 for the last one")
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    if ax is None:
        ax = Figure(figsize=(3.4, 3.4)).subplots()
    snap = result.snapshots[index]
    xlim, ylim = _box(result.x)
    gx, gy = np.meshgrid(np.linspace(*xlim, resolution), np.linspace(*ylim, resolution))
    prob = _class1_probability(snap, np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
    cmap = LinearSegmentedColormap.from_list("toy2d", list(REGION_COLORS))
    ax.imshow(prob, origin="lower", extent=(*xlim, *ylim), cmap=cmap, vmin=0, vmax=1,
              interpolation="bilinear", aspect="equal")
    if prob.min() < 0.5 < prob.max():
        ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.2)
    for line in unit_lines(snap, xlim, ylim):
        if line is not None:
            ax.plot(line[0::2], line[1::2], color="#333333", lw=0.8, alpha=0.55)
    x, y = result.x.numpy(), result.y.numpy()
    for c, color in enumerate(CLASS_COLORS):
        ax.scatter(x[y == c, 0], x[y == c, 1], s=9, c=color, edgecolors="white", linewidths=0.3, zorder=3)
    ax.set(xlim=xlim, ylim=ylim, xticks=[], yticks=[], aspect="equal")
    ax.set_title(f"step {snap.step}, accuracy {100 * snap.accuracy:.0f}%", fontsize=11)
    return ax


def toy2d_strip(result: Toy2D, k: int = 8, *, ncols: int | None = None):
    """A figure with ``k`` frames, evenly picked among the snapshots (the last included), ``ncols``
    to a row (default: all in one row).

    Example:
        >>> fig = toy2d_strip(toy2d(steps=100), k=4)   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    positive_int("k", k)
    if not result.snapshots:
        raise InputError("result: it has no snapshots; train with snapshots=[...] to draw frames")
    k = min(k, len(result.snapshots))
    picks = np.round(np.linspace(0, len(result.snapshots) - 1, k)).astype(int) if k > 1 else [-1]
    ncols = k if ncols is None else max(1, min(positive_int("ncols", ncols), k))
    nrows = -(-k // ncols)
    fig = Figure(figsize=(2.7 * ncols, 3.0 * nrows))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[k:]:
        fig.delaxes(ax)
    for ax, index in zip(grid.flat, picks):
        toy2d_frame(result, int(index), ax=ax)
    fig.tight_layout()
    return fig


def toy2d_gif(result: Toy2D, path: str | os.PathLike, *, fps: float = 4, dpi: int = 90) -> Path:
    """Write an animated GIF of all snapshots to ``path`` atomically (looping; the last frame held 1 s longer).

    Example:
        >>> toy2d_gif(toy2d(steps=100), "toy2d.gif")   # doctest: +SKIP
    """
    from matplotlib.figure import Figure
    from PIL import Image

    from ..core.io import write_bytes

    number("fps", fps, strict=True)
    if not result.snapshots:
        raise InputError("result: it has no snapshots; train with snapshots=[...] to make a GIF")
    frames = []
    for index in range(len(result.snapshots)):
        fig = Figure(figsize=(3.6, 3.6))
        toy2d_frame(result, index, ax=fig.subplots())
        frame = Image.open(io.BytesIO(figure_to_png(fig, dpi=dpi))).convert("RGB")
        frames.append(frame if not frames else frame.resize(frames[0].size))
    durations = [round(1000 / fps)] * len(frames)
    durations[-1] += 1000
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return write_bytes(path, buf.getvalue())

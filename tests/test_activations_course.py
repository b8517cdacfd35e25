"""The lectures' activation experiments: invariance by layer, features over training, swiss roll, t-SNE grid."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underhood.activations import evolution, grid_cells, invariance, swiss_roll, top_patches, transformed
from underhood.core.errors import InputError


class PixelMean(nn.Module):
    """Global average of the pixels, then a linear head: exactly invariant to circular shifts."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(x))).flatten(1))


def _images(n: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- transforms against torch reference ops -------------------------------------------------------------------

def test_transforms_match_torch_reference_ops():
    x = _images(2, 8)
    torch.testing.assert_close(transformed(x, "rotate", 90), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(transformed(x, "rotate", 180), torch.rot90(x, 2, dims=(-2, -1)), atol=1e-5, rtol=0)
    for shift in (3, -5):
        torch.testing.assert_close(transformed(x, "translate", shift, padding="circular"),
                                   torch.roll(x, shift, dims=-2), atol=1e-5, rtol=0)
    down = torch.zeros_like(x)
    down[:, :, 2:] = x[:, :, :-2]
    torch.testing.assert_close(transformed(x, "translate", 2), down, atol=1e-5, rtol=0)
    # zooming in by 2 about the centre = bilinear upsampling by 2, centre crop
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)[:, :, 4:12, 4:12]
    torch.testing.assert_close(transformed(x, "scale", 2.0), ref, atol=1e-5, rtol=0)


def test_identity_amount_is_an_exact_copy_and_bad_amounts_fail():
    x = _images(1, 6)
    for t, a in (("translate", 0), ("scale", 1), ("rotate", 0)):
        out = transformed(x, t, a)
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    with pytest.raises(InputError, match="amount"):
        transformed(x, "scale", 0)
    with pytest.raises(InputError, match="transform"):
        transformed(x, "shear", 1)


# --- invariance ---------------------------------------------------------------------------------------------

def test_amount_zero_gives_zero_distance_and_the_clean_probability():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = _images(5, 10, seed=1)
    labels = torch.tensor([0, 1, 2, 0, 1])
    r = invariance(model, x, layers=["conv", "pool"], transform="translate", amounts=[-2, 0, 3], target=labels,
                   batch_size=2)
    assert r.distance["conv"].shape == (3, 5) and r.probability.shape == (3, 5)
    assert torch.equal(r.distance["conv"][1], torch.zeros(5)) and torch.equal(r.distance["pool"][1], torch.zeros(5))
    with torch.no_grad():
        clean = model(x).softmax(1)[torch.arange(5), labels]
        moved = model(transformed(x, "translate", 3)).softmax(1)[torch.arange(5), labels]
        conv = (model.conv(transformed(x, "translate", 3)) - model.conv(x)).flatten(1).norm(dim=1)
    torch.testing.assert_close(r.probability[1], clean)
    torch.testing.assert_close(r.probability[2], moved)
    torch.testing.assert_close(r.distance["conv"][2], conv)  # the slow reference: one layer by hand
    torch.testing.assert_close(r.norm["conv"], model.conv(x).flatten(1).norm(dim=1).detach())
    assert r.distance["conv"][0].min() > 0
    assert "relative[conv]" in r.summary() and "Invariance(" in repr(r)


def test_an_exactly_invariant_model_has_zero_distance_under_circular_shifts():
    model = PixelMean().eval()
    x = _images(4, 8)
    r = invariance(model, x, layers=["pool"], transform="translate", amounts=range(-4, 5), padding="circular",
                   batch_size=4)
    torch.testing.assert_close(r.distance["pool"], torch.zeros(9, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.probability, r.probability[4].expand(9, -1), atol=1e-6, rtol=0)
    # the same model is exactly invariant to quarter turns too
    turns = invariance(model, x, layers=["pool"], transform="rotate", amounts=[0, 90, 180, 270], batch_size=4)
    torch.testing.assert_close(turns.distance["pool"], torch.zeros(4, 4), atol=1e-6, rtol=0)


def test_invariance_defaults_errors_and_model_left_alone(tmp_path):
    model = Tiny().train()
    x = _images(2, 8)
    flags = [p.requires_grad for p in model.parameters()]
    r = invariance(model, x, transform="scale", batch_size=2)  # default layers and the paper's amounts
    assert r.layers and float(r.amounts[0]) == 1.0 and float(r.amounts[-1]) == pytest.approx(1.8)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(InputError, match="target"):
        invariance(model, x, layers="conv", target=torch.tensor([0, 1, 2]), batch_size=2)
    with pytest.raises(InputError, match="transform"):
        invariance(model, x, layers="conv", transform="flip", batch_size=2)
    assert (r.save(tmp_path / "inv") / "manifest.json").is_file()


# --- swiss roll and the t-SNE grid ----------------------------------------------------------------------------

def test_swiss_roll_shape_and_seed():
    points, t = swiss_roll(50, noise_dims=1, seed=3)
    assert points.shape == (50, 3) and t.shape == (50,)
    again, t2 = swiss_roll(50, noise_dims=1, seed=3)
    assert torch.equal(points, again) and torch.equal(t, t2)
    assert not torch.equal(points, swiss_roll(50, seed=4)[0])
    torch.testing.assert_close(points[:, 0], t * torch.cos(t), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(points[:, 1], t * torch.sin(t), atol=1e-4, rtol=1e-5)
    assert t.min() >= 1.5 * torch.pi and t.max() <= 4.5 * torch.pi
    assert swiss_roll(10, noise_dims=3)[0].shape == (10, 5)
    with pytest.raises(InputError, match="noise_dims"):
        swiss_roll(10, noise_dims=-1)


def _costs(coords: torch.Tensor, rows: int, cols: int) -> list[list[float]]:
    """The definition: squared distance from each min-max scaled point to the centre of each cell (row-major)."""
    xy = coords.double()
    unit = (xy - xy.min(0).values) / (xy.max(0).values - xy.min(0).values)
    return [[float((unit[i, 0] - (q + 0.5) / cols) ** 2 + (unit[i, 1] - (1 - (r + 0.5) / rows)) ** 2)
             for r in range(rows) for q in range(cols)] for i in range(len(xy))]


def test_grid_cells_is_a_bijection_and_optimal_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        coords = torch.randn(5, 2, generator=g)
        rows, cols = 2, 3
        cells = grid_cells(coords, shape=(rows, cols))
        flat = (cells[:, 0] * cols + cells[:, 1]).tolist()
        assert len(set(flat)) == 5 and all(0 <= c < rows * cols for c in flat)
        cost = _costs(coords, rows, cols)
        best = min(sum(cost[i][c] for i, c in enumerate(perm)) for perm in itertools.permutations(range(6), 5))
        assert sum(cost[i][c] for i, c in enumerate(flat)) == pytest.approx(best, abs=1e-9)
    square = grid_cells(torch.randn(10, 2, generator=g))  # default: the smallest square, 4 x 4
    assert int(square.max()) <= 3 and len({tuple(c) for c in square.tolist()}) == 10
    with pytest.raises(InputError, match="shape"):
        grid_cells(torch.randn(7, 2), shape=(2, 3))


def test_grid_cells_keeps_an_already_gridded_layout():
    r, q = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    coords = torch.stack([q.flatten(), -r.flatten()], 1)  # row 0 on top: y decreasing with the row
    cells = grid_cells(coords, shape=(3, 4))
    assert torch.equal(cells, torch.stack([r.flatten(), q.flatten()], 1).long())


# --- features over training ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    from underhood.models.training import train

    folder = tmp_path_factory.mktemp("cp") / "shapes"
    train("shapes", data="shapes", epochs=2, n_train=16, batch_size=8, seed=0, checkpoint_every=1,
          checkpoints=folder, progress=False, n_test=12, device="cpu")
    return folder


def test_evolution_equals_top_patches_on_each_reloaded_snapshot(shapes_run, tmp_path):
    from underhood.data import shapes
    from underhood.models.checkpoints import load_checkpoints

    data = shapes(20, seed=5)
    ev = evolution(shapes_run, data, layer="features.3", units=[1, 4], k=2, pattern="deconvnet", batch_size=16)
    cps = load_checkpoints(shapes_run)
    assert ev.epochs.tolist() == [c.epoch for c in cps] == [0, 1, 2]
    assert ev.patches.shape[:3] == (3, 2, 2) and ev.patterns.shape == ev.patches.shape
    assert not torch.equal(ev.values[0], ev.values[-1])  # the weights did move
    for i, cp in enumerate(cps):
        tp = top_patches(cp.load(), data, "features.3", 2, channels=[1, 4], pattern="deconvnet", batch_size=16)
        assert torch.equal(ev.index[i], tp.index) and torch.equal(ev.patches[i], tp.patches)
        torch.testing.assert_close(ev.patterns[i], tp.patterns)
        assert ev.accuracy[i] == pytest.approx(cp.metrics["test_accuracy"])
    assert "snapshots" in ev.summary()
    fig = ev.figure()
    assert len(fig.axes) == 3 * 2
    only = evolution(cps, data, layer="features.3", units=[0], epochs=[2], pattern=None, batch_size=16)
    assert only.epochs.tolist() == [2] and only.patterns is None
    with pytest.raises(InputError, match="epochs"):
        evolution(shapes_run, data, layer="features.3", units=[0], epochs=[7])
    with pytest.raises(InputError, match="checkpoints"):
        evolution(tmp_path, data, layer="features.3", units=[0])


@pytest.mark.slow
def test_train_n_test_measures_on_a_prefix_of_the_held_out_set(shapes_run):
    from underhood.data import test_set
    from underhood.models.checkpoints import load_checkpoints
    from underhood.models.training import accuracy

    held_out = test_set("shapes", 12)
    for cp in load_checkpoints(shapes_run):
        assert cp.metrics["test_accuracy"] == pytest.approx(accuracy(cp.load(), held_out))


# --- figures and the course experiments ------------------------------------------------------------------------

def test_figures_draw():
    from underhood.viz.activations_course import grid_mosaic, invariance_figure, swiss_roll_figure, tsne_grid_figure

    model = Tiny().eval()
    x = _images(3, 8)
    results = [invariance(model, x, layers=["conv", "pool"], transform=t, amounts=a, batch_size=3)
               for t, a in (("translate", [-1, 0, 1]), ("rotate", [0, 90]))]
    fig = invariance_figure(results, strips=[r.strip(x[0], 3) for r in results], relative=True)
    assert len(fig.axes) >= 6
    points, t = swiss_roll(30)
    swiss_roll_figure(points, t, {"PCA": points[:, :2]})
    cells = grid_cells(torch.randn(5, 2), shape=(2, 3))
    mosaic = grid_mosaic(x[:1].expand(5, -1, -1, -1), cells, (2, 3), gap=1)
    assert mosaic.shape == (3, 2 * 9 - 1, 3 * 9 - 1)
    filled = {tuple(c) for c in cells.tolist()}
    empty = next((r, q) for r in range(2) for q in range(3) if (r, q) not in filled)
    assert torch.all(mosaic[:, empty[0] * 9:empty[0] * 9 + 8, empty[1] * 9:empty[1] * 9 + 8] == 1)
    tsne_grid_figure(x[:1].expand(5, -1, -1, -1), cells, (2, 3), labels=torch.tensor([0, 1, 0, 2, 1]))


@pytest.mark.slow
def test_course_experiments_run_quick(tmp_path):
    from underhood.report.course.base import discover, run_experiments

    ids = [i for i in discover() if i.startswith("activations-")]
    out = run_experiments(ids, tmp_path, quick=True)
    assert all(out[i] for i in ids)
    assert len(list((tmp_path / "figures").glob("activations-*.png"))) >= len(ids)

"""underhood.weights.toy2d: a toy 2-D MLP drawn as its hidden units' lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from underhood.core.errors import InputError
from underhood.core.results import Result, load
from underhood.weights.toy2d import (
    Snapshot,
    Toy2D,
    toy2d,
    toy2d_frame,
    toy2d_gif,
    toy2d_strip,
    toy_data,
    unit_lines,
)

STEPS = 200


@pytest.fixture(scope="module")
def result():
    return toy2d("moons", steps=STEPS, seed=0)


# ----------------------------------------------------------------------------- oracle


def test_last_snapshot_is_the_models_first_layer(result):
    final = toy2d("moons", steps=STEPS, seed=0, snapshots=[STEPS])
    snap = final.snapshots[-1]
    assert snap.step == STEPS
    assert torch.equal(snap.weight, final.model[0].weight.detach())
    assert torch.equal(snap.bias, final.model[0].bias.detach())
    assert torch.equal(snap.out_weight, final.model[2].weight.detach())
    assert torch.equal(snap.out_bias, final.model[2].bias.detach())


@pytest.mark.parametrize("index", [0, 3, -1])
def test_snapshot_equals_parameters_after_that_many_steps(result, index):
    snap = result.snapshots[index]
    again = toy2d("moons", steps=snap.step, seed=0, snapshots=[])
    assert torch.equal(snap.weight, again.model[0].weight.detach())
    assert torch.equal(snap.bias, again.model[0].bias.detach())


def test_step_zero_is_the_initialisation():
    result = toy2d("moons", steps=5, seed=3, snapshots=[0, 5])
    torch.manual_seed(3)
    init = torch.nn.Linear(2, 20)
    assert [s.step for s in result.snapshots] == [0, 5]
    assert torch.equal(result.snapshots[0].weight, init.weight.detach())
    assert not torch.equal(result.snapshots[1].weight, init.weight.detach())


def test_lines_lie_on_the_units_and_inside_the_box(result):
    xlim, ylim = (-2.0, 2.5), (-1.5, 1.8)
    for snap in result.snapshots:
        lines = unit_lines(snap, xlim, ylim)
        assert len(lines) == snap.weight.shape[0]
        for (w0, w1), b, line in zip(snap.weight.double().tolist(), snap.bias.double().tolist(), lines):
            if line is None:
                continue
            x0, y0, x1, y1 = line
            for px, py in ((x0, y0), (x1, y1)):
                assert abs(w0 * px + w1 * py + b) < 1e-5
                assert xlim[0] - 1e-9 <= px <= xlim[1] + 1e-9 and ylim[0] - 1e-9 <= py <= ylim[1] + 1e-9
            assert (x0, y0) != (x1, y1)


def test_unit_lines_closed_forms():
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    bias = torch.tensor([-0.5, 1.0, 0.0, -5.0, 1.0])
    snap = Snapshot(1, weight, bias, torch.zeros(2, 5), torch.zeros(2), 0.0, 0.0)
    lines = unit_lines(snap, (-1, 1), (-1, 1))
    assert lines[0] == pytest.approx((0.5, -1.0, 0.5, 1.0))  # x = 0.5
    assert lines[1] == pytest.approx((-1.0, -0.5, 1.0, -0.5))  # y = -0.5
    assert sorted([lines[2][:2], lines[2][2:]]) == [pytest.approx((-1.0, 1.0)), pytest.approx((1.0, -1.0))]
    assert lines[3] is None  # x = 5 misses the box
    assert lines[4] is None  # w = 0


# ----------------------------------------------------------------------------- properties


def test_moons_defaults_reach_95_percent():
    result = toy2d("moons")
    assert result.final_accuracy >= 0.95
    assert result.model.training is False


def test_seeded(result):
    same = toy2d("moons", steps=STEPS, seed=0)
    other = toy2d("moons", steps=STEPS, seed=1)
    for a, b in zip(result.snapshots, same.snapshots):
        assert a.step == b.step and torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert a.loss == b.loss and a.accuracy == b.accuracy
    assert not torch.equal(result.snapshots[-1].weight, other.snapshots[-1].weight)


def test_global_rng_untouched():
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    toy2d("spiral", steps=10, seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


def test_default_snapshot_steps(result):
    steps = [s.step for s in result.snapshots]
    assert steps[0] == 1 and steps[-1] == STEPS - 1
    assert all(a < b for a, b in zip(steps, steps[1:]))
    assert 10 <= len(steps) <= 20


def test_snapshots_are_detached_copies(result):
    snap = result.snapshots[-1]
    assert not snap.weight.requires_grad
    assert snap.weight.shape == (20, 2) and snap.bias.shape == (20,)
    assert snap.out_weight.shape == (2, 20) and snap.out_bias.shape == (2,)
    assert 0.0 <= snap.accuracy <= 1.0 and snap.loss > 0


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", ["moons", "circles", "spiral", "blobs"])
def test_each_dataset(name):
    x, y = toy_data(name, 101, seed=2)
    assert x.shape == (101, 2) and x.dtype == torch.float32
    assert y.shape == (101,) and y.dtype == torch.int64 and set(y.tolist()) == {0, 1}
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert torch.equal(x, toy_data(name, 101, seed=2)[0])
    result = toy2d(name, hidden=4, steps=20, n=60)
    assert result.snapshots[-1].weight.shape == (4, 2)


def test_bad_arguments():
    with pytest.raises(InputError, match="name: unknown value 'swiss'; choose one of moons, circles, spiral, blobs"):
        toy_data("swiss")
    with pytest.raises(InputError, match="name"):
        toy2d("swiss", steps=2)
    with pytest.raises(InputError, match="hidden: expected a positive int, got 0"):
        toy2d(hidden=0, steps=2)
    with pytest.raises(InputError, match="hidden"):
        toy2d(hidden=2.5, steps=2)
    with pytest.raises(InputError, match="steps"):
        toy2d(steps=0)
    with pytest.raises(InputError, match="snapshots"):
        toy2d(steps=5, snapshots=[6])
    with pytest.raises(InputError, match="lr"):
        toy2d(steps=5, lr=0)
    with pytest.raises(InputError, match="noise"):
        toy_data("moons", noise=-1)


# ----------------------------------------------------------------------------- pictures


def test_frame_draws_all_lines(result):
    from matplotlib.figure import Figure

    ax = toy2d_frame(result, -1)
    assert ax.get_title().startswith(f"step {STEPS - 1}, accuracy ")
    assert type(ax.figure) is Figure  # a bare figure: no pyplot, nothing to close
    with pytest.raises(InputError, match="index"):
        toy2d_frame(result, len(result.snapshots))


def test_strip_has_k_axes(result):
    fig = toy2d_strip(result, k=5)
    assert len(fig.axes) == 5
    assert fig.axes[-1].get_title().startswith(f"step {STEPS - 1},")
    two_rows = toy2d_strip(result, k=5, ncols=3)
    assert len(two_rows.axes) == 5 and len({round(ax.get_position().y0, 3) for ax in two_rows.axes}) == 2
    assert two_rows.axes[-1].get_title().startswith(f"step {STEPS - 1},")


def test_drawing_leaves_pyplot_alone(result, tmp_path):
    """No pyplot figure is left open: the library draws on bare Figure objects."""
    import sys

    from matplotlib.figure import Figure

    assert type(toy2d_strip(result, k=2)) is Figure
    toy2d_gif(toy2d("moons", hidden=3, steps=3, snapshots=[0, 3]), tmp_path / "t.gif")
    plt = sys.modules.get("matplotlib.pyplot")
    assert plt is None or not plt.get_fignums()


# ----------------------------------------------------------------------------- result protocol


def test_result_repr_summary_and_figure(result):
    assert isinstance(result, Result) and isinstance(result.snapshots[0], Result)
    text = repr(result)
    assert text.startswith("Toy2D(") and len(text) <= 400 and "tensor(" not in text, text
    assert "<Sequential>" in text and "snapshots=[" in text
    assert len(repr(result.snapshots[0])) <= 400 and "tensor(" not in repr(result.snapshots[0])
    s = result.scalars()
    assert s == {"n": 400, "hidden": 20, "snapshots": len(result.snapshots), "last_step": STEPS - 1,
                 "final_accuracy": result.final_accuracy}
    assert isinstance(result.summary(), str) and result.summary().splitlines()[0] == "Toy2D"
    assert len(result.figure(k=3).axes) == 3


def test_save_and_load_rebuild_the_snapshots(tmp_path):
    result = toy2d("moons", hidden=3, steps=4, n=20, snapshots=[0, 2, 4])
    back = load(result.save(tmp_path / "toy"))
    assert isinstance(back, Toy2D) and back.final_accuracy == result.final_accuracy
    assert torch.equal(back.x, result.x) and torch.equal(back.y, result.y)
    assert [type(s) for s in back.snapshots] == [Snapshot] * 3
    for a, b in zip(back.snapshots, result.snapshots):
        assert a.step == b.step and a.loss == b.loss and torch.equal(a.weight, b.weight)
        assert torch.equal(a.out_bias, b.out_bias)
    assert torch.equal(back.model["0.weight"], result.model[0].weight)  # the model comes back as its state_dict


def test_gif_has_one_frame_per_snapshot(tmp_path):
    result = toy2d("circles", hidden=5, steps=30, snapshots=[0, 1, 5, 30])
    path = toy2d_gif(result, tmp_path / "sub" / "toy.gif", fps=8)
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.n_frames == len(result.snapshots) == 4
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["toy.gif"]

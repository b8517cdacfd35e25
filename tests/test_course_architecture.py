"""Receptive fields, dilation arithmetic, fully connected layers as convolutions, and their course experiments.

Oracles: ``torch.nn.Conv2d``'s own output sizes; the non-zero support of a gradient (exact for convolutions with
non-zero weights); the analytic field of :func:`underhood.core.layers.layers`; the original model's logits.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from underhood.core.errors import InputError, LayerError
from underhood.core.layers import layers
from underhood.core.receptive import conv_output_size, effective_receptive_field, stack_fields, support, taps
from underhood.models import fully_convolutional, load_model

# ----------------------------------------------------------------------------- output sizes


def test_the_lectures_dilated_convolution() -> None:
    assert conv_output_size((20, 30), 3, dilation=4) == (12, 22)
    assert tuple(nn.Conv2d(1, 1, kernel_size=3, dilation=4)(torch.zeros(1, 1, 20, 30)).shape[2:]) == (12, 22)


def test_output_size_matches_torch_on_a_grid() -> None:
    for (h, w), k, s, p, d in itertools.product([(20, 30), (7, 11), (32, 32)], (1, 2, 3, 5), (1, 2, 3), (0, 1, 2),
                                                (1, 2, 4)):
        span = d * (k - 1) + 1
        if min(h, w) + 2 * p < span:
            with pytest.raises(InputError, match="size"):
                conv_output_size((h, w), k, stride=s, padding=p, dilation=d)
            continue
        expected = tuple(nn.Conv2d(1, 1, k, s, p, d)(torch.zeros(1, 1, h, w)).shape[2:])
        assert conv_output_size((h, w), k, stride=s, padding=p, dilation=d) == expected, (h, w, k, s, p, d)
    # anisotropic settings and the string paddings, as nn.Conv2d takes them
    conv = nn.Conv2d(1, 1, (3, 5), stride=(1, 2), padding=(2, 0), dilation=(3, 1))
    assert conv_output_size((20, 30), (3, 5), stride=(1, 2), padding=(2, 0), dilation=(3, 1)) == \
        tuple(conv(torch.zeros(1, 1, 20, 30)).shape[2:])
    for pad in ("same", "valid"):
        conv = nn.Conv2d(1, 1, 3, padding=pad, dilation=2)
        expected = tuple(conv(torch.zeros(1, 1, 20, 30)).shape[2:])
        assert conv_output_size((20, 30), 3, padding=pad, dilation=2) == expected
    assert conv_output_size(64, 3, stride=2, padding=1) == 32
    with pytest.raises(InputError, match="stride"):
        conv_output_size(10, 3, stride=0)


# ----------------------------------------------------------------------------- exact support and fields


def _stack(convs, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(*[nn.Conv2d(1, 1, k, s, p, d) for k, s, p, d in convs]).double()
    for m in net:
        nn.init.uniform_(m.weight, 0.5, 1.0)  # no zero weight: the gradient's support is the wiring
    return net


@pytest.mark.parametrize("convs", [
    [(3, 1, 0, 4)],                                 # the lecture's layer
    [(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)],     # Yu and Koltun's exponential stack
    [(3, 1, 0, 2), (3, 1, 0, 2)],                   # a stack with holes
    [(3, 2, 1, 1), (5, 3, 2, 2), (2, 2, 0, 1)],     # strides, padding at the border
])
def test_support_is_the_gradients_support(convs) -> None:
    net = _stack(convs)
    x = torch.rand(1, 1, 23, 29, dtype=torch.float64, requires_grad=True)
    y = net(x)
    for pos in [(0, 0), (y.shape[2] // 2, y.shape[3] // 2), (y.shape[2] - 1, y.shape[3] - 1)]:
        (g,) = torch.autograd.grad(y[0, 0, pos[0], pos[1]], x, retain_graph=True)
        assert torch.equal(g[0, 0] != 0, support((23, 29), convs, pos)), pos


def test_support_in_one_dimension_and_holes() -> None:
    assert support(11, [(3, 1, 0, 1), (3, 1, 0, 2)]).int().tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    holes = support(9, [(3, 1, 0, 2), (3, 1, 0, 2)], 0)
    assert holes.int().tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert taps(6, (3, 1, 0, 4)) == [6, 10, 14]
    with pytest.raises(InputError, match="position"):
        support(9, [(3, 1, 0, 1)], 7)


def test_stack_fields_agree_with_the_architecture_table() -> None:
    convs = [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (5, 2, 0, 3)]
    net = nn.Sequential(*[nn.Conv2d(1, 1, k, s, p, d) for k, s, p, d in convs])
    rows = layers(net, input_size=(1, 64, 64))
    for row, field in zip(rows, stack_fields(convs)):
        assert row.rf == (field.r, field.r) and row.jump == (field.j, field.j) and row.start == (field.c, field.c)
    assert [f.r for f in stack_fields([(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)])] == [3.0, 7.0, 15.0]


# ----------------------------------------------------------------------------- fields measured by gradient


@pytest.mark.parametrize("spec,names", [("shapes", ["features.0", "features.3", "features.10", "features.17"]),
                                        ("shapes-resnet", ["layer3"]), ("digits", ["conv2", "pool2"])])
def test_gradient_support_of_the_built_in_models_is_the_computed_field(spec, names) -> None:
    model = load_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name in names:
        erf = effective_receptive_field(model, name, n_samples=8, seed=0)
        assert erf.box is not None and erf.measured_box == erf.box, (name, erf.box, erf.measured_box)
        row = next(r for r in layers(model) if r.name == name)
        assert erf.box[2] - erf.box[0] + 1 == min(row.rf[0], model.input_size[1])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert "agrees" in str(erf.summary())


def test_effective_field_errors() -> None:
    model = load_model("digits")
    with pytest.raises(LayerError, match="fc1"):
        effective_receptive_field(model, "fc1", n_samples=1)
    with pytest.raises(InputError, match="position"):
        effective_receptive_field(model, "conv1", position=(40, 0), n_samples=1)


# ----------------------------------------------------------------------------- fully convolutional


@pytest.mark.parametrize("spec", ["digits", "shapes", "shapes-resnet"])
@pytest.mark.parametrize("pooling", ["global", "window"])
def test_fully_convolutional_equals_the_model_at_its_size(spec, pooling) -> None:
    model = load_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    fcn = fully_convolutional(model, model.input_size, pooling=pooling)
    x = torch.rand(3, *model.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = fcn(x)
        torch.testing.assert_close(out.flatten(1), model(x), atol=1e-5, rtol=1e-4)
    assert out.shape[2:] == (1, 1)
    assert not any(isinstance(m, nn.Linear) for m in fcn.modules())
    # the user's model is untouched
    assert [type(m) for m in model.modules()] == kinds
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    big = torch.rand(1, model.input_size[0], 2 * model.input_size[1], 3 * model.input_size[2])
    with torch.no_grad():
        shape = fcn(big).shape
    dense = spec == "digits" or pooling == "window"
    assert shape[1] == len(model.classes) and (shape[2:] == (9, 17) if dense else shape[2:] == (1, 1))


def test_sliding_lenet_equals_lenet_on_each_window() -> None:
    """LeNet has no padding: the converted network's output (i, j) is LeNet on the window at (4i, 4j)."""
    model = load_model("digits")
    fcn = fully_convolutional(model)
    canvas = torch.rand(2, 1, 48, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = fcn(canvas)
        for i, j in [(0, 0), (2, 3), (4, 6)]:
            crop = canvas[:, :, 4 * i:4 * i + 32, 4 * j:4 * j + 32]
            torch.testing.assert_close(dense[:, :, i, j], model(crop), atol=1e-5, rtol=1e-4)


class _Viewing(nn.Module):
    """A classifier written with ``x.view(x.size(0), -1)`` and functional ops, left in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 6 * 6, 7)
        self.fc2 = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(torch.sigmoid(self.fc1(x))))


def test_fully_convolutional_on_views_and_sequentials() -> None:
    net = _Viewing()
    fcn = fully_convolutional(net, (3, 8, 8))
    assert net.training and fcn.training and isinstance(net.fc1, nn.Linear)
    x = torch.rand(2, 3, 8, 8)
    net.eval()
    fcn.eval()
    torch.testing.assert_close(fcn(x).flatten(1), net(x))
    assert fcn(torch.rand(1, 3, 20, 12)).shape == (1, 2, 13, 5)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    fseq = fully_convolutional(seq, (1, 6, 6))
    assert not any(isinstance(m, (nn.Flatten, nn.Linear)) for m in fseq.modules())
    torch.testing.assert_close(fseq(torch.ones(1, 1, 6, 6)).flatten(1), seq(torch.ones(1, 1, 6, 6)))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.fc(x.flatten(1))


def test_fully_convolutional_errors() -> None:
    with pytest.raises(InputError, match="torch.fx"):
        fully_convolutional(_Branchy(), (3, 4, 4))
    with pytest.raises(InputError, match="pooling"):
        fully_convolutional(load_model("digits"), pooling="max")
    with pytest.raises(InputError, match="input_size"):
        fully_convolutional(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    mixer = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 6), nn.Unflatten(1, (2, 3)),
                          nn.Flatten(), nn.Linear(6, 2))  # the second flatten cannot be a convolution's
    with pytest.raises(InputError, match="model"):
        fully_convolutional(mixer, (1, 6, 6))


# ----------------------------------------------------------------------------- the course experiments


def test_course_experiments_quick(tmp_path) -> None:
    from underhood.report.course.base import run_experiments

    html = run_experiments(["ee559-dilation", "csc413-fc-as-conv", "csc413-receptive-field"], tmp_path, quick=True)
    assert "12x22" in html["ee559-dilation"] and "on 6 of 6 settings" in html["ee559-dilation"]
    assert "exactly the 3x3 taps" in html["ee559-dilation"]
    assert "names 6 of 6 correctly" in html["csc413-fc-as-conv"]
    assert "In 8 of 8 layers" in html["csc413-receptive-field"]
    for name in ("ee559-dilation", "csc413-fc-as-conv", "csc413-receptive-field"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 5000


@pytest.mark.slow
def test_course_experiments_quick_rest(tmp_path) -> None:
    from underhood.report.course.base import run_experiments

    ids = ["map583-cpu-gpu", "ee559-toy2d", "course-filters", "csc413-global-pooling"]
    html = run_experiments(ids, tmp_path, quick=True)
    assert "Device found:" in html["map583-cpu-gpu"]
    assert torch.cuda.is_available() or "no CUDA device" in html["map583-cpu-gpu"]
    assert "64 px" in html["csc413-global-pooling"] and all(html[i] for i in ids)

"""Layer resolution, the architecture table, and analytic receptive fields against empirical ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import underhood
from underhood.core.errors import InputError, LayerError
from underhood.core.layers import layers, resolve
from underhood.models.architectures import LeNet, ShapesResNet, ShapesVGG


def test_resolve_and_close_matches():
    net = ShapesVGG()
    assert resolve(net, "features.0") is net.features[0]
    with pytest.raises(LayerError, match=r"did you mean 'features\.1"):
        resolve(net, "features.1O")
    with pytest.raises(LayerError, match="no layer named"):
        resolve(net, "nothing_like_it")


def test_wrapper_adds_no_prefix():
    model = underhood.load_model("shapes", device="cpu")
    assert resolve(model, "features.0") is model.net.features[0]
    names = [r.name for r in layers(model)]
    assert names[0] == "features.0" and not any(n.startswith("net") for n in names)


class Chain(nn.Module):
    """Linear (no ReLU) conv/pool chain with a dilated conv and a residual branch."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
        self.pool = nn.AvgPool2d(2)
        self.c = nn.Conv2d(2, 2, 5, stride=2, padding=2)
        self.skip = nn.Conv2d(2, 2, 1, stride=2)
        self.d = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        x = self.pool(self.b(self.a(x)))
        return self.d(self.c(x)) + self.skip(x)


def _empirical_rf(net: nn.Module, layer: str, size: int = 96) -> tuple[int, int]:
    """Support extent (rows, cols) of d unit / d input for the centre unit of ``layer``."""
    x = torch.randn(1, net_in(net), size, size, dtype=torch.float64, requires_grad=True)
    net = net.double()
    with underhood.capture(net, layer, detach=False) as cap:
        net(x)
    act = cap.live[layer]
    cy, cx = act.shape[-2] // 2, act.shape[-1] // 2
    act[0, :, cy, cx].sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def net_in(net: nn.Module) -> int:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def test_dilated_conv_field_is_1_plus_k_minus_1_times_d():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=3, dilation=3))
    row = layers(net, input_size=(1, 32, 32))[0]
    assert row.rf == (7.0, 7.0) and row.jump == (1.0, 1.0)
    assert _empirical_rf(net, "0") == (7, 7)


@pytest.mark.parametrize("layer", ["a", "b", "pool", "c", "skip", "d"])
def test_analytic_field_matches_gradient_support(layer):
    net = Chain()
    torch.manual_seed(0)
    rows = {r.name: r for r in layers(net, input_size=(1, 96, 96))}
    assert rows[layer].rf[0] == _empirical_rf(net, layer)[0]


def test_residual_sum_takes_union_of_branches():
    # d's output plus the skip: the sum's field is the larger one, computed through the `+`
    net = Chain()
    table = {r.name: r for r in layers(net, input_size=(1, 96, 96))}
    assert table["d"].rf[0] > table["skip"].rf[0]
    assert table["skip"].jump == (4.0, 4.0) and table["c"].jump == (4.0, 4.0)


def test_functional_ops_are_followed():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.head = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.head(F.max_pool2d(F.relu(self.conv(x)), 2))

    row = {r.name: r for r in layers(Functional(), input_size=(1, 20, 20))}["head"]
    assert row.rf == (3 + 1 + 2 * 2,) * 2 and row.jump == (2.0, 2.0)


def test_builtin_tables():
    vgg = {r.name: r for r in layers(ShapesVGG(), input_size=(3, 64, 64))}
    assert vgg["features.0"].rf == (3.0, 3.0)
    assert vgg["features.17"].output_shape == (64, 8, 8) and vgg["features.17"].jump == (8.0, 8.0)
    assert vgg["classifier"].rf is None and vgg["classifier"].output_shape == (8,)
    assert vgg["pool"].rf is None
    res = {r.name: r for r in layers(ShapesResNet(), input_size=(3, 64, 64))}
    assert res["layer1.0.relu"].calls == 2  # one ReLU module reused inside the block
    assert res["layer3.0"].jump == (8.0, 8.0)
    lenet = {r.name: r for r in layers(LeNet(), input_size=(1, 32, 32))}
    assert lenet["conv2"].rf == (14.0, 14.0) and lenet["pool2"].rf == (16.0, 16.0)
    assert sum(r.params for r in lenet.values()) == sum(p.numel() for p in LeNet().parameters())


def test_empirical_field_of_builtin_resnet_block():
    torch.manual_seed(0)
    net = ShapesResNet()
    net.eval()
    table = {r.name: r for r in layers(net, input_size=(3, 64, 64))}
    # max pooling routes the gradient to one input per window, so the support is at most the field
    assert _empirical_rf(net, "layer1.0.conv2", size=64)[0] <= table["layer1.0.conv2"].rf[0]


def test_layers_errors():
    with pytest.raises(InputError, match="input_size"):
        layers(ShapesVGG())
    with pytest.raises(InputError, match="cannot run"):
        layers(ShapesVGG(), input_size=(1, 64, 64))

"""activations.statistics: streamed per-channel statistics equal a brute-force pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underhood.activations import statistics
from underhood.core.errors import InputError, LayerError

from .conftest import model_problems


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():
        net[2].bias[1] = -100.0   # channel 1 of layer "3" never fires: a dead unit
    return net.eval()


def test_statistics_equal_a_brute_force_pass():
    net, x = _net(), torch.rand(23, 3, 12, 12)
    st = statistics(net, x, "3", batch_size=5, bins=10)
    a = net[:4](x).detach().double()
    assert torch.allclose(st.mean.double(), a.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(st.std.double(), a.transpose(0, 1).flatten(1).std(1, unbiased=False), atol=1e-5)
    assert torch.allclose(st.active, (a.flatten(2).amax(2) > 0).double().mean(0).float())
    assert bool(st.dead[1]) and torch.equal(st.dead, a.flatten(2).amax((0, 2)) <= 0) and st.n == 23
    assert st.histogram.shape == (4, 10) and (st.histogram.sum(1) == 23).all()
    response = a.mean((2, 3)).float()
    inner = st.edges[1:-1]
    for c in range(4):
        expected = torch.bincount(torch.bucketize(response[:, c].contiguous(), inner), minlength=10)
        assert torch.equal(st.histogram[c], expected)


def test_batch_size_does_not_change_the_result_and_linear_layers_work():
    net, x = _net(), torch.rand(17, 3, 12, 12)
    one, many = statistics(net, x, "3", batch_size=1), statistics(net, x, "3", batch_size=17)
    assert torch.allclose(one.mean, many.mean, atol=1e-6) and torch.equal(one.active, many.active)
    lin = statistics(net, x, "5", batch_size=4)
    assert lin.mean.shape == (3,) and torch.allclose(lin.mean, net(x).mean(0).detach(), atol=1e-5)


def test_errors_and_model_state():
    net = _net().train()
    with pytest.raises(LayerError, match="did you mean"):
        statistics(net, torch.rand(2, 3, 12, 12), "33")
    with pytest.raises(InputError, match="dataset"):
        statistics(net, torch.rand(3, 12, 12), "3")
    with pytest.raises(InputError, match="bins"):
        statistics(net, torch.rand(2, 3, 12, 12), "3", bins=0)
    statistics(net, torch.rand(2, 3, 12, 12), "3", batch_size=1)
    assert net.training and model_problems(net.modules()) == []


def test_builtin_model_and_imageset(shapes_model, shapes_small):
    st = statistics(shapes_model, shapes_small, "features.10", batch_size=8)
    channels = shapes_model.net.features[:11](torch.zeros(1, 3, 64, 64)).shape[1]
    assert st.mean.shape == (channels,) and st.histogram.shape[0] == channels and st.n == len(shapes_small)
    assert 0 <= float(st.active.min()) and float(st.active.max()) <= 1


def test_sliced_states_merge_into_the_whole():
    from underhood.activations.statistics import accumulate, from_state, histogram_edges, merge

    net, x = _net(), torch.rand(300, 3, 12, 12)
    whole = statistics(net, x, "3", batch_size=7, bins=12)
    edges = histogram_edges(net, x, "3", bins=12, batch_size=50)
    assert torch.equal(edges, whole.edges)  # edges from the first 256 inputs, whatever the batching
    parts = [accumulate(net, x, "3", edges, start=a, stop=b, batch_size=16) for a, b in ((0, 100), (100, 290),
                                                                                       (290, 300))]
    merged = from_state("3", merge(parts))
    assert merged.n == 300 and torch.equal(merged.histogram, whole.histogram)
    assert torch.allclose(merged.mean, whole.mean, atol=1e-6) and torch.allclose(merged.std, whole.std, atol=1e-5)
    assert torch.equal(merged.active, whole.active) and torch.equal(merged.dead, whole.dead)
    with pytest.raises(InputError, match="edges"):
        accumulate(net, x, "3", 12, start=5)

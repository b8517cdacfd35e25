"""Targets: class indices, units, callables, and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underhood import Unit
from underhood.core.errors import InputError
from underhood.core.targets import class_indices, scores
from underhood.models.architectures import ShapesVGG


def test_class_indices_kinds():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert class_indices(None, logits).tolist() == [1, 0]
    assert class_indices(2, logits).tolist() == [2, 2]
    assert class_indices([0, 2], logits).tolist() == [0, 2]
    assert class_indices(torch.tensor([1, 1]), logits).tolist() == [1, 1]
    with pytest.raises(InputError, match="out of range"):
        class_indices(3, logits)
    with pytest.raises(InputError, match="one per sample"):
        class_indices([0, 1, 2], logits)


def test_scores_of_linear_model_and_gradient_is_weight_row():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(2, 3, 2, 2, requires_grad=True)
    s, out = scores(lin, x, [2, 0])
    assert torch.allclose(s, out[[0, 1], [2, 0]])
    s.sum().backward()
    w = lin[1].weight
    assert torch.allclose(x.grad[0].flatten(), w[2]) and torch.allclose(x.grad[1].flatten(), w[0])


def test_unit_target_sums_or_picks_positions():
    torch.manual_seed(0)
    net = ShapesVGG().eval()
    x = torch.rand(2, 3, 64, 64)
    act = net.features[:3](x)
    total, _ = scores(net, x, Unit("features.2", 5))
    assert torch.allclose(total, act[:, 5].sum((1, 2)), atol=1e-4)
    point, _ = scores(net, x, Unit("features.2", 5, y=3, x=7))
    assert torch.allclose(point, act[:, 5, 3, 7], atol=1e-6)
    row, _ = scores(net, x, Unit("features.2", 5, y=3))
    assert torch.allclose(row, act[:, 5, 3].sum(-1), atol=1e-5)
    with pytest.raises(InputError, match="channel 99"):
        scores(net, x, Unit("features.2", 99))
    with pytest.raises(InputError, match="Unit.y"):
        scores(net, x, Unit("features.2", 0, y=64))


def test_callable_target():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(4, 3, 2, 2)
    s, out = scores(net, x, lambda o: o.logsumexp(1))
    assert torch.allclose(s, out.logsumexp(1))
    with pytest.raises(InputError, match="callable must return"):
        scores(net, x, lambda o: o)

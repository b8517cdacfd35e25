"""Leave-one-out retraining (influence.retrain.loo_change): the oracle the influence scores are checked against."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underhood.core.errors import InputError
from underhood.influence import influence
from underhood.influence.retrain import loo_change
from underhood.influence.validation import pearson


def _fitted_softmax(n: int = 160, d: int = 5, k: int = 3, seed: int = 0):
    """A linear softmax model fitted (float64, L-BFGS) to noisy labels: the mean loss has a finite minimum there."""
    model, train, queries = _fit(n, d, k, seed)
    return copy.deepcopy(model), train, queries


@functools.lru_cache
def _fit(n: int, d: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(k, d, generator=g)
    y = torch.multinomial((x @ w.T).softmax(1), 1, generator=g).squeeze(1)
    xq, yq = torch.randn(3, d, generator=g), torch.randint(0, k, (3,), generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(d, k).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x.double()), y)
        loss.backward()
        return loss

    opt.step(closure)
    return model.float(), (x, y), (xq, yq)


def test_leave_one_out_matches_exact_influence_and_its_sign():
    model, train, queries = _fitted_softmax()
    damping = 0.01
    r = influence(model, train, queries, method="exact", damping=damping, progress=False, fragility=False)
    tops = [torch.cat([r.helpful(q, 5), r.harmful(q, 5)]) for q in range(3)]
    change = loo_change(model, train, queries, torch.cat(tops), damping=damping)   # one full fit for all
    assert change.shape == (30, 3) and change.dtype == torch.float64
    predicted, actual = [], []
    for q, idx in enumerate(tops):
        a = change[10 * q:10 * (q + 1), q]
        assert (a[:5] > 0).all() and (a[5:] < 0).all()   # positive score -> removing it raises the query's loss
        predicted.append(r.scores[q, idx].double())
        actual.append(a)
    assert pearson(torch.cat(predicted), torch.cat(actual)) > 0.95
    rel = (torch.cat(actual) - torch.cat(predicted)).abs() / torch.cat(predicted).abs()
    assert rel.median() < 0.2   # close, not just correlated


def test_the_model_is_left_as_it_was():
    model, train, queries = _fitted_softmax(n=60)
    model.train()
    before = copy.deepcopy(model.state_dict())
    loo_change(model, train, queries, [0, 1], damping=0.1)
    assert model.training and model.weight.dtype == torch.float32
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_head_inside_a_network_equals_the_head_on_its_features():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    xq, yq = torch.randn(2, 6), torch.randint(0, 3, (2,))
    through = loo_change(net, (x, y), (xq, yq), [3, 7], params="2", damping=0.05)
    with torch.no_grad():
        f, fq = net[1](net[0](x)), net[1](net[0](xq))
    alone = loo_change(net[2], (f, y), (fq, yq), [3, 7], damping=0.05)
    torch.testing.assert_close(through, alone, atol=1e-9, rtol=1e-6)
    every = loo_change(net, (x, y), (xq, yq), [3], params=None, damping=0.05)   # all 99 parameters: Newton too
    assert every.shape == (1, 2) and torch.isfinite(every).all()


def test_removing_a_point_twice_gives_the_same_change_and_duplicates_are_kept():
    model, train, queries = _fitted_softmax(n=60)
    change = loo_change(model, train, queries, torch.tensor([4, 4, -1]), damping=0.1)
    torch.testing.assert_close(change[0], change[1])
    torch.testing.assert_close(change[2], loo_change(model, train, queries, [59], damping=0.1)[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"indices": [60]}, "indices: 60 is not a training index"),
    ({"indices": []}, "indices: expected a non-empty list"),
    ({"damping": -1.0}, "damping"),
    ({"steps": 0}, "steps"),
    ({"params": "nosuch"}, "params: no module or parameter named 'nosuch'"),
])
def test_bad_arguments_are_one_line(kwargs, message):
    model, train, queries = _fitted_softmax(n=60)
    args = {"indices": [0], **kwargs}
    indices = args.pop("indices")
    with pytest.raises(InputError, match=message):
        loo_change(model, train, queries, indices, **args)


def test_an_objective_without_a_minimum_warns():
    x = torch.tensor([[1.0], [-1.0]])
    y = torch.tensor([1, 0])   # separable: without damping the loss has no minimum
    model = nn.Linear(1, 2)
    with pytest.warns(UserWarning, match="did not reach"):
        loo_change(model, (x, y), (x[:1], y[:1]), [0], damping=0.0, steps=5)

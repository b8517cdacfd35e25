"""activations.ablate: class selectivity and unit ablation equal their definitions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import underhood
from underhood.activations.ablate import Ablation, ablate, ablated_logits, class_selectivity
from underhood.core.errors import InputError, LayerError
from underhood.data import ImageSet

from .conftest import model_problems


def _net(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(5, classes)).eval()


def _data(net: nn.Module, n: int = 13, seed: int = 0) -> ImageSet:
    """Random images labelled by the net itself (baseline accuracy 1, so ablation has something to break)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 10, 10, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[: 2] = torch.tensor([0, 1])  # at least two classes, and two errors at most
    return ImageSet(x, y, [str(k) for k in range(4)])


def _accuracy(net: nn.Module, data: ImageSet) -> float:
    with torch.no_grad():
        return float((net(data.images).argmax(1) == data.labels).float().mean())


def _zeroed(net: nn.Module, conv: int, channels) -> nn.Module:
    """A deep copy whose conv ``conv`` outputs 0 on ``channels`` (weights and bias zeroed): the slow reference."""
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for c in channels:
            twin[conv].weight[int(c)] = 0
            twin[conv].bias[int(c)] = 0
    return twin


def test_selectivity_equals_a_slow_per_class_loop():
    net = _net()
    data = _data(net, 23)
    si = class_selectivity(net, data, "3", batch_size=4)
    a = net[:4](data.images).detach().double().mean((2, 3))
    expected = []
    for c in range(a.shape[1]):
        mu = [float(a[data.labels == k, c].mean()) for k in sorted(set(data.labels.tolist()))]
        top = max(mu)
        rest = (sum(mu) - top) / (len(mu) - 1)
        expected.append(0.0 if top + rest == 0 else (top - rest) / (top + rest))
    assert si.shape == (5,) and si.dtype == torch.float32
    assert torch.allclose(si.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_selectivity_closed_form():
    # channel 0 fires for class 0 only (SI 1), channel 1 equally for all (SI 0), channel 2 responds k + 1
    # to class k (SI = (3 - 1.5) / (3 + 1.5) = 1/3), channel 3 is dead (0 by convention)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
        for c in range(3):
            net[0].weight[c, c] = 1.0
        net[0].weight[2, 2] = 3.0  # pixels stay in [0, 1]: channel 2 reads (k + 1) / 3 and responds k + 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    x = torch.zeros(7, 3, 4, 4)
    x[:, 0] = (labels == 0).float()[:, None, None]
    x[:, 1] = 0.5
    x[:, 2] = (labels + 1).float()[:, None, None] / 3
    si = class_selectivity(net, ImageSet(x, labels, ["a", "b", "c"]), "1", batch_size=3)
    assert torch.allclose(si, torch.tensor([1.0, 0.0, 1 / 3, 0.0]), atol=1e-6)


def test_negative_responses_warn():
    net = _net()
    with pytest.warns(UserWarning, match="ReLU"):
        class_selectivity(net, _data(net), "2", batch_size=8)


@pytest.mark.filterwarnings("ignore:layer '2' has negative mean responses")
def test_ablation_equals_zeroing_the_conv_weights_in_a_copy():
    net = _net()
    data = _data(net)
    # 40 inputs per pass: 3 masks stacked on each batch of 13; 5: one mask, ragged batches
    fast = ablate(net, data, "2", batch_size=40, seed=3)
    slow = ablate(net, data, "2", batch_size=5, seed=3)
    assert isinstance(fast, Ablation) and fast.n == 13 and fast.n_classes == 4 and fast.layer == "2"
    assert torch.equal(fast.units, torch.arange(5))
    assert fast.baseline == _accuracy(net, data)
    assert torch.equal(fast.single, torch.tensor([_accuracy(_zeroed(net, 2, [c]), data) for c in range(5)]))
    for order, perm in fast.order_units.items():
        expected = [_accuracy(_zeroed(net, 2, perm[:k]), data) for k in range(6)]
        assert torch.equal(fast.curves[order], torch.tensor(expected)), order
        assert torch.equal(slow.curves[order], fast.curves[order]) and sorted(perm.tolist()) == list(range(5))
        assert fast.curves[order][0] == fast.baseline
    assert torch.equal(slow.single, fast.single)
    sel = fast.selectivity
    assert torch.equal(fast.order_units["selectivity"], torch.argsort(sel, descending=True, stable=True))
    assert torch.equal(fast.order_units["selectivity-low"], torch.argsort(sel, stable=True))
    assert torch.equal(sel, class_selectivity(net, data, "2", batch_size=13))


def test_units_restrict_the_ablation():
    net = _net()
    data = _data(net)
    ab = ablate(net, data, "3", units=[4, 1], orders=("selectivity",), batch_size=64)
    assert torch.equal(ab.units, torch.tensor([4, 1])) and ab.single.shape == (2,) and ab.selectivity.shape == (5,)
    assert list(ab.curves) == ["selectivity"] and ab.curves["selectivity"].shape == (3,)
    assert ab.single.tolist() == [_accuracy(_zeroed(net, 2, [c]), data) for c in (4, 1)]
    assert float(ab.curves["selectivity"][-1]) == _accuracy(_zeroed(net, 2, [1, 4]), data)


def test_zeroing_the_whole_last_hidden_layer_leaves_the_bias():
    net = _net()
    data = _data(net, 17)
    ab = ablate(net, data, "5", orders=("random", "selectivity"), batch_size=100)
    from_bias = float((data.labels == net[-1].bias.argmax()).float().mean())
    assert float(ab.curves["random"][-1]) == from_bias == float(ab.curves["selectivity"][-1])


def test_random_order_is_seeded():
    net = _net()
    data = _data(net)
    a, b = (ablate(net, data, "3", orders=("random",), seed=7, batch_size=64) for _ in range(2))
    c = ablate(net, data, "3", orders=("random",), seed=8, batch_size=64)
    assert torch.equal(a.order_units["random"], b.order_units["random"])
    assert torch.equal(a.curves["random"], b.curves["random"])
    assert not torch.equal(a.order_units["random"], c.order_units["random"])


def test_builtin_model_at_an_inplace_relu(shapes_model):
    data = underhood.datasets.shapes(12, size=32, seed=5)
    ab = ablate(shapes_model, data, "features.16", units=range(0, 64, 8), orders=("selectivity",),
                batch_size=48)
    layer = shapes_model.net.features[16]

    def accuracy(channels) -> float:
        def hook(module, inputs, output):
            output = output.clone()
            output[:, list(channels)] = 0
            return output
        handle = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return float((shapes_model.eval()(data.images).argmax(1) == data.labels).float().mean())
        finally:
            handle.remove()

    assert ab.selectivity.shape == (64,) and ab.n_classes == 8
    assert ab.baseline == accuracy([])
    assert ab.single.tolist() == [accuracy([c]) for c in range(0, 64, 8)]
    perm = ab.order_units["selectivity"].tolist()
    assert ab.curves["selectivity"].tolist() == [accuracy(perm[:k]) for k in range(9)]
    assert float(ab.selectivity.min()) >= 0 and float(ab.selectivity.max()) <= 1


class _Fails(nn.Module):
    def __init__(self, net: nn.Module, at: int) -> None:
        super().__init__()
        self.net, self.at, self.calls = net, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("boom")
        return self.net(x)


def test_model_untouched_also_when_a_forward_raises():
    net = _net()
    data = _data(net, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    ab = ablate(net, data, "3", batch_size=4)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    failing = _Fails(net, at=3)   # two passes for the selectivity, the third is ablated
    with pytest.raises(RuntimeError, match="boom"):
        ablate(failing, data, "net.3", batch_size=4)
    assert failing.training and net.training and model_problems(failing.modules()) == []
    assert ab.curves["random"][0] == ab.baseline


@pytest.mark.filterwarnings("ignore:layer '0' has negative mean responses")
def test_errors():
    net = _net()
    data = _data(net, 6)
    with pytest.raises(LayerError, match="did you mean"):
        ablate(net, data, "33")
    with pytest.raises(InputError, match="dataset.*labelled"):
        ablate(net, data.images, "3")
    with pytest.raises(InputError, match="dataset.*labelled"):
        class_selectivity(net, data.images, "3")
    with pytest.raises(InputError, match="orders"):
        ablate(net, data, "3", orders=("largest",), batch_size=4)
    with pytest.raises(InputError, match="units"):
        ablate(net, data, "3", units=[0, 9], batch_size=4)
    with pytest.raises(InputError, match="single class"):
        ablate(net, ImageSet(data.images, torch.zeros(6, dtype=torch.long), ["a"]), "3", batch_size=4)
    with pytest.raises(LayerError, match="not a float tensor"):
        ablate(nn.Sequential(_Tuple(net)), data, "0", batch_size=4)


class _Tuple(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x), None


def test_figure(tmp_path):
    from underhood.viz.ablation import ablation_figure
    from underhood.viz.render import save_figure

    net = _net()
    ab = ablate(net, _data(net), "3", batch_size=64)
    path = save_figure(ablation_figure(ab, title="tiny"), tmp_path / "ablation.png")
    assert path.stat().st_size > 1000


def test_points_measure_the_curves_at_evenly_spaced_counts(shapes_model, shapes_small):
    full = ablate(shapes_model, shapes_small, "features.16", units=range(10), orders=("selectivity",), batch_size=64)
    few = ablate(shapes_model, shapes_small, "features.16", units=range(10), orders=("selectivity",), points=4,
                 batch_size=64)
    assert few.counts.tolist() == [0, 3, 7, 10] and torch.equal(full.counts, torch.arange(11))
    assert torch.equal(few.curves["selectivity"], full.curves["selectivity"][few.counts])
    with pytest.raises(InputError, match="points"):
        ablate(shapes_model, shapes_small, "features.16", points=1)


class _Joined(nn.Module):
    """A conv whose output joins a tensor from before it: added (a residual) or concatenated."""

    def __init__(self, join: str) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem, self.conv, self.join = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), join
        self.head = nn.Linear(4 if join == "add" else 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        h = torch.relu(self.conv(s))
        h = h + s if self.join == "add" else torch.cat([h, s], 1)
        return self.head(h.mean((2, 3)))


@pytest.mark.filterwarnings("ignore:layer 'conv' has negative mean responses")
@pytest.mark.parametrize("join", ["add", "cat"])
def test_ablation_after_a_residual_or_a_concatenation_equals_the_definition(join):
    # the layers before "conv" run once per input and its output is expanded per mask: a residual that
    # joins later broadcasts; a concatenation cannot, and that input is evaluated the plain way instead
    net = _Joined(join).eval()
    data = _data(net, 9)
    ab = ablate(net, data, "conv", orders=("selectivity",), batch_size=8)

    def zeroed(channels) -> nn.Module:
        twin = copy.deepcopy(net)
        with torch.no_grad():
            for c in channels:
                twin.conv.weight[c] = 0
                twin.conv.bias[c] = 0
        return twin

    def probability(model: nn.Module) -> float:
        with torch.no_grad():
            p = model(data.images).softmax(1)
        return float(p[torch.arange(len(p)), data.labels].mean())

    assert ab.baseline == _accuracy(net, data)
    assert ab.baseline_probability == pytest.approx(probability(net), abs=1e-6)
    assert ab.single.tolist() == [_accuracy(zeroed([c]), data) for c in range(4)]
    assert ab.single_probability.tolist() == pytest.approx([probability(zeroed([c])) for c in range(4)], abs=1e-6)
    perm = ab.order_units["selectivity"].tolist()
    assert ab.curves["selectivity"].tolist() == [_accuracy(zeroed(perm[:k]), data) for k in range(5)]


def test_figure_plots_each_units_drop_in_true_class_probability():
    from underhood.viz.ablation import ablation_figure

    net = _net()
    ab = ablate(net, _data(net), "3", batch_size=64)
    right = ablation_figure(ab).axes[1]
    drops = torch.as_tensor(right.collections[0].get_offsets()[:, 1]).float()
    assert torch.allclose(drops, ab.baseline_probability - ab.single_probability, atol=1e-6)
    assert "probability" in right.get_ylabel()


def test_ablated_logits_equal_a_hand_zeroed_forward():
    net = _net()
    x = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = net[:3](x)
        a[:, [1, 4]] = 0
        expected = net[3:](a)
    net.train()
    assert torch.allclose(ablated_logits(net, x, "2", [1, 4]), expected, atol=1e-6)
    assert net.training and not model_problems([net])
    with pytest.raises(InputError, match="units"):
        ablated_logits(net, x, "2", [9])

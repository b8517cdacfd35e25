"""Linear probes: the claim on the built-in shapes model (accuracy rises with depth, the last stage
matches the model, a random copy stays far below), an oracle for the logistic fit (scikit-learn's
LogisticRegression with the same C; separable features reach 1.0), the model left untouched, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.core.errors import InputError, LayerError
from underhood.core.results import load
from underhood.data import splits
from underhood.transfer import ProbeResult, logistic_regression, probe
from underhood.transfer.probe import PIXEL_GRID


@pytest.fixture(scope="module")
def shapes_model():
    return underhood.load_model("shapes")


@pytest.fixture(scope="module")
def shapes_probe(shapes_model):
    """One probe of the shipped model: 600 training images (a training seed), 400 held-out ones."""
    params = {n: p.detach().clone() for n, p in shapes_model.named_parameters()}
    result = probe(shapes_model, underhood.datasets.shapes(600, seed=1), splits.test_set("shapes", 400), batch_size=64)
    return result, params


# --- the claim on the shapes model -------------------------------------------------------------------------------

def test_default_layers_are_pixels_then_the_stages(shapes_probe, shapes_model):
    result, _ = shapes_probe
    assert list(result.accuracy) == ["pixels", *underhood.core.layers.stages(shapes_model)]
    assert result.layers == underhood.core.layers.stages(shapes_model)
    assert list(result.random) == result.layers
    assert result.rf == {"features.3": "4", "features.10": "14", "features.17": "34"}


def test_accuracy_rises_with_depth(shapes_probe):
    acc = list(shapes_probe[0].accuracy.values())
    drops = [a - b for a, b in zip(acc, acc[1:])]
    assert max(drops) <= 0.01, f"probe accuracy fell by more than 1 point between consecutive layers: {acc}"
    assert acc[-1] - acc[0] > 0.5


def test_last_stage_matches_the_model_and_the_random_copy_stays_far_below(shapes_probe):
    result, _ = shapes_probe
    last = result.layers[-1]
    assert result.model_accuracy is not None and result.model_accuracy > 0.95
    assert abs(result.accuracy[last] - result.model_accuracy) <= 0.01
    assert result.random[last] < result.accuracy[last] - 0.4
    assert result.chance < result.pixels < result.accuracy[last]


def test_the_model_is_left_as_it_was_found(shapes_probe, shapes_model):
    _, before = shapes_probe
    assert not shapes_model.training
    for name, p in shapes_model.named_parameters():
        assert p.grad is None, f"a gradient reached {name}"
        assert p.requires_grad
        assert torch.equal(p.detach(), before[name]), f"{name} changed"


def test_result_protocol_summary_save_load_and_figure(shapes_probe, tmp_path):
    result, _ = shapes_probe
    text = result.summary()
    assert "accuracy[features.17]" in text and "random[features.17]" in text and "model_accuracy" in text
    assert "ProbeResult(" in repr(result) and len(repr(result)) <= 400
    back = load(result.save(tmp_path / "probe"))
    assert isinstance(back, ProbeResult)
    assert list(back.accuracy.items()) == list(result.accuracy.items())
    assert back.random == result.random and back.model_accuracy == result.model_accuracy
    fig = result.figure()
    ax = fig.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == list(result.accuracy)
    assert ax.get_ylabel().startswith("held-out probe accuracy")
    assert len(ax.lines) >= 5  # trained, random, model, pixels and chance levels


# --- the fit against its oracles -------------------------------------------------------------------------------

def test_logistic_fit_equals_sklearn_with_the_same_c():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.8 * torch.randn(300, 3, generator=g, dtype=torch.float64)).argmax(1)
    l2 = 0.01
    W, b, fit = logistic_regression(x, y, 3, l2=l2)
    ref = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000).fit(x.numpy(), y.numpy())
    ours = torch.softmax(x @ W + b, 1)
    theirs = torch.as_tensor(ref.predict_proba(x.numpy()))
    assert (ours - theirs).abs().max() < 1e-3
    assert fit["iterations"] > 0


def test_separable_features_reach_full_accuracy():
    g = torch.Generator().manual_seed(1)
    centres = 6 * torch.eye(4)
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 4, generator=g)
    W, b, _ = logistic_regression(x, y, 4, l2=1e-4)
    assert torch.equal((x @ W + b).argmax(1), y)


# --- contract: a tiny model, (images, labels) pairs, layers, pools, errors ---------------------------------------

class Tiny(nn.Module):
    """Stage 1 sees the colour of the image; the label is its red channel's brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(torch.relu(self.conv2(self.pool(torch.relu(self.conv(x))))))
        return self.fc(x.mean((2, 3)))


def _pair(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    x[:, 0] += 0.5 * y[:, None, None]
    return x, y


def test_pairs_named_layers_pools_and_no_model_accuracy_without_shared_classes():
    model = Tiny().eval()
    for pool in ("avg", "max", "flatten"):
        r = probe(model, _pair(64, 0), _pair(32, 1), layers=["pool2", "pool"], pool=pool, baselines=("pixels",),
                  batch_size=16)
        assert list(r.accuracy) == ["pixels", "pool2", "pool"] and r.random == {}
        assert r.model_accuracy is None and r.pool == pool
        assert r.pixels == r.accuracy["pixels"] == 1.0  # the red channel, averaged to 8x8, tells the classes apart
    r = probe(model, _pair(64, 0), _pair(32, 1), layers="pool", baselines=(), batch_size=16)
    assert list(r.accuracy) == ["pool"] and r.pixels is None
    assert PIXEL_GRID == 8


def test_same_seed_same_random_copy():
    model = Tiny().eval()
    a = probe(model, _pair(48, 0), _pair(32, 1), layers="pool", batch_size=16, seed=3)
    b = probe(model, _pair(48, 0), _pair(32, 1), layers="pool", batch_size=16, seed=3)
    assert a.random == b.random


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": "pol"}, "did you mean 'pool'"),
    ({"pool": "mean"}, "pool: unknown value"),
    ({"baselines": ("noise",)}, "baselines: unknown value"),
    ({"l2": -1.0}, "l2: expected a finite number"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        probe(Tiny().eval(), _pair(16, 0), _pair(8, 1), batch_size=8, **kwargs)


def test_unknown_layer_is_a_layer_error():
    with pytest.raises(LayerError, match="no layer named 'conv3'"):
        probe(Tiny().eval(), _pair(16, 0), _pair(8, 1), layers=["conv3"], batch_size=8)


def test_too_few_images_per_class_names_the_fix():
    x, y = _pair(16, 0)
    y = y.clone()
    y[y == 1] = 0
    y[0] = 1  # one image of class 1
    with pytest.raises(InputError, match=r"train: class '1' has 1 training image.*bigger training set"):
        probe(Tiny().eval(), (x, y), _pair(8, 1), batch_size=8)


def test_labels_out_of_range():
    data = underhood.datasets.shapes(16, size=16, seed=0)
    data.labels = data.labels.clone()
    data.labels[3] = 8
    model = Tiny().eval()
    with pytest.raises(InputError, match=r"train: labels must lie in \[0, 7\]"):
        probe(model, data, underhood.datasets.shapes(16, size=16, seed=1), layers="pool", batch_size=8)
    with pytest.raises(InputError, match="test: expected one integer label per image"):
        probe(model, _pair(16, 0), (_pair(8, 1)[0], torch.zeros(7, dtype=torch.long)), batch_size=8)

"""Attribution metrics: localisation, deletion/insertion, sanity checks, and their similarities."""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from skimage.metrics import structural_similarity
from torch import nn

from underhood.attribution import metrics
from underhood.attribution.metrics import (
    RandomizationResult,
    data_randomization,
    deletion_auc,
    deletion_curve,
    energy_in_mask,
    heatmap,
    insertion_auc,
    insertion_curve,
    mask_shares,
    model_randomization,
    pointing_game,
    spearman,
    ssim,
)
from underhood.core.errors import InputError, LayerError
from underhood.core.hooks import frozen
from underhood.models.architectures import ShapesVGG


def saliency(model: nn.Module, inputs: torch.Tensor, target=None) -> torch.Tensor:
    """d logit / d input, for the target classes (the predicted ones when None), in eval mode."""
    x = inputs.detach().clone().requires_grad_(True)
    with frozen(model):
        out = model(x)
    idx = out.argmax(1) if target is None else torch.as_tensor(target).expand(len(x))
    (grad,) = torch.autograd.grad(out.gather(1, idx[:, None]).sum(), x)
    return grad


class PixelSum(nn.Module):
    """Two classes with logits ``[0, sum(w * x)]``: p(class 1) = sigmoid of the weighted kept pixels."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def brute_curves(model, x, heat, base, steps, insert, cls):
    """Slow reference: one image at a time, pixel order by sorting (-value, index), k = round half up."""
    n, _, h, w = x.shape
    hw, curves = h * w, []
    for s in range(n):
        values = heat[s].flatten().tolist()
        order = sorted(range(hw), key=lambda p: (-values[p], p))
        row = []
        for i in range(steps + 1):
            k = int(Fraction(i * hw, steps) + Fraction(1, 2))
            top = torch.zeros(hw, dtype=torch.bool)
            top[order[:k]] = True
            top = top.view(1, h, w)
            img = torch.where(top, x[s], base[s]) if insert else torch.where(top, base[s], x[s])
            with torch.no_grad():
                row.append(model(img[None]).softmax(1)[0, cls[s]].item())
        curves.append(row)
    return torch.tensor(curves)


def trapezoid(curve, steps):
    return sum((curve[i] + curve[i + 1]) / 2 for i in range(steps)) / steps


@pytest.fixture
def pixel_case():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=g)
    x = torch.rand(3, 3, 4, 4, generator=g)
    return PixelSum(w), x, w


# ---------------------------------------------------------------------------- heatmap, pointing, energy

def test_heatmap_conventions():
    one = torch.tensor([[[[-3.0, 1.0], [0.5, 0.0]]]])
    assert torch.equal(heatmap(one), torch.tensor([[[0.0, 1.0], [0.5, 0.0]]]))
    pix = torch.tensor([[[[-3.0, 1.0]], [[2.0, -1.0]]]])  # [1, 2, 1, 2]
    assert torch.equal(heatmap(pix), torch.tensor([[[5.0, 2.0]]]))
    with pytest.raises(InputError, match=r"maps: .*maps\[:, None\]"):
        heatmap(torch.zeros(2, 4, 4))


def _mask(points, size=8):
    m = torch.zeros(1, 1, size, size, dtype=torch.bool)
    for y, x in points:
        m[0, 0, y, x] = True
    return m


def test_pointing_game_hit_miss_and_disk_tolerance():
    maps = torch.zeros(1, 1, 8, 8)
    maps[0, 0, 0, 0] = 1.0
    assert pointing_game(maps, _mask([(0, 0)])).tolist() == [True]
    far = _mask([(3, 4)])  # Euclidean distance 5 from the maximum
    assert pointing_game(maps, far).tolist() == [False]
    assert pointing_game(maps, far, tolerance=4).tolist() == [False]
    assert pointing_game(maps, far, tolerance=5).tolist() == [True]
    diag = _mask([(3, 3)])  # distance sqrt(18) ~ 4.24: inside a 4-px square, outside a 4-px disk
    assert pointing_game(maps, diag, tolerance=4).tolist() == [False]
    with pytest.raises(InputError, match="tolerance"):
        pointing_game(maps, far, tolerance=-1)


def test_pointing_game_ties_zero_maps_negative_and_channels():
    tie = torch.zeros(1, 1, 8, 8)
    tie[0, 0, 0, 0] = tie[0, 0, 7, 7] = 2.0
    assert pointing_game(tie, _mask([(7, 7)])).tolist() == [True]
    assert pointing_game(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8, dtype=torch.bool)).tolist() == [False]
    neg = torch.zeros(1, 1, 8, 8)
    neg[0, 0, 1, 1], neg[0, 0, 5, 5] = -9.0, 1.0  # negative evidence is not importance for a [N, 1] map
    assert pointing_game(neg, _mask([(5, 5)])).tolist() == [True]
    pix = torch.zeros(1, 3, 8, 8)
    pix[0, 0, 1, 1], pix[0, 1, 5, 5] = -9.0, 1.0  # pixel attributions: sum of |value| over channels
    assert pointing_game(pix, _mask([(1, 1)])).tolist() == [True]
    batch = torch.cat([neg, torch.zeros(1, 1, 8, 8)])
    assert pointing_game(batch, torch.cat([_mask([(5, 5)]), _mask([(5, 5)])])).tolist() == [True, False]


def test_energy_in_mask_values():
    maps = torch.tensor([[[[1.0, 3.0], [-2.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    masks = torch.tensor([[[[True, False], [True, True]]], [[[True, True], [True, True]]]])
    assert torch.allclose(energy_in_mask(maps, masks), torch.tensor([0.25, 0.0]))
    pix = torch.tensor([[[[1.0, -1.0]], [[-1.0, 2.0]]]])  # heat [2, 3]
    assert torch.allclose(energy_in_mask(pix, torch.tensor([[[[False, True]]]])), torch.tensor([0.6]))


def test_mask_shares_and_mask_errors():
    maps = torch.tensor([[[[1.0, 2.0, 1.0]]]])
    obj, marker = mask_shares(maps, torch.tensor([[[[1, 1, 0]]]]), torch.tensor([[[[0, 0, 1]]]]))
    assert torch.allclose(obj, torch.tensor([0.75])) and torch.allclose(marker, torch.tensor([0.25]))
    with pytest.raises(InputError, match="marker_masks.*spurious"):
        mask_shares(maps, torch.ones(1, 1, 1, 3), None)
    with pytest.raises(InputError, match=r"masks: expected shape \[1, 1, 1, 3\].*got \(1, 1, 2, 3\)"):
        energy_in_mask(maps, torch.ones(1, 1, 2, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="masks"):
        pointing_game(maps, torch.ones(2, 1, 1, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------- similarities (oracles)

def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 6, (5, 3, 7, 7), generator=g).float()
    b = torch.randint(0, 6, (5, 3, 7, 7), generator=g).float() + 0.5 * a
    ref = [scipy.stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(5)]
    assert torch.allclose(spearman(a, b), torch.tensor(ref, dtype=torch.float32), atol=1e-6)
    assert torch.allclose(spearman(a, a), torch.ones(5))
    assert torch.allclose(spearman(a, -a), -torch.ones(5))
    assert torch.isnan(spearman(torch.ones(1, 4), torch.rand(1, 4))).all()


@pytest.mark.parametrize("shape", [(3, 32, 40), (2, 1, 24, 24)])
def test_ssim_matches_skimage(shape):
    g = torch.Generator().manual_seed(2)
    a = torch.rand(*shape, generator=g)
    b = (0.7 * a + 0.3 * torch.rand(*shape, generator=g)).clamp(0, 1)
    ref = [structural_similarity(a[i].squeeze().double().numpy(), b[i].squeeze().double().numpy(),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)
           for i in range(shape[0])]
    assert torch.allclose(ssim(a, b), torch.tensor(ref, dtype=torch.float32), atol=1e-4)
    assert torch.allclose(ssim(a, a), torch.ones(shape[0]), atol=1e-6)
    with pytest.raises(InputError, match="b: expected two equal"):
        ssim(a, b[:1])


def test_blur_baseline_matches_scipy_mirror():
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    ref = scipy.ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, 2.0, 2.0), mode="mirror", truncate=3.0)
    assert np.abs(metrics._blur(x, 2.0).numpy() - ref).max() < 1e-5


# ---------------------------------------------------------------------------- deletion / insertion

@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("baseline", ["zeros", "blur", 0.5, "tensor"])
def test_curves_match_brute_force(pixel_case, insert, baseline):
    model, x, w = pixel_case
    maps = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    if baseline == "tensor":
        baseline = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    fn = insertion_curve if insert else deletion_curve
    res = fn(model, x, maps, 1, steps=5, baseline=baseline, blur_sigma=1.0, batch_size=4)
    auc, curves = res.auc, res.curves
    base = metrics._baseline(x, baseline, 1.0)
    ref = brute_curves(model, x, heatmap(maps), base, 5, insert, [1, 1, 1])
    assert curves.shape == (3, 6) and auc.shape == (3,)
    assert torch.allclose(curves, ref, atol=1e-6)
    assert torch.allclose(auc, torch.tensor([trapezoid(r, 5) for r in ref.tolist()]), atol=1e-6)
    clean = model(x).softmax(1)[:, 1]
    far = model(base).softmax(1)[:, 1]
    assert torch.allclose(curves[:, -1 if insert else 0], clean, atol=1e-6)
    assert torch.allclose(curves[:, 0 if insert else -1], far, atol=1e-6)


def test_zero_map_removes_pixels_in_raster_order(pixel_case):
    model, x, w = pixel_case
    curves = deletion_curve(model, x[:1], torch.zeros(1, 1, 4, 4), 1, steps=16, batch_size=5).curves
    for k in range(17):
        kept = x[:1].clone().flatten(2)
        kept[..., :k] = 0
        assert abs(curves[0, k].item() - model(kept.view_as(x[:1])).softmax(1)[0, 1].item()) < 1e-6


def test_perfect_map_beats_reversed_map(pixel_case):
    model, x, w = pixel_case
    contrib = (x * w).sum(1, keepdim=True)  # each pixel's exact share of the class-1 logit
    perfect, reversed_ = contrib - contrib.min(), contrib.max() - contrib
    assert (deletion_auc(model, x, perfect, 1, steps=8, batch_size=64)
            < deletion_auc(model, x, reversed_, 1, steps=8, batch_size=64)).all()
    assert (insertion_auc(model, x, perfect, 1, steps=8, baseline="zeros", batch_size=64)
            > insertion_auc(model, x, reversed_, 1, steps=8, baseline="zeros", batch_size=64)).all()


def test_batch_size_and_default_target(pixel_case):
    model, x, w = pixel_case
    maps = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    one, big, auto = ((r.auc, r.curves) for r in (deletion_curve(model, x, maps, steps=7, batch_size=b)
                                                  for b in (1, 1000, None)))
    for a, b in zip(one, big):
        assert torch.allclose(a, b, atol=1e-7)
    assert torch.allclose(auto[1], big[1], atol=1e-7)
    predicted = model(x).argmax(1)  # target None: the class predicted on the clean image, for every step
    assert torch.allclose(big[1][:, 0], model(x).softmax(1)[torch.arange(3), predicted], atol=1e-6)


def test_callable_target_is_scored_raw(pixel_case):
    model, x, w = pixel_case
    maps = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    curves = deletion_curve(model, x, maps, lambda out: out[:, 1], steps=4, batch_size=8).curves
    assert torch.allclose(curves[:, 0], model(x)[:, 1], atol=1e-6)
    assert torch.allclose(curves[:, -1], torch.zeros(3), atol=1e-6)


def test_deletion_errors(pixel_case):
    model, x, w = pixel_case
    maps = torch.rand(3, 1, 4, 4)
    with pytest.raises(InputError, match="steps: expected a positive int"):
        deletion_auc(model, x, maps, steps=0)
    with pytest.raises(InputError, match="baseline: expected 'zeros', 'blur'"):
        deletion_auc(model, x, maps, baseline="mean", batch_size=4)
    with pytest.raises(InputError, match="baseline: a tensor baseline must broadcast"):
        deletion_auc(model, x, maps, baseline=torch.zeros(2, 3, 4, 4), batch_size=4)
    with pytest.raises(InputError, match="blur_sigma"):
        insertion_auc(model, x, maps, blur_sigma=0.0, batch_size=4)
    with pytest.raises(InputError, match=r"maps: expected \[3, C, 4, 4\]"):
        deletion_auc(model, x, torch.rand(3, 1, 5, 4), batch_size=4)


def test_deletion_restores_model_state():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    model.train()
    x = torch.rand(2, 3, 8, 8)
    state = copy.deepcopy(model.state_dict())
    auc = deletion_auc(model, x, torch.rand(2, 3, 8, 8), steps=4, batch_size=3)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN running stats too
    assert auc.shape == (2,) and ((auc >= 0) & (auc <= 1)).all()


# ---------------------------------------------------------------------------- sanity checks

@pytest.fixture(scope="module")
def cascade():
    """One full cascade on the trained shapes model (2 images), shared by the checks below."""
    import underhood

    model = underhood.load_model("shapes", device="cpu")
    x = underhood.datasets.shapes(2, seed=123).images
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = model_randomization(model, x, saliency, seed=0)
    return model, x, state, rng, result


def test_model_randomization_cascade(cascade):
    model, x, state, rng, res = cascade
    owners = [n for n, m in model.net.named_modules() if n and list(m.parameters(recurse=False))]
    assert res.stages == ["original", *reversed(owners)]  # top layer first, no wrapper prefix
    assert res.stages[1] == "classifier" and res.stages[-1] == "features.0"
    assert len(res.maps) == len(res.stages) and res.maps[0].shape == x.shape
    assert res.spearman.shape == res.ssim.shape == (len(owners) + 1, 2)
    assert torch.allclose(res.spearman[0], torch.ones(2)) and torch.allclose(res.ssim[0], torch.ones(2))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the user's model is untouched
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(res.maps[0], saliency(model, x).cpu())
    # randomising the whole network destroys the map: correlations fall well below the original's 1
    assert res.spearman[-3:].mean() < 0.5 and res.ssim[-3:].mean() < 0.5
    assert res.spearman[-1].mean() < res.spearman[1].mean()


def test_result_summary_and_table(cascade):
    res = cascade[-1]
    means = res.means()
    assert list(means) == res.stages and means["original"] == {"spearman": 1.0, "ssim": pytest.approx(1.0)}
    table = res.table()
    assert table.splitlines()[0].split() == ["stage", "spearman", "ssim"] and "classifier" in table
    summary = res.summary()
    assert isinstance(summary, str) and summary == table
    with pytest.warns(DeprecationWarning, match="means"):
        assert summary["original"] == means["original"]   # the old dict form still answers
    assert res.method == "saliency" and res.scalars()["last_stage"] == res.stages[-1]


def test_model_randomization_deterministic_layers_and_signed(shapes_model):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    kw = dict(layers=["features.14", "classifier"])
    a = model_randomization(shapes_model, x, saliency, seed=3, **kw)
    b = model_randomization(shapes_model, x, saliency, seed=3, **kw)
    c = model_randomization(shapes_model, x, saliency, seed=4, **kw)
    assert a.stages == ["original", "classifier", "features.14"]  # reverse forward order, whatever was given
    assert all(torch.equal(p, q) for p, q in zip(a.maps, b.maps))
    assert not torch.equal(a.maps[-1], c.maps[-1])
    s = model_randomization(shapes_model, x, saliency, layers="classifier", similarity_on="signed")
    assert s.stages == ["original", "classifier"] and torch.allclose(s.spearman[0], torch.ones(1))
    block = model_randomization(shapes_model, x, saliency, layers=["features"])
    assert block.stages == ["original", "features"]
    inside = [n for n, m in shapes_model.net.features.named_modules(prefix="features")
              if list(m.parameters(recurse=False))]
    each = model_randomization(shapes_model, x, saliency, layers=inside)
    assert torch.equal(block.maps[-1], each.maps[-1])  # a layer's random weights depend on (seed, its name) only


def test_model_randomization_errors(shapes_model):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(LayerError, match="features.144"):
        model_randomization(shapes_model, x, saliency, layers=["features.144"])
    with pytest.raises(InputError, match="no parameters to randomise"):
        model_randomization(shapes_model, x, saliency, layers=["features.2"])
    with pytest.raises(InputError, match="similarity_on"):
        model_randomization(shapes_model, x, saliency, similarity_on="square")
    with pytest.raises(InputError, match="method: expected an attribution function"):
        model_randomization(shapes_model, x, 3)
    with pytest.raises(InputError, match="method: expected maps"):
        model_randomization(shapes_model, x, lambda m, i, t: torch.zeros(1, 10))


def test_model_randomization_lifecycle_when_method_raises():
    torch.manual_seed(0)
    model = ShapesVGG(width=4)
    model.train()  # a model handed over in train mode stays in train mode
    state = copy.deepcopy(model.state_dict())
    calls = []

    def flaky(m, inputs, target=None):
        calls.append(target)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return saliency(m, inputs, target)

    with pytest.raises(RuntimeError, match="boom"):
        model_randomization(model, torch.rand(2, 3, 16, 16), flaky)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_method_by_name_is_resolved_lazily(monkeypatch, shapes_model):
    import underhood.attribution.registry as registry

    monkeypatch.setattr(registry, "get", lambda name: {"saliency": saliency}[name])
    res = model_randomization(shapes_model, torch.rand(1, 3, 16, 16), "saliency", layers=["classifier"])
    assert res.stages == ["original", "classifier"]


def test_data_randomization_fixes_target_on_original(shapes_model):
    torch.manual_seed(0)
    other = ShapesVGG().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    seen = []

    def recording(m, inputs, target=None):
        seen.append(torch.as_tensor(target).clone())
        return saliency(m, inputs, target)

    res = data_randomization(shapes_model, other, x, recording)
    assert isinstance(res, RandomizationResult) and res.stages == ["original", "random labels"]
    assert all(torch.equal(t, shapes_model(x).argmax(1)) for t in seen) and len(seen) == 2
    assert torch.allclose(res.spearman[0], torch.ones(2)) and res.spearman.shape == (2, 2)
    assert (res.spearman[1] < 0.9).all()

"""The attribution family's floor plan: one registry, result objects, and flags that keep their return type."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import pytest
import torch

from underhood import attribution as A
from underhood.attribution import metrics as M
from underhood.attribution import registry
from underhood.attribution.evaluate import FAST, Evaluation, applicable_methods, cam_layer, method_options
from underhood.attribution.metrics import CurveResult, RandomizationResult
from underhood.attribution.perturbation import LimeFit
from underhood.core.errors import InputError
from underhood.core.results import load

from .attribution_models import GapNet, Linear
from .conftest import check_protocol

GRID = torch.arange(4).view(2, 2).repeat_interleave(3, 0).repeat_interleave(3, 1)  # [6, 6]: four 3x3 squares
FAMILY = Path(A.__file__).parent


def _case():
    model = Linear().eval()
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    return model, x


# ----------------------------------------------------------------------------- the registry


def test_methods_and_pixel_methods_come_from_the_registry():
    assert list(A.METHODS) == list(registry.REGISTRY) and A.METHODS is registry.METHODS
    assert A.PIXEL_METHODS == tuple(registry.names(kind="pixel"))
    assert A.PIXEL_METHODS == ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deconvnet",
                               "guided_backprop", "guided_gradcam")
    assert all(A.get(name) is m.fn for name, m in registry.REGISTRY.items())
    assert A.get(A.saliency) is A.saliency
    with pytest.raises(InputError, match="did you mean gradcam"):
        registry.info("gradcan")
    with pytest.raises(InputError, match="flags: unknown"):
        registry.names(colour=True)


def test_flags_agree_with_each_signature():
    for name, m in registry.REGISTRY.items():
        options = m.options
        assert m.layer == ("layer" in options), name
        assert m.perturbation == ("batch_size" in options and "progress" in options), name
        assert m.seeded == ("seed" in options), name
        assert set(m.fast) <= set(options) and set(m.full) <= set(options), name
    assert registry.names(layer=True) == ["cam", "gradcam", "gradcam_pp", "scorecam", "guided_gradcam"]
    assert registry.names(rule=True) == ["deconvnet", "guided_backprop", "guided_gradcam"]
    assert registry.names(head=True) == ["cam"] and registry.names(units=False) == ["cam"]
    assert FAST["lime"] == {"n_samples": 300, "baseline": 0.5}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_applicable_methods_follow_the_flags():
    model = GapNet().eval()
    assert "cam" not in applicable_methods(model)            # no input_size: no CAM layer is looked for
    model.input_size = (3, 8, 8)
    assert applicable_methods(model) == list(registry.REGISTRY)
    scripted = torch.jit.script(GapNet()).eval()
    assert not set(applicable_methods(scripted)) & set(registry.names(rule=True))
    opts = method_options(model, ["gradcam", "guided_gradcam", "saliency"])
    assert opts["gradcam"]["layer"] == opts["guided_gradcam"]["layer"] == cam_layer(model) is not None
    assert opts["saliency"] == {}



def test_completeness_equals_the_old_return_error():
    model, x = _case()
    base = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    ig = A.integrated_gradients(model, x, 2, baseline=base, steps=4)
    with pytest.warns(DeprecationWarning, match="completeness") as record:
        old_ig, old_gap = A.integrated_gradients(model, x, 2, baseline=base, steps=4, return_error=True)
    assert record[0].filename == __file__   # the warning points at the caller
    assert torch.equal(ig, old_ig)
    assert torch.allclose(M.completeness(model, x, ig, 2, baseline=base), old_gap, atol=1e-6)
    expected = ig.flatten(1).sum(1) - (model(x)[:, 2] - model(base.expand_as(x))[:, 2]).detach()
    assert torch.allclose(M.completeness(model, x, ig, 2, baseline=base), expected, atol=1e-5)
    with pytest.raises(InputError, match="maps: expected one map per input"):
        M.completeness(model, x, ig[:1])


def test_lime_fit_equals_the_old_return_weights():
    model, x = _case()
    opts = dict(n_samples=12, segments=GRID, batch_size=12, seed=3)
    fit = A.lime_fit(model, x, **opts)
    assert isinstance(fit, LimeFit) and torch.equal(A.lime(model, x, **opts), fit.maps)
    with pytest.warns(DeprecationWarning, match="lime_fit") as record:
        maps, old = A.lime(model, x, **opts, return_weights=True)
    assert record[0].filename == __file__
    assert torch.equal(maps, fit.maps) and torch.equal(old.r2, fit.r2) and torch.equal(old.intercept, fit.intercept)


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
def test_curves_equal_the_old_return_curves(kind):
    model, x = _case()
    maps = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    curve, auc = getattr(M, f"{kind}_curve"), getattr(M, f"{kind}_auc")
    res = curve(model, x, maps, steps=4, baseline=0.5, batch_size=10)
    assert isinstance(res, CurveResult) and res.kind == kind and res.curves.shape == (2, 5)
    assert torch.equal(res.fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.equal(auc(model, x, maps, steps=4, baseline=0.5, batch_size=10), res.auc)
    with pytest.warns(DeprecationWarning, match=f"{kind}_curve") as record:
        old_auc, old_curves = auc(model, x, maps, steps=4, baseline=0.5, batch_size=10, return_curves=True)
    assert record[0].filename == __file__
    assert torch.equal(old_auc, res.auc) and torch.equal(old_curves, res.curves)


def test_the_plain_functions_return_tensors_without_warning():
    model, x = _case()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for out in (A.integrated_gradients(model, x, steps=2), A.lime(model, x, n_samples=4, segments=GRID),
                    M.deletion_auc(model, x, x, steps=2), M.insertion_auc(model, x, x, steps=2)):
            assert isinstance(out, torch.Tensor)
    for fn in (A.integrated_gradients, A.lime, M.deletion_auc, M.insertion_auc):
        assert inspect.signature(fn).return_annotation in ("torch.Tensor", torch.Tensor), fn.__name__


# ----------------------------------------------------------------------------- result objects


@pytest.fixture(scope="module")
def results():
    model, x = _case()
    other = Linear(seed=1).eval()
    maps = A.saliency(model, x)
    ev = Evaluation({"saliency": {"pointing": 0.5, "deletion": 0.25}, "gradcam": {"pointing": 1.0}},
                    {"n": 2, "steps": 4, "options": {"gradcam": {"layer": "features.3"}}}, {"saliency": 0.5},
                    {"saliency": {"deletion": [1.0, 0.5, 0.0]}})
    return {
        "randomization": M.data_randomization(model, other, x, "saliency"),
        "lime": A.lime_fit(model, x, n_samples=8, segments=GRID, batch_size=8),
        "curve": M.deletion_curve(model, x, maps, steps=4, batch_size=10),
        "evaluation": ev,
    }


@pytest.mark.parametrize("name", ["randomization", "lime", "curve", "evaluation"])
def test_every_result_has_the_protocol(results, name):
    r = results[name]
    check_protocol(r)
    assert r.figure().get_axes()


def test_summaries_are_the_tables(results):
    ev, res = results["evaluation"], results["randomization"]
    assert ev.summary() == ev.table() and ev.summary().splitlines()[0].split()[:2] == ["method", "pointing"]
    assert res.summary() == res.table() and res.method == "saliency"
    assert isinstance(res, RandomizationResult) and res.stages == ["original", "random labels"]
    assert ev.to_dict()["values"] == ev.values and list(ev.to_dict()["columns"]) == ev.columns


def test_results_save_and_load(results, tmp_path):
    curve = results["curve"]
    back = load(curve.save(tmp_path / "curve"))
    assert isinstance(back, CurveResult) and back.kind == "deletion"
    assert torch.equal(back.auc, curve.auc) and torch.equal(back.curves, curve.curves)
    fit = load(results["lime"].save(tmp_path / "lime"))
    assert isinstance(fit, LimeFit) and len(fit.coefficients) == 2 and torch.equal(fit.maps, results["lime"].maps)


def test_evaluation_saves_and_loads(results, tmp_path):
    ev = results["evaluation"]
    again = load(ev.save(tmp_path / "ev"))
    assert isinstance(again, Evaluation) and again.values == ev.values and again.settings == ev.settings
    assert again.curves == ev.curves and again.table() == ev.table()

"""explain(): the same maps as the methods one by one, with fewer passes, and clear option errors."""

from __future__ import annotations

import pytest
import torch

from underhood import attribution as A
from underhood.core.errors import InputError
from underhood.core.hooks import hooked


def test_explain_equals_each_method_and_shares_passes(shapes_model, shapes_small):
    x = shapes_small.images[:2]
    names = ["saliency", "input_x_gradient", "guided_backprop", "gradcam", "gradcam_pp", "guided_gradcam",
             "smoothgrad"]
    calls = []
    with hooked(shapes_model, pre={shapes_model: lambda m, i: calls.append(len(i[0]))}):
        maps = A.explain(shapes_model, x, names, layer="features.10", smoothgrad={"n_samples": 4, "batch_size": 8})
        shared = len(calls)
        calls.clear()
        alone = {name: A.get(name)(shapes_model, x, **({"layer": "features.10"} if "cam" in name else {}),
                                   **({"n_samples": 4, "batch_size": 8} if name == "smoothgrad" else {}))
                 for name in names}
    assert list(maps) == names
    for name in names:
        assert torch.allclose(maps[name], alone[name], atol=1e-5), name
    # shared: the target (1), one gradient for saliency and input x gradient (1), guided backprop (1),
    # one Grad-CAM pass for gradcam, gradcam_pp and guided_gradcam (1), smoothgrad (target 1 + one batch 1)
    assert (shared, len(calls)) == (6, 10)


def test_explain_errors_name_the_problem(shapes_model):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(InputError, match="did you mean gradcam"):
        A.explain(shapes_model, x, ["gradcan"])
    with pytest.raises(InputError, match="unknown option"):
        A.explain(shapes_model, x, ["smoothgrad"], smoothgrad={"n_sample": 3})
    with pytest.raises(InputError, match="not one of the methods"):
        A.explain(shapes_model, x, ["saliency"], gradcam={"layer": "features.3"})


def test_every_method_is_registered_with_the_documented_shape(shapes_model):
    x = torch.rand(2, 3, 64, 64)
    fast = {"smoothgrad": {"n_samples": 2}, "integrated_gradients": {"steps": 2}, "occlusion": {"window": 32,
            "stride": 32}, "lime": {"n_samples": 8, "n_segments": 4}, "scorecam": {"layer": "features.14"}}
    for name in A.METHODS:
        out = A.get(name)(shapes_model, x, **fast.get(name, {}))
        assert out.shape == ((2, 3, 64, 64) if name in A.PIXEL_METHODS else (2, 1, 64, 64)), name
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name


FAST = {"smoothgrad": {"n_samples": 3}, "integrated_gradients": {"steps": 3}, "occlusion": {"window": 16,
        "stride": 16}, "lime": {"n_samples": 16, "n_segments": 6}}


def test_every_method_takes_unit_and_callable_targets(shapes_model):
    from underhood import Unit, datasets

    x = datasets.shapes(2, seed=9).images   # structured images: SLIC finds superpixels
    for name in A.METHODS:
        if name == "cam":
            continue   # CAM explains class logits only (tested in test_attribution_cam)
        opts = {**FAST.get(name, {}), **({"layer": "features.7"} if "cam" in name else {})}
        fn = A.get(name)
        unit = fn(shapes_model, x, Unit("features.14", 3), **opts)
        assert torch.isfinite(unit).all() and unit.abs().sum() > 0, name
        by_callable = fn(shapes_model, x, lambda logits: logits[:, 2], **opts)
        if name not in ("lime", "scorecam"):   # these score class targets by probability, callables raw
            assert torch.allclose(by_callable, fn(shapes_model, x, 2, **opts), atol=1e-5), name

"""activations.dissect: network dissection (Bau et al. 2017) equals its definition.

Oracles: a hand-made unit that copies a concept's mask scores IoU 1 with it; the thresholds are
``numpy.percentile`` of the layer's values; the IoU table equals a slow reference loop (numpy bilinear
upsampling written from its formula, one image, unit and concept at a time, sums over each concept's
category). Property: the built-in model trained with the spurious marker has its deepest units turned
into marker detectors, the plainly trained one does not. Lifecycle: the model is left as it was found.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from underhood.activations import DissectionResult, dissect
from underhood.activations.dissect import concept_mask, quantile_threshold
from underhood.core.errors import InputError, LayerError
from underhood.core.results import load
from underhood.data import ImageSet, shapes

from .conftest import model_problems


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(),                   # full resolution, 16x16
        down=nn.Conv2d(4, 5, 3, stride=3),                                     # 5x5: a non-integer scale up to 16
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(5, 8))).eval()


@pytest.fixture(scope="module")
def data() -> ImageSet:
    return shapes(12, size=16, seed=3, spurious=0.5)


# --- the reference -------------------------------------------------------------------------------------------

def _bilinear(a: np.ndarray, size: int) -> np.ndarray:
    """``a [h, w]`` upsampled to ``[size, size]`` from the definition (half-pixel centres, edges clamped)."""
    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    y0, y1, wy = axis(a.shape[0])
    x0, x1, wx = axis(a.shape[1])
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def _reference(model: nn.Module, data: ImageSet, layer: str, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds [C], IoU [C, K]) one image, unit and concept at a time."""
    acts = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.update(a=o.detach()))
    try:
        with torch.no_grad():
            model(data.images)
    finally:
        handle.remove()
    a = acts["a"].double().numpy()
    thresholds = np.percentile(a, 100 * (1 - quantile), axis=(0, 2, 3))
    n, size = len(data), data.images.shape[-1]
    concepts = list(data.classes) + ["marker"]
    iou = np.zeros((a.shape[1], len(concepts)))
    for k in range(a.shape[1]):
        for c, name in enumerate(concepts):
            inter = union = 0
            for i in range(n):
                mask = _bilinear(a[i, k], size) > thresholds[k]
                if name == "marker":
                    truth, counts = data.marker_masks[i, 0].numpy(), bool(data.marker_masks[i].any())
                else:
                    truth = data.masks[i, 0].numpy() & (int(data.labels[i]) == c)
                    counts = bool(data.masks[i].any())
                if counts:   # Bau et al.: sums over the images labelled in the concept's category
                    inter += (mask & truth).sum()
                    union += (mask | truth).sum()
            iou[k, c] = inter / union if union else 0.0
    return thresholds, iou


@pytest.mark.parametrize("layer", ["relu", "down"])
def test_iou_and_thresholds_equal_the_reference_loop(data, layer):
    model = _net()
    r = dissect(model, data, layers=[layer], quantile=0.05, batch_size=5)
    thresholds, iou = _reference(model, data, layer, 0.05)
    np.testing.assert_allclose(r.threshold[layer].numpy(), thresholds, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.iou[layer].numpy(), iou, atol=1e-6)
    assert r.concepts == list(data.classes) + ["marker"]
    assert r.iou[layer].shape == (len(thresholds), 9) and (r.iou[layer] > 0).any()


def test_streamed_thresholds_do_not_depend_on_the_batch_size(data):
    model = _net()
    one = dissect(model, data, layers=["relu", "down"], quantile=0.01, batch_size=1)
    all_ = dissect(model, data, layers=["relu", "down"], quantile=0.01, batch_size=12)
    for layer in ("relu", "down"):
        torch.testing.assert_close(one.threshold[layer], all_.threshold[layer])
        torch.testing.assert_close(one.iou[layer], all_.iou[layer])
        assert torch.equal(one.top[layer], all_.top[layer])


@pytest.mark.parametrize("quantile", [0.005, 0.01, 0.3, 0.999])
def test_quantile_threshold_is_numpys_percentile(quantile):
    g = torch.Generator().manual_seed(1)
    values = torch.cat([torch.rand(3, 997, generator=g), torch.zeros(3, 50), torch.ones(3, 3)], 1)  # with ties
    expected = np.percentile(values.double().numpy(), 100 * (1 - quantile), axis=1)
    np.testing.assert_allclose(quantile_threshold(values, quantile).numpy(), expected, rtol=1e-6)


def test_a_unit_that_copies_a_mask_scores_iou_one():
    base = shapes(16, size=16, seed=5, spurious=0.5)
    k = int(base.labels[0])                         # a class present in the data
    g = torch.Generator().manual_seed(0)
    # channel 0 copies concept k's mask, channel 1 the marker, channel 2 is noise
    images = torch.stack([concept_mask(base, base.classes[k]).float(), base.marker_masks[:, 0].float(),
                          torch.rand(16, 16, 16, generator=g)], 1)
    data = ImageSet(images, base.labels, base.classes, base.masks, base.marker_masks)
    model = nn.Sequential(OrderedDict(copy=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1)))
    # a 0/1 unit's threshold is 0 when the top quantile covers its ones: M_k = the mask, exactly
    r = dissect(model, data, layers="copy", quantile=0.5, batch_size=4)
    iou = r.iou["copy"]
    assert iou[0, k] == 1 and iou[1, r.concepts.index("marker")] == 1
    assert iou[0].argmax() == k and r.names("copy")[:2] == [base.classes[k], "marker"]
    assert float(r.threshold["copy"][0]) == 0.0
    others = [c for c in range(len(base.classes)) if c != k]
    assert (iou[0, others] == 0).all()              # concept k's mask never meets another class's object
    masks = r.masks(model, data.images[:3], "copy", [0])
    assert torch.equal(masks[:, 0], concept_mask(data, base.classes[k])[:3])


def test_the_model_is_left_as_found_also_when_it_raises(data):
    model = _net().train()
    before = copy.deepcopy(model.state_dict())
    dissect(model, data, layers=["relu"], batch_size=6)
    with pytest.raises(LayerError, match="no positions"):
        dissect(model, data, layers=["fc"], batch_size=6)
    assert model.training and not model_problems(model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_arguments_are_one_line_errors(data):
    model = _net()
    with pytest.raises(InputError, match="masks"):
        dissect(model, ImageSet(data.images, data.labels, data.classes), layers="relu")
    with pytest.raises(InputError, match="quantile"):
        dissect(model, data, layers="relu", quantile=0)
    with pytest.raises(InputError, match="quantile"):
        dissect(model, data, layers="relu", quantile=1.0)
    with pytest.raises(LayerError):
        dissect(model, data, layers="nope", batch_size=4)
    with pytest.raises(InputError, match="concept"):
        concept_mask(data, "hexagon")


def test_result_names_counts_save_and_figures(data, tmp_path):
    model = _net()
    r = dissect(model, data, layers=["relu", "down"], quantile=0.05, iou_threshold=0.02, batch_size=6)
    for layer in r.layers:
        index, value = r.best(layer)
        names = r.names(layer)
        assert names == [r.concepts[i] if v > 0.02 else "-" for i, v in zip(index.tolist(), value.tolist())]
        assert sum(r.detectors(layer).values()) == sum(n != "-" for n in names)
        ranked = r.units(layer)
        assert [v for _, _, v in ranked] == sorted((v for _, _, v in ranked), reverse=True)
    assert "detectors[down]" in r.summary() and "DissectionResult(" in repr(r)
    back = load(r.save(tmp_path / "d"))
    assert isinstance(back, DissectionResult) and back.concepts == r.concepts
    torch.testing.assert_close(back.iou["down"], r.iou["down"])
    assert r.figure() is not None
    fig = r.units_figure(model, data, "down", k=2, m=3)
    assert len(fig.axes) == 6


def test_the_shortcut_models_units_detect_the_marker():
    from underhood.data import SHAPES_TEST_SEED
    from underhood.models import load_model

    data = shapes(48, seed=SHAPES_TEST_SEED, spurious=1.0)
    found = {}
    for spec in ("shapes", "shapes-spurious"):
        r = dissect(load_model(spec), data, layers="features.16", batch_size=48)
        found[spec] = r.detectors("features.16")["marker"]
    assert found["shapes-spurious"] >= 32 > 3 * found["shapes"]

"""Mixed precision (``amp=``) and the per-call costs of the attribution methods.

Oracles: ``amp=True`` maps rank like the float32 ones (Spearman rank correlation, sample by
sample: >= 0.99 on average, the issue's bar, and >= 0.98 for every image, on the built-in model);
float16 backward passes are scaled so a gradient below float16's smallest value is not lost; no
method waits for the device once per batch (host reads counted while the number of batches
changes); batches are split evenly; the model's flags come back.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from underhood import attribution
from underhood.attribution.base import GRAD_SCALE, check_amp, scaled_grad
from underhood.core.errors import InputError
from underhood.core.hooks import hooked

# (method, options): small settings, since float16 is emulated (slow) on a CPU without it
AMP_CASES = [
    ("saliency", {}),
    ("input_x_gradient", {}),
    ("smoothgrad", {"n_samples": 4, "batch_size": 8}),
    ("integrated_gradients", {"steps": 4, "batch_size": 8}),
    ("occlusion", {"window": 16, "stride": 16, "batch_size": 16}),
]


def rank_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(mean, lowest)`` Spearman rank correlation of two batches of maps, sample by sample."""
    rho = [float(spearmanr(p.flatten().cpu(), q.flatten().cpu())[0]) for p, q in zip(a, b)]
    return sum(rho) / len(rho), min(rho)


@pytest.mark.parametrize(("name", "options"), AMP_CASES)
def test_amp_maps_rank_like_float32_on_the_shapes_model(shapes_model, shapes_small, name, options):
    x = shapes_small.images[:4]
    fn = attribution.get(name)
    full, mixed = fn(shapes_model, x, **options), fn(shapes_model, x, **options, amp=True)
    assert mixed.dtype == torch.float32 and mixed.shape == full.shape
    assert not torch.equal(mixed, full)  # the passes did run in float16
    # measured on 8 shapes images (CPU), mean / lowest: saliency 0.997 / 0.991, input x gradient
    # 0.997 / 0.990, smoothgrad 0.998 / 0.996, integrated gradients 0.996 / 0.991, occlusion 0.999 / 0.991;
    # bfloat16 (amp="bf16") only 0.97 / 0.95 on saliency, which is why float16 is the default
    mean, lowest = rank_agreement(full, mixed)
    assert mean >= 0.99 and lowest >= 0.98, (mean, lowest)


def test_amp_lime_scores_in_float16_and_fits_in_float32(shapes_model, shapes_small):
    x = shapes_small.images[:1]
    block = torch.arange(64) // 16
    opts = {"n_samples": 24, "segments": block[:, None] * 4 + block[None, :], "batch_size": 24, "baseline": 0.5}
    full, mixed = attribution.lime_fit(shapes_model, x, **opts), attribution.lime_fit(shapes_model, x, **opts, amp=True)
    assert mixed.maps.dtype == torch.float32
    assert rank_agreement(full.maps, mixed.maps)[1] >= 0.99


@pytest.mark.parametrize("amp", [1, "fp32", None, "yes"])
def test_amp_refuses_other_values(shapes_model, shapes_small, amp):
    with pytest.raises(InputError, match="^amp: expected False, True"):
        attribution.saliency(shapes_model, shapes_small.images[:1], amp=amp)
    with pytest.raises(InputError, match="^amp:"):
        check_amp(amp)


def test_float16_backward_is_scaled_so_small_gradients_survive():
    x = torch.ones(4, requires_grad=True)
    # the gradient reaching the float16 tensor is 2e-8, below half of float16's smallest value (5.96e-8)
    (plain,) = torch.autograd.grad((x.half().float() * 2e-8).sum(), x)
    assert torch.all(plain == 0)  # unscaled, it underflows to zero
    got = scaled_grad(x.half().float() * 2e-8, x, True)
    assert got.dtype == torch.float32 and torch.allclose(got, torch.full((4,), 2e-8), rtol=1e-2)
    assert GRAD_SCALE * 2e-8 > 2 ** -24


def test_amp_overflow_is_one_line_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with torch.no_grad():
        model[1].weight.fill_(1e3)  # logits ~1e5: beyond float16's 65504
    with pytest.raises(InputError, match="^amp: the model overflowed .* amp=False"):
        attribution.saliency(model, torch.ones(1, 3, 8, 8), 0, amp=True)
    assert torch.isfinite(attribution.saliency(model, torch.ones(1, 3, 8, 8), 0)).all()


class HostReads:
    """Counts the reads of tensor values by the host (each one waits for the device on a GPU)."""

    METHODS = ("__bool__", "item", "tolist", "__float__", "__int__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _original=original, **kwargs):
                self.count += 1
                return _original(t, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize(("name", "options", "knob"), [
    ("smoothgrad", {"batch_size": 2}, ("n_samples", 2, 12)),
    ("integrated_gradients", {"batch_size": 2}, ("steps", 2, 12)),
    ("occlusion", {"batch_size": 2, "window": 4}, ("stride", 4, 1)),
    ("lime", {"batch_size": 2, "segments": torch.arange(4).repeat_interleave(4).view(4, 4).repeat(2, 2)},
     ("n_samples", 4, 16)),
])
@pytest.mark.parametrize("target", [None, 1, [1, 2]])
def test_no_host_read_per_batch(monkeypatch, name, options, knob, target):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    fn, (key, few, many) = attribution.get(name), knob
    fn(model, x, target, **options, **{key: few})  # warm (lazy imports, caches)
    reads = HostReads(monkeypatch)
    counts = []
    for value in (few, many):  # 1-4 batches against 12-130: a read per batch would show
        before = reads.count
        fn(model, x, target, **options, **{key: value})
        counts.append(reads.count - before)
    assert counts[0] == counts[1], f"{name}: {counts} host reads with few and with many batches"


def test_batches_are_split_evenly():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 10, 2)).eval()
    seen = []
    with hooked(model, pre={model: lambda m, args: seen.append(args[0].shape[0])}):
        attribution.occlusion(model, torch.rand(1, 3, 10, 10), 0, window=2, stride=2, batch_size=16)
    assert seen == [1, 13, 12]  # the clean pass, then 25 windows as 13 + 12 (not 16 + 9)


def test_flags_come_back_after_amp_and_after_an_error(shapes_model, shapes_small):
    shapes_model.train()
    first = next(shapes_model.parameters())
    first.requires_grad_(False)
    attribution.smoothgrad(shapes_model, shapes_small.images[:1], n_samples=2, batch_size=2, amp=True)
    with pytest.raises(InputError):
        attribution.integrated_gradients(shapes_model, shapes_small.images[:1], steps=2, amp="maybe")
    assert all(m.training for m in shapes_model.modules())
    assert not first.requires_grad and all(p.requires_grad for p in list(shapes_model.parameters())[1:])
    first.requires_grad_(True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "options"), [
    ("saliency", {}), ("integrated_gradients", {"steps": 16}), ("smoothgrad", {"n_samples": 16}),
    ("occlusion", {"window": 32, "stride": 16}),
])
def test_amp_on_torchvision_resnet18_cuda(name, options):
    torchvision = pytest.importorskip("torchvision")
    import underhood

    torch.manual_seed(0)
    model = underhood.load_model(torchvision.models.resnet18(weights=None), device="cuda")
    x = torch.rand(2, 3, 224, 224, device="cuda")
    fn = attribution.get(name)
    mean, lowest = rank_agreement(fn(model, x, **options), fn(model, x, **options, amp=True))
    assert mean >= 0.99 and lowest >= 0.98, (mean, lowest)


def test_explain_passes_amp_to_its_shared_passes(shapes_model, shapes_small):
    x = shapes_small.images[:2]
    full = attribution.explain(shapes_model, x, ["saliency", "gradcam", "integrated_gradients"],
                               integrated_gradients={"steps": 4, "batch_size": 8})
    mixed = attribution.explain(shapes_model, x, ["saliency", "gradcam", "integrated_gradients"], amp=True,
                                integrated_gradients={"steps": 4, "batch_size": 8})
    for name in full:
        assert mixed[name].dtype == torch.float32 and not torch.equal(mixed[name], full[name]), name
        mean, lowest = rank_agreement(full[name], mixed[name])
        assert mean >= 0.99 and lowest >= 0.98, (name, mean, lowest)

"""The lectures' synthesis recipes: MAP583's maximal response, EE-559's binomial edge prior, Nguyen's facets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underhood.core.errors import InputError
from underhood.synthesis import Priors, centre_windows, edge_energy, multifaceted, render
from underhood.synthesis import objectives as O


def tiny(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)).eval()


# ----------------------------------------------------------------------------- MAP583: maximal response


def test_channel_l2_is_the_norm_of_the_captured_map() -> None:
    a = torch.randn(5, 4, 7, 9, generator=torch.Generator().manual_seed(0))
    acts = {"x": a}
    assert torch.allclose(O.channel("x", 2, reduce="l2")(acts), torch.linalg.norm(a[:, 2].reshape(5, -1), dim=1))
    assert torch.allclose(O.channel("x", 2, reduce="sum")(acts), a[:, 2].sum((1, 2)))
    assert torch.allclose(O.channel("x", 2)(acts), a[:, 2].mean((1, 2)))
    with pytest.raises(InputError, match="reduce"):
        O.channel("x", 2, reduce="max")


def test_uniform_init_is_seeded_noise_in_the_unit_cube() -> None:
    model = tiny()
    kw = dict(param="raw", init="uniform", optimizer="sgd", lr=0.0, steps=1, transforms="none", size=(3, 12, 12), n=2)
    a = render(model, O.channel("2", 1, reduce="l2"), seed=3, **kw).images
    b = render(model, O.channel("2", 1, reduce="l2"), seed=3, **kw).images
    c = render(model, O.channel("2", 1, reduce="l2"), seed=4, **kw).images
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == (2, 3, 12, 12)
    assert 0.4 < float(a.mean()) < 0.6 and float(a.std()) > 0.25  # U[0,1]: mean 1/2, sd 0.29


def test_one_sgd_step_is_x_plus_lr_times_the_gradient() -> None:
    model, lr = tiny(), 0.3
    start = render(model, O.channel("2", 1, reduce="l2"), param="raw", init="uniform", optimizer="sgd", lr=0.0,
                   steps=1, transforms="none", size=(3, 12, 12), seed=5).images
    x = start.clone().requires_grad_(True)
    h = model[:3](x)  # the map of layer "2" (the conv before the ReLU "3")
    (grad,) = torch.autograd.grad(torch.linalg.norm(h[:, 1].reshape(1, -1), dim=1).sum(), x)
    out = render(model, O.channel("2", 1, reduce="l2"), param="raw", init="uniform", optimizer="sgd", lr=lr,
                 steps=1, transforms="none", size=(3, 12, 12), seed=5)
    assert torch.allclose(out.images, start + lr * grad, atol=1e-6)
    assert out.final > out.start


def test_mask_keeps_the_outside_exactly() -> None:
    model = tiny()
    mask = torch.zeros(12, 12)
    mask[3:9, 3:9] = 1
    start = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    out = render(model, O.class_logit(0), param="raw", init=start, steps=5, transforms="none", size=(3, 12, 12),
                 mask=mask, priors=Priors(blur_sigma=0.5))
    assert torch.equal(out.images[..., mask == 0], start[..., mask == 0])
    assert not torch.equal(out.images[..., mask == 1], start[..., mask == 1])


def test_render_option_errors() -> None:
    model = tiny()
    with pytest.raises(InputError, match="optimizer"):
        render(model, O.class_logit(0), size=(3, 12, 12), optimizer="rmsprop", steps=1)
    with pytest.raises(InputError, match="init"):
        render(model, O.class_logit(0), size=(3, 12, 12), init="uniform", steps=1)  # fourier has no start image
    with pytest.raises(InputError, match="init"):
        render(model, O.class_logit(0), size=(3, 12, 12), param="pixels", init=torch.rand(1, 3, 8, 8), steps=1)


# ----------------------------------------------------------------------------- EE-559: the binomial edge prior


class MultiScaleEdgeEnergy(nn.Module):
    """EE-559's module, as the slide writes it (the slow reference)."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([[1.0, 4, 6, 4, 1]])
        k5 = k.t().mm(k).view(1, 1, 5, 5)
        self.register_buffer("k5", k5 / k5.sum())
        self.register_buffer("k2", torch.tensor([[0.25, 0.25], [0.25, 0.25]]).view(1, 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(1) > 1:
            return self(x.reshape(x.size(0) * x.size(1), 1, x.size(2), x.size(3))).view(x.size(0), -1).sum(1)
        result = 0.0
        while x.size(2) > 5 and x.size(3) > 5:
            blurry = F.conv2d(x, self.k5, padding=2)
            result = result + (x - blurry).view(x.size(0), -1).pow(2).sum(1)
            x = F.conv2d(x, self.k2, stride=2, padding=1)
        return result


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 1, 37, 50), (3, 2, 6, 9)])
def test_binomial_edge_energy_equals_the_lecture_module(shape) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = edge_energy(x, None, kernel="binomial")
    assert torch.allclose(ours, MultiScaleEdgeEnergy().double()(x), rtol=1e-10)
    assert torch.allclose(Priors(edges=2.0, edges_kernel="binomial").penalty(x), 2 * ours)


def test_binomial_scales_and_errors() -> None:
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    # 64, 33, 17, 9: four levels exceed the 5 taps, so scales=4 is all of them
    assert torch.allclose(edge_energy(x, 4, kernel="binomial"), edge_energy(x, None, kernel="binomial"))
    assert edge_energy(x, 2, kernel="binomial") < edge_energy(x, 4, kernel="binomial")
    with pytest.raises(InputError, match="too small"):
        edge_energy(x, 5, kernel="binomial")
    with pytest.raises(InputError, match="kernel"):
        edge_energy(x, kernel="box")
    p = Priors.parse("edges=0.1,edges_kernel=binomial")
    assert p.edges_kernel == "binomial" and Priors.parse(str(p)) == p
    with pytest.raises(InputError, match="edges_kernel"):
        Priors.parse("edges_kernel=box")


def test_gaussian_edge_energy_as_many_scales_as_fit() -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    # sigma 1: radius 3; 32, 16, 8, 4 exceed it, 2 does not
    assert torch.allclose(edge_energy(x, None), edge_energy(x, 4))


# ----------------------------------------------------------------------------- Nguyen et al.: multifaceted


def facet_data(n: int = 24):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 16, 16, generator=g) * 0.3
    images[: n // 2, 0] += 0.6       # two kinds of image: red ones and blue ones
    images[n // 2:, 2] += 0.6
    labels = torch.tensor([1, 0] * (n // 2))

    class Data:
        pass
    data = Data()
    data.images, data.labels = images, labels
    return data


def test_multifaceted_partition_starts_and_determinism() -> None:
    model, data = tiny(), facet_data()
    kw = dict(layer="1", n_facets=3, steps=6, lr=0.05, phases=3, seed=0)
    r = multifaceted(model, data, 1, **kw)
    members = data.images[data.labels == 1]
    assert torch.equal(r.indices, torch.nonzero(data.labels == 1).flatten())
    assert sorted(r.assignment.unique().tolist()) == [0, 1, 2]                 # every cluster used ...
    assert int(r.sizes.sum()) == len(members) and r.sizes.tolist() == sorted(r.sizes.tolist(), reverse=True)
    assert torch.equal(torch.bincount(r.assignment, minlength=3), r.sizes)      # ... each image in exactly one
    for k in range(3):
        assert torch.allclose(r.starts[k], members[r.assignment == k].mean(0))
    again = multifaceted(model, data, 1, **kw)
    assert torch.equal(r.images, again.images) and torch.equal(r.assignment, again.assignment)
    assert r.images.shape == (3, 3, 16, 16) and r.stages.shape == (3, 3, 3, 16, 16)
    assert "facets" in r.summary()


def test_centre_bias_updates_only_the_shrinking_windows() -> None:
    w = centre_windows((16, 16), 3)
    assert w[0].all() and bool((w[1] <= w[0]).all()) and bool((w[2] <= w[1]).all())
    assert int(w[2].sum()) == 64 and torch.equal(w[2], w[2].flip(0)) and torch.equal(w[2], w[2].flip(1))
    r = multifaceted(tiny(), facet_data(), 1, layer="1", n_facets=2, steps=9, lr=0.1, phases=3, blur=1.0, seed=1)
    for p in (1, 2):  # what a phase's window leaves out is exactly what the phase before made
        outside = r.windows[p] == 0
        assert torch.equal(r.stages[p][..., outside], r.stages[p - 1][..., outside])
        assert not torch.equal(r.stages[p], r.stages[p - 1])
    assert (r.final_logit > r.start_logit).all()


def test_multifaceted_errors_and_model_left_alone() -> None:
    model, data = tiny(), facet_data(8)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(InputError, match="n_facets"):
        multifaceted(model, data, 1, layer="1", n_facets=5, steps=1)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_course_maximal_response_quick(tmp_path) -> None:
    from underhood.report.course.base import run_experiments

    html = run_experiments(["map583-maximal-response"], tmp_path, quick=True)["map583-maximal-response"]
    assert "<img" in html and "U[0, 1]" in html


@pytest.mark.slow
def test_course_synthesis_experiments_run(tmp_path) -> None:
    from underhood.report.course import synthesis
    from underhood.report.course.base import run_experiments

    ids = [i for i, e in synthesis.REGISTERED.items()]
    out = run_experiments(ids, tmp_path, quick=True)
    assert all(out[i] is None or "<figure>" in out[i] for i in ids)

"""synthesis: objectives compose, every objective rises from its random start, dreams, pre-images, caricatures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.core.errors import InputError
from underhood.synthesis import Image, Priors, caricature, deep_dream, invert, render, transform
from underhood.synthesis import objectives as O

from .conftest import model_problems

CONV = "features.14"  # a convolution (pre-ReLU): every channel has a gradient from a random start


def test_objectives_compose_and_declare_their_layers():
    acts = {"a": torch.arange(24.0).view(2, 3, 2, 2), "b": torch.ones(2, 4)}
    logits = torch.tensor([[1.0, 5.0], [2.0, -1.0]])
    ch, lg = O.channel("a", 1), O.class_logit(1)
    assert torch.equal(ch(acts), acts["a"][:, 1].mean((1, 2)))
    assert torch.equal((ch + 2 * lg)(acts, logits), ch(acts) + 2 * logits[:, 1])
    assert torch.equal((ch - lg)(acts, logits), ch(acts) - logits[:, 1])
    assert (ch + lg).layers == {"a", "logits"} and (ch + lg).hooked == ["a"] and (ch + lg).needs_logits
    assert torch.equal(O.unit("a", 2)(acts), acts["a"][:, 2, 1, 1])
    assert torch.equal(O.unit("a", 2, 0, 1)(acts), acts["a"][:, 2, 0, 1])
    assert torch.equal(O.layer("a")(acts), acts["a"].pow(2).mean((1, 2, 3)))
    v = torch.tensor([1.0, 0.0, -1.0])
    assert torch.allclose(O.direction("a", v)(acts), (acts["a"][:, 0] - acts["a"][:, 2]).mean((1, 2)))
    both = O.batch([O.channel("a", 0), O.channel("a", 2)])(acts)
    assert torch.equal(both, torch.stack([acts["a"][0, 0].mean(), acts["a"][1, 2].mean()]))
    div = O.diversity("a")(acts)
    assert div.shape == (2,) and (div <= 0).all()
    with pytest.raises(InputError, match="channel: 'a' has 3 channels"):
        O.channel("a", 3)(acts)
    with pytest.raises(InputError, match="2 objectives for a batch of 3"):
        O.batch([ch, ch])({"a": torch.zeros(3, 3, 2, 2)})


@pytest.mark.parametrize("kind", ["pixels", "fourier"])
def test_parametrisations_give_seeded_images_in_range(kind):
    a, b = Image((2, 3, 16, 20), kind, seed=3)(), Image((2, 3, 16, 20), kind, seed=3)()
    a, b = a.detach(), b.detach()
    assert a.shape == (2, 3, 16, 20) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.equal(a, Image((2, 3, 16, 20), kind, seed=4)().detach())
    grey = Image((1, 1, 8, 8), kind)()
    assert grey.shape == (1, 1, 8, 8)


def test_transforms_keep_the_size_and_are_seeded():
    x = torch.rand(2, 3, 32, 32)
    opts = dict(pad=4, jitter=3, scale=(0.9, 1.1), rotate=(-10, 10), jitter2=2)
    a = transform(x, torch.Generator().manual_seed(0), **opts)
    assert a.shape == x.shape and torch.equal(a, transform(x, torch.Generator().manual_seed(0), **opts))


@pytest.mark.parametrize("objective", [O.unit(CONV, 3), O.channel(CONV, 5), O.layer(CONV), O.class_logit(4),
                                       O.direction(CONV, torch.linspace(-1, 1, 64)),
                                       O.channel(CONV, 1) + 0.5 * O.diversity(CONV)])
def test_every_objective_rises_well_above_its_random_start(shapes_model, objective):
    n = 2 if "diversity" in objective.name else 1
    # a single unit sits still only without jitter: it is optimised on the untransformed image
    tf = "none" if objective.name.startswith("unit") else "standard"
    r = render(shapes_model, objective, n=n, steps=64, lr=0.2, seed=0, transforms=tf)
    assert r.images.shape == (n, 3, 64, 64) and r.trace.shape == (64, n)
    assert 0 <= float(r.images.min()) and float(r.images.max()) <= 1
    rise = r.final - r.start
    assert (rise > 0.5 * r.start.abs().clamp(min=0.1)).all(), (objective.name, r.start, r.final)


def test_a_batch_of_channels_is_seeded_and_priors_apply(shapes_model):
    objs = [O.channel(CONV, c) for c in range(3)]
    a = render(shapes_model, objs, steps=6, seed=1, param="pixels", priors=Priors(tv=1e-3, blur_sigma=0.5))
    b = render(shapes_model, objs, steps=6, seed=1, param="pixels", priors=Priors(tv=1e-3, blur_sigma=0.5))
    assert torch.equal(a.images, b.images) and a.images.shape[0] == 3
    with pytest.raises(InputError, match="priors: blur and clipping act on pixels"):
        render(shapes_model, objs, steps=2, priors=Priors(blur_sigma=0.5))


def test_deep_dream_raises_the_layer_energy(shapes_model):
    image = underhood.datasets.shapes(1, seed=5).images
    dream = deep_dream(shapes_model, image, "features.9", octaves=2, steps=8, seed=0)
    assert dream.shape == image.shape and 0 <= float(dream.min()) and float(dream.max()) <= 1
    from underhood.activations import maps

    energy = [float(maps(shapes_model, x, "features.9")["features.9"].pow(2).mean()) for x in (image, dream)]
    assert energy[1] > 1.5 * energy[0], energy


@pytest.mark.parametrize("layer", ["features.2", "features.9"])
def test_inversion_reduces_the_feature_distance_by_90_percent(shapes_model, layer):
    image = underhood.datasets.shapes(1, seed=6).images
    inv = invert(shapes_model, image, layer, seeds=(0, 1), steps=120, lr=0.1)
    assert inv.images.shape == (2, 1, 3, 64, 64)
    assert (inv.distance_end <= 0.1 * inv.distance_start).all(), (inv.distance_start, inv.distance_end)
    assert not torch.equal(inv.images[0], inv.images[1])  # two starts, two pre-images


def test_caricature_exaggerates_what_the_layer_sees(shapes_model):
    image = underhood.datasets.shapes(1, seed=7).images
    out = caricature(shapes_model, image, "features.9", steps=16)
    assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_the_model_is_left_as_found_also_when_the_objective_raises(shapes_model):
    model = underhood.load_model("shapes", device="cpu").train()

    def boom(acts, logits):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        render(model, O.Objective(boom, frozenset({CONV}), "boom"), steps=2)
    render(model, O.channel(CONV, 0), steps=2)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert model_problems(model.modules()) == []


def test_errors():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    with pytest.raises(InputError, match="size"):
        render(net, O.channel("0", 0), steps=1)
    with pytest.raises(InputError, match="steps"):
        render(net, O.channel("0", 0), steps=0, size=8)
    with pytest.raises(InputError, match="param"):
        render(net, O.channel("0", 0), steps=1, size=8, param="wavelet")
    with pytest.raises(InputError, match="transforms"):
        render(net, O.channel("0", 0), steps=1, size=8, transforms={"shear": 2})


def test_inversion_seeds_run_as_one_batch_but_each_equals_its_own_run(shapes_model):
    image = underhood.datasets.shapes(2, seed=4).images
    both = invert(shapes_model, image, "features.6", seeds=(3, 5), steps=10)
    alone = invert(shapes_model, image, "features.6", seeds=(5,), steps=10)
    assert both.images.shape == (2, 2, 3, 64, 64) and both.psnr.shape == (2, 2)
    assert torch.allclose(both.images[1], alone.images[0], atol=1e-4)
    assert torch.allclose(both.distance_end[1], alone.distance_end[0], rtol=1e-3)


def test_standard_transforms_are_lucids_from_128_pixels_and_milder_below():
    from underhood.synthesis.param import SMALL_TRANSFORMS, TRANSFORMS, standard_transforms

    assert standard_transforms((64, 64)) == SMALL_TRANSFORMS and standard_transforms((32, 200)) == SMALL_TRANSFORMS
    assert standard_transforms((128, 128)) == TRANSFORMS and standard_transforms((224, 224)) == TRANSFORMS
    assert SMALL_TRANSFORMS["jitter"] < TRANSFORMS["jitter"] and SMALL_TRANSFORMS["pad"] < TRANSFORMS["pad"]
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    a = render(net, O.channel("0", 0), steps=2, size=16, transforms="small")
    b = render(net, O.channel("0", 0), steps=2, size=16, transforms="standard")
    assert torch.equal(a.images, b.images)  # below 128 px the standard preset is the small one
    with pytest.raises(InputError, match="transforms"):
        render(net, O.channel("0", 0), steps=1, size=8, transforms="wild")

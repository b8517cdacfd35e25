"""Any ``[N, C, H, W]`` size the model accepts: synthesis takes ``size=`` (a one-line error naming it when neither
the model nor the call gives one); methods given inputs take the size from them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.adversarial import pgd
from underhood.attribution import saliency
from underhood.core.errors import InputError
from underhood.synthesis import caricature, deep_dream, invert, render, style_transfer
from underhood.synthesis import objectives as O


def convnet(channels: int = 3) -> nn.Module:
    """A plain conv net: no ``input_size``, any size from 4x4 up (global pooling)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def sized(model: nn.Module, side: int = 32) -> nn.Module:
    """The model carrying an ``input_size`` (as the built-ins and zoo models do)."""
    return underhood.load_model(model, input_size=(3, side, side), device="cpu")


def test_render_without_any_size_names_size():
    with pytest.raises(InputError) as info:
        render(convnet(), O.channel("2", 0), steps=2)
    message = str(info.value)
    assert message.startswith("size: the model has no input_size; pass size=(H, W)") and "\n" not in message


@pytest.mark.parametrize("size, shape", [((3, 48, 48), (3, 48, 48)), ((40, 24), (3, 40, 24)), (20, (3, 20, 20))])
def test_render_at_the_size_given(size, shape):
    result = render(convnet(), O.channel("2", 0), size=size, steps=2)
    assert result.images.shape == (1, *shape)


def test_render_uses_the_models_input_size_and_its_channels():
    assert render(sized(convnet(), 40), O.class_logit(1), steps=2).images.shape == (1, 3, 40, 40)
    assert render(sized(convnet(), 40), O.class_logit(1), steps=2, size=24).images.shape == (1, 3, 24, 24)
    # a grey network without input_size: the channels come from its first convolution
    assert render(convnet(1), O.channel("0", 0), size=(28, 28), steps=2).images.shape == (1, 1, 28, 28)


@pytest.mark.parametrize("size, match", [((1, 48, 48), "model takes 3-channel images, got 1 channels"),
                                         ((0, 5), "expected a positive int, \\(H, W\\) or \\(C, H, W\\)"),
                                         ("48", "expected a positive int"), ((1, 2, 3, 4), "expected a positive int")])
def test_render_bad_size_is_one_line(size, match):
    with pytest.raises(InputError, match=f"^size: .*{match}"):
        render(convnet(), O.channel("2", 0), size=size, steps=2)


def test_render_refuses_a_size_below_the_models_minimum():
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(InputError, match=r"^size: images of 6x6 are smaller than this model's minimum 9x9"):
        render(net, O.channel("1", 0), size=6, steps=2)


def test_methods_given_inputs_take_their_size():
    model = sized(convnet(), 32)  # a 32x32 default, and it accepts 48x48
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert deep_dream(model, x, "2", octaves=2, steps=2).shape == (2, 3, 48, 48)
    inv = invert(model, x[:1], "2", seeds=(0,), steps=2)
    assert inv.images.shape == (1, 1, 3, 48, 48)
    assert caricature(model, x[:1], "2", steps=2).shape == (1, 3, 48, 48)
    assert style_transfer(model, x[:1], x[1:], steps=2).image.shape == (1, 3, 48, 48)
    assert saliency(model, x, target=0).shape == x.shape
    assert pgd(model, x, eps=4 / 255, steps=2).adversarial.shape == x.shape


def test_caricature_of_a_grey_image_on_a_model_without_input_size():
    x = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    assert caricature(convnet(1), x, "2", steps=2).shape == (1, 1, 24, 24)


def test_deep_dream_octaves_stay_above_the_models_minimum():
    # three unpadded 5x5 convolutions: the smallest map that runs is 13x13; a 20x20 image's first octave (10x10)
    # would be below it
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Conv2d(4, 4, 5), nn.ReLU(), nn.Conv2d(4, 4, 5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    out = deep_dream(net, x, "4", octaves=3, steps=2)
    assert out.shape == x.shape and not torch.equal(out, x)


def test_style_transfer_size_below_the_minimum_is_one_line():
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Conv2d(4, 4, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    with pytest.raises(InputError, match=r"^size: images of 6x6 are smaller than this model's minimum 9x9"):
        style_transfer(net, x, x, size=6, steps=2)

"""core.layout: token sequences and channels-last maps read as [N, C, h, w] (oracle: hand-built tensors)."""

from __future__ import annotations

import pytest
import torch

from underhood.core.errors import LayerError
from underhood.core.layout import Layout, from_nchw, infer, spatial, to_nchw

from .transformer_models import build


def _tokens(n: int, h: int, w: int, c: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sequence [n, prefix + h w, c], its patch grid [n, c, h, w])``, every value distinct."""
    grid = torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)
    seq = grid.permute(0, 2, 3, 1).reshape(n, h * w, c)  # row-major patches, as ViTs flatten them
    head = -1 - torch.arange(n * prefix * c, dtype=torch.float32).view(n, prefix, c)
    return torch.cat([head, seq], 1), grid


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_token_sequences_are_placed_on_their_grid(prefix):
    seq, grid = _tokens(2, 4, 4, 6, prefix)
    lay = infer(seq.shape, (32, 32))
    assert lay == Layout("tokens", (4, 4), prefix)
    assert torch.equal(to_nchw(seq, lay), grid)
    m, lay2 = spatial(seq, (32, 32))
    assert lay2 == lay and torch.equal(m, grid)


def test_non_square_inputs_give_non_square_grids():
    seq, grid = _tokens(1, 4, 6, 3, 1)          # 32x48 input, 8x8 patches
    lay = infer(seq.shape, (32, 48))
    assert lay == Layout("tokens", (4, 6), 1) and torch.equal(to_nchw(seq, lay), grid)
    assert infer((1, 16, 24, 8), (32, 48)) == Layout("nhwc", (16, 24))   # [N, h, w, C], stride 2
    assert infer((1, 8, 16, 24), (32, 48)) == Layout("nchw", (16, 24))   # [N, C, h, w], stride 2
    # both readings within 25 %: the exact one wins (12x16 would have strides 2.7 and 3)
    assert infer((1, 8, 12, 16), (32, 48)) == Layout("nhwc", (8, 12))
    assert infer(seq.shape, (32, 32)) == Layout("tokens", (5, 5), 0)   # what the shape alone says for a square
    with pytest.raises(LayerError, match="^tokens:.*32x32 input"):     # 24 patches on a square grid: none
        infer(seq.shape, (32, 32), tokens=1)


def test_four_d_maps_nchw_by_default_nhwc_when_only_that_reading_fits():
    assert infer((2, 64, 8, 8), (64, 64)) == Layout("nchw", (8, 8))
    assert infer((2, 8, 8, 64), (64, 64)) == Layout("nhwc", (8, 8))
    assert infer((2, 8, 8, 8), (64, 64)) == Layout("nchw", (8, 8))   # both fit: NCHW
    assert infer((2, 8), (64, 64)) is None and infer((2, 3, 4, 5, 6), (8, 8)) is None
    x = torch.randn(2, 8, 8, 64)
    assert torch.equal(to_nchw(x, infer(x.shape, (64, 64))), x.permute(0, 3, 1, 2))


def test_explicit_options_win():
    # 9 tokens read as a 3x3 grid by default; with 5 prefix tokens they are a 2x2 grid
    assert infer((1, 9, 4), (32, 32)) == Layout("tokens", (3, 3), 0)
    assert infer((1, 9, 4), (32, 32), tokens=5) == Layout("tokens", (2, 2), 5)
    assert infer((1, 17, 4), (32, 32), grid=(2, 8)) == Layout("tokens", (2, 8), 1)
    assert infer((1, 17, 4), None, tokens=1, grid=(4, 4)) == Layout("tokens", (4, 4), 1)
    assert infer((2, 8, 8, 8), (64, 64), layout="nhwc") == Layout("nhwc", (8, 8))
    assert infer((2, 4, 8, 8), (64, 64), grid=(4, 8)) == Layout("nhwc", (4, 8))   # grid picks the reading
    assert infer((2, 8, 8, 8), (64, 64), layout="nchw", grid=8) == Layout("nchw", (8, 8))


@pytest.mark.parametrize("kwargs, option", [
    ({"layout": "nchw"}, "layout"),             # a token sequence is not NCHW
    ({"tokens": 3}, "tokens"),                  # 14 patches form no square grid
    ({"grid": (5, 5)}, "grid"),                 # 25 > 17 tokens
    ({"grid": (4, 4), "tokens": 2}, "tokens"),  # 15 patch tokens
    ({"layout": "bogus"}, "layout"),
    ({"tokens": -1}, "tokens"),
    ({"grid": (0, 4)}, "grid"),
])
def test_contradictory_options_name_the_option(kwargs, option):
    with pytest.raises(LayerError, match=f"^{option}:"):
        infer((1, 17, 4), (32, 32), layer="blocks.0", **kwargs)


@pytest.mark.parametrize("kwargs, option", [
    ({"tokens": 1}, "tokens"), ({"layout": "tokens"}, "layout"), ({"grid": (3, 3)}, "grid"),
    ({"layout": "nhwc", "grid": (8, 8)}, "grid")])
def test_contradictory_options_on_a_map_name_the_option(kwargs, option):
    with pytest.raises(LayerError, match=f"^{option}:.*'stage'") as info:
        infer((1, 16, 8, 8), (32, 32), layer="stage", **kwargs)
    assert "\n" not in str(info.value)


def test_no_spatial_reading_is_a_clear_error():
    with pytest.raises(LayerError, match="^layer: 'head' outputs \\(4,\\), but gradcam needs a spatial map"):
        spatial(torch.zeros(2, 4), (32, 32), layer="head", what="gradcam")


@pytest.mark.parametrize("shape, size", [((2, 21, 6), (32, 32)), ((2, 24, 6), (32, 48)), ((2, 4, 6, 6), (16, 24)),
                                         ((2, 6, 4, 6), (32, 48))])
def test_from_nchw_inverts_to_nchw(shape, size):
    t = torch.randn(shape)
    lay = infer(t.shape, size)
    assert torch.equal(from_nchw(to_nchw(t, lay), lay, like=t), t)
    m = torch.randn(to_nchw(t, lay).shape)
    assert torch.equal(to_nchw(from_nchw(m, lay), lay), m)
    if lay.kind == "tokens" and lay.prefix:
        assert (from_nchw(m, lay)[:, :lay.prefix] == 0).all()   # no `like`: zero prefix tokens


def test_gradients_flow_through_to_nchw():
    seq = torch.randn(2, 17, 3, requires_grad=True)
    lay = infer(seq.shape, (32, 32))
    weight = torch.randn(1, 3, 4, 4)
    (to_nchw(seq, lay) * weight).sum().backward()
    assert (seq.grad[:, 0] == 0).all()   # the class token is not a position
    assert torch.equal(seq.grad[:, 1:], weight.permute(0, 2, 3, 1).reshape(1, 16, 3).expand(2, -1, -1))


@pytest.mark.parametrize("name, layer, expected", [
    ("vit", "blocks.0", Layout("tokens", (4, 4), 1)), ("vit-reg", "blocks.1", Layout("tokens", (4, 4), 5)),
    ("swin", "stage1.0", Layout("nhwc", (8, 8))), ("swin", "stage2", Layout("nhwc", (4, 4))),
    ("convnext", "stages.0.mlp", Layout("nhwc", (8, 8))), ("convnext", "stages.0", Layout("nchw", (8, 8)))])
def test_the_tiny_transformers_are_read_as_built(name, layer, expected):
    from underhood.core.hooks import capture

    model = build(name)
    with capture(model, layer) as cap:
        model(torch.rand(1, 3, 32, 32))
    assert infer(cap.activations[layer].shape, (32, 32)) == expected

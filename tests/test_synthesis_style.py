"""Style transfer (Gatys et al. 2015): Gram oracle, losses that fall, batching, lifecycle, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.core.errors import InputError, LayerError
from underhood.core.hooks import capture
from underhood.synthesis.style import gram, style_loss, style_transfer

from .conftest import model_problems

STYLE_LAYERS = ["features.2", "features.6", "features.9", "features.13", "features.16"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return underhood.datasets.shapes(2, seed=1).images  # 2 x 3 x 64 x 64


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return underhood.load_model("shapes", device="cpu")


def _features(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    with capture(model, layers, eval=True) as cap, torch.no_grad():
        model(x)
    return dict(cap.activations)


def _paper_style_loss(model: nn.Module, x: torch.Tensor, style: torch.Tensor) -> float:
    """sum_l E_l at the default style layers, from the definition (G unnormalised)."""
    fx, fs = _features(model, x, STYLE_LAYERS), _features(model, style, STYLE_LAYERS)
    total = 0.0
    for n in STYLE_LAYERS:
        _, c, h, w = fx[n].shape
        g, a = gram(fx[n], normalize=False), gram(fs[n], normalize=False)
        total += float(((g - a) ** 2).sum() / (4 * c**2 * (h * w) ** 2))
    return total


def _conv_relu() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


# --- oracle: the Gram matrix and the layer loss ---------------------------------------------------

def test_gram_equals_explicit_loop():
    f = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(2, 3, 3)
    for n in range(2):
        for i in range(3):
            for j in range(3):
                for y in range(4):
                    for x in range(5):
                        expected[n, i, j] += f[n, i, y, x] * f[n, j, y, x]
    torch.testing.assert_close(gram(f, normalize=False), expected)
    torch.testing.assert_close(gram(f), expected / (3 * 4 * 5))


def test_gram_is_blind_to_where_features_are():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 6, 7, 9, generator=g)
    perm = torch.randperm(7 * 9, generator=g)
    shuffled = f.flatten(2)[:, :, perm].reshape(2, 6, 7, 9)
    torch.testing.assert_close(gram(shuffled), gram(f))
    # a different spatial size with the same statistics gives the same normalised Gram matrix
    torch.testing.assert_close(gram(torch.cat([f, f], dim=3)), gram(f))


def test_style_loss_is_the_papers_and_zero_against_itself():
    g = torch.Generator().manual_seed(2)
    x, a = torch.randn(2, 4, 5, 6, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    assert torch.equal(style_loss(x, gram(x)), torch.zeros(2))
    big_g, big_a = gram(x, normalize=False), gram(a, normalize=False) * (5 * 6) / (3 * 3)  # same M_l
    paper = ((big_g - big_a) ** 2).sum((1, 2)) / (4 * 4**2 * (5 * 6) ** 2)
    torch.testing.assert_close(style_loss(x, gram(a)), paper)


# --- properties on the built-in model -------------------------------------------------------------

def test_defaults_shape_range_and_total_loss_falls(model, images):
    out = style_transfer(model, images[0], images[1], steps=40)
    assert out.image.shape == (1, 3, 64, 64) and out.image.dtype == torch.float32
    assert 0 <= out.image.min() and out.image.max() <= 1
    assert out.layers == {"content": ["features.9"], "style": STYLE_LAYERS}
    total = out.trace["total"][:, 0]
    assert out.trace["style"].shape == (40, 1) and total[-1] < 0.3 * total[0]
    assert total[-10:].mean() < total[:10].mean()


def test_content_only_from_noise_recovers_the_content_features(model, images):
    content = images[:1]
    out = style_transfer(model, content, images[1], style_weight=0, init="noise", steps=80, seed=3)
    start = torch.sigmoid(torch.randn(content.shape, generator=torch.Generator().manual_seed(3)))
    target = _features(model, content, ["features.9"])["features.9"]
    dist = lambda x: float(((_features(model, x, ["features.9"])["features.9"] - target) ** 2).sum())
    assert dist(out.image) <= 0.2 * dist(start)
    assert torch.equal(out.trace["style"], torch.zeros(80, 1))


def test_style_only_matches_the_style_gram_matrices(model, images):
    content, style = images[:1], images[1:]
    out = style_transfer(model, content, style, content_weight=0, steps=50)
    assert _paper_style_loss(model, out.image, style) <= 0.1 * _paper_style_loss(model, content, style)


def test_seeded_and_deterministic(model, images):
    kw = dict(init="noise", steps=5)
    a = style_transfer(model, images[:1], images[1:], seed=7, **kw)
    b = style_transfer(model, images[:1], images[1:], seed=7, **kw)
    c = style_transfer(model, images[:1], images[1:], seed=8, **kw)
    assert torch.equal(a.image, b.image) and not torch.allclose(a.image, c.image)


def _close_images(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding. Batched kernels sum in another order (another CPU's kernels, or cuDNN's
    algorithm for another batch size, more so), and Adam's g / sqrt(v) amplifies that where a gradient is ~0,
    so a few pixels may move by a few Adam steps (lr 0.02): at most 5e-2 per pixel, 1e-4 on average. Measured
    on 2 CPU cores: 6e-5 and 9e-8; a real mix-up (another style image) moves pixels by 6e-2 on average."""
    d = (a.detach().cpu() - b.detach().cpu()).abs()
    assert d.max() <= 5e-2 and d.mean() <= 1e-4, (float(d.max()), float(d.mean()))


def test_batch_equals_one_at_a_time(images, device):
    model = underhood.load_model("shapes", device=device)  # on a GPU, the GPU's kernels
    checker = ((torch.arange(48)[:, None] // 6 + torch.arange(40)[None] // 6) % 2).float()
    style = torch.stack([checker, 1 - checker, 0.5 * checker])  # another size: [3, 48, 40]
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions (cuDNN's default) round to 10 bits: keep float32
    try:
        both = style_transfer(model, images, style, steps=15)
        for i in range(2):
            one = style_transfer(model, images[i], style, steps=15)
            _close_images(both.image[i:i + 1], one.image)
            torch.testing.assert_close(both.trace["total"][:, i:i + 1].cpu(), one.trace["total"].cpu(), atol=1e-4,
                                       rtol=1e-3)
        per_image = style_transfer(model, images, torch.stack([style, style]), steps=15)
        _close_images(per_image.image, both.image)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def test_lbfgs_size_and_style_init(model, images):
    out = style_transfer(model, images[0], images[1], optimizer="lbfgs", steps=8, size=(48, 40), init="style")
    assert out.image.shape == (1, 3, 48, 40)
    assert out.trace["total"][-1, 0] < out.trace["total"][0, 0]


def test_tv_weight_smooths(model, images):
    from underhood.synthesis.priors import total_variation

    plain = style_transfer(model, images[0], images[1], steps=20)
    smooth = style_transfer(model, images[0], images[1], steps=20, tv_weight=300.0)
    assert total_variation(smooth.image) < 0.8 * total_variation(plain.image)
    assert smooth.trace["tv"][0, 0] > 0 and torch.equal(plain.trace["tv"], torch.zeros(20, 1))


def test_forward_stops_after_the_deepest_needed_layer(model, images):
    calls = []
    handle = model.net.classifier.register_forward_hook(lambda *a: calls.append(1))
    try:
        style_transfer(model, images[0], images[1], style_layers=["features.2", "features.6"], steps=3)
    finally:
        handle.remove()
    assert len(calls) == 1  # the one pass that finds the layers; targets and steps stop at features.9


def test_conv_followed_by_inplace_relu():
    net = _conv_relu()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = style_transfer(net, x, x.flip(-1), style_layers=["0", "2"], content_layers="0", steps=5)
    assert out.trace["total"][-1, 0] < out.trace["total"][0, 0]
    assert style_transfer(net, x, x, steps=1).layers == {"content": ["3"], "style": ["1", "3"]}


def test_lenet_functional_relu_defaults_to_the_convolutions():
    net = underhood.models.architectures.LeNet()
    out = style_transfer(net, torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32), steps=1)
    assert out.layers == {"content": ["conv2"], "style": ["conv1", "conv2"]}


# --- lifecycle -----------------------------------------------------------------------------------

class _Fails(nn.Module):
    """Raises on its ``at``-th call."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("boom")
        return x


def test_model_untouched_also_when_a_forward_raises():
    net = _conv_relu()
    net.train()
    net[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, 16, 16)
    threads = torch.get_num_threads()
    style_transfer(net, x, x[:1], steps=3)
    assert torch.get_num_threads() == threads
    assert net.training and not net[2].weight.requires_grad and net[0].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    failing = nn.Sequential(net[0], net[1], _Fails(at=5), net[2], net[3])  # fails in the 2nd step
    failing.train()
    with pytest.raises(RuntimeError, match="boom"):
        style_transfer(failing, x, x[:1], steps=3)
    assert failing.training and not net[2].weight.requires_grad and net[0].weight.requires_grad
    assert model_problems(failing.modules()) == [] and model_problems(net.modules()) == []


# --- contract: errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, kind, match", [
    (dict(style_layers=["features.99"]), LayerError, "style_layers: no layer named 'features.99'"),
    (dict(content_layers="featurs.9"), LayerError, "content_layers: .*did you mean"),
    (dict(style_layers=[]), LayerError, "style_layers: no layer named"),
    (dict(style_layers=["classifier"]), LayerError, "layers: 'classifier' returns .*pick a convolutional layer"),
    (dict(init="zeros"), InputError, "init: unknown value 'zeros'; choose one of content, noise, style"),
    (dict(steps=0), InputError, "steps: expected a positive int"),
    (dict(steps=2.5), InputError, "steps: expected a positive int"),
    (dict(optimizer="sgd"), InputError, "optimizer: unknown value 'sgd'; choose one of adam, lbfgs"),
    (dict(lr=-1.0), InputError, "lr: expected a finite number > 0"),
    (dict(style_weight=-1), InputError, "style_weight: expected a finite number >= 0"),
    (dict(content_weight=0, style_weight=0), InputError, "both are 0"),
    (dict(size=0), InputError, "size: expected a positive int"),
])
def test_errors(model, images, kwargs, kind, match):
    with pytest.raises(kind, match=match):
        style_transfer(model, images[:1], images[1:], steps=kwargs.pop("steps", 1), **kwargs)


def test_input_errors(model, images):
    with pytest.raises(InputError, match="style: expected 1 image or one per content image"):
        style_transfer(model, images, torch.rand(3, 3, 64, 64), steps=1)
    with pytest.raises(InputError, match="content: the model takes 3-channel images"):
        style_transfer(model, images[:, :1], images, steps=1)
    with pytest.raises(InputError, match="features: expected a \\[N, C, H, W\\]"):
        gram(torch.zeros(3, 4, 4))

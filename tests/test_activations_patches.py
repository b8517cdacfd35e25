"""activations.top_patches: streaming top-k equals a brute-force pass; receptive fields hold the whole support."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underhood.activations.patches import boxes, crop, merge, scan, top_patches, unit_gradients
from underhood.core.batching import stream
from underhood.core.errors import InputError, LayerError
from underhood.core.rules import relu_rule

from .conftest import model_problems


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 5, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(5 * 6 * 6, 4))
    with torch.no_grad():
        net[3].bias[2] = -100.0  # channel 2 of layer "4" never fires: every image ties at 0
    return net.eval()


def _brute(acts: torch.Tensor, k: int):
    flat = acts.flatten(2)
    best, where = flat.max(2)  # [N, C]
    values, index, position = [], [], []
    for c in range(acts.shape[1]):
        ranked = sorted(range(len(acts)), key=lambda i: (-float(best[i, c]), i))[:k]
        values.append(best[ranked, c])
        index.append(torch.tensor(ranked))
        position.append(torch.stack([where[ranked, c] // acts.shape[-1], where[ranked, c] % acts.shape[-1]], 1))
    return torch.stack(values), torch.stack(index), torch.stack(position)


def test_top_k_equals_a_brute_force_pass_and_ties_go_to_the_lower_index():
    net, x = _net(), torch.rand(37, 3, 16, 16)
    tp = top_patches(net, x, "4", k=6, batch_size=5, pattern=None)
    values, index, position = _brute(net[:5](x).detach(), 6)
    assert torch.allclose(tp.values, values) and torch.equal(tp.index, index) and torch.equal(tp.position, position)
    assert torch.equal(tp.index[2], torch.arange(6)) and (tp.values[2] == 0).all()
    assert tp.n == 37 and torch.equal(tp.channels, torch.arange(5))
    assert (tp.values[:, :-1] >= tp.values[:, 1:]).all()


def test_any_split_of_the_dataset_merges_to_the_same_result():
    net, x = _net(), torch.rand(40, 3, 16, 16)
    whole = scan(net, x, "1", 5, batch_size=40)
    parts = [scan(net, x, "1", 5, start=a, stop=b, batch_size=3) for a, b in ((0, 9), (9, 31), (31, 40))]
    merged = merge(parts[::-1], 5)
    assert torch.allclose(merged.values, whole.values, atol=1e-6)  # convolution sums differ by batch size
    for name in ("index", "position", "channels"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name


def test_channels_subset_and_linear_layers():
    net, x = _net(), torch.rand(12, 3, 16, 16)
    tp = top_patches(net, x, "6", k=3, channels=[3, 1], batch_size=4)
    logits = net(x).detach()
    for row, c in enumerate((3, 1)):
        assert torch.equal(tp.index[row], logits[:, c].argsort(descending=True, stable=True)[:3])
    assert tp.field is None and (tp.box == torch.tensor([0, 0, 16, 16])).all()
    assert tp.patches.shape == (2, 3, 3, 16, 16) and torch.equal(tp.patches[0, 0], x[tp.index[0, 0]])


class _Branches(nn.Module):
    """Strided conv, padded pooling, a dilated conv and a residual branch of another size."""

    def __init__(self, act: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.act = act
        self.pool = pool
        self.dilated = nn.Conv2d(3, 3, 3, dilation=2, padding=2)
        self.wide = nn.Conv2d(3, 3, 7, padding=3)  # wider than the dilated branch (span 5)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pool(self.act(self.conv1(x)))
        return self.out(self.dilated(a) + self.wide(a))


def _support(net: nn.Module, x: torch.Tensor, c: int, y: int, xx: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    a = {}
    h = net.out.register_forward_hook(lambda m, i, o: a.setdefault("o", o))
    try:
        net(x)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(a["o"][0, c, y, xx], x)
    return g[0].abs().sum(0) > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_receptive_field_is_the_exact_support_of_a_positive_linear_net(seed):
    torch.manual_seed(seed)
    net = _Branches(nn.Identity(), nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True))
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(0.1, 1.0)
    x = torch.rand(1, 2, 41, 37)
    h, w = net(x).shape[-2:]
    for y, xx in ((0, 0), (h // 2, w // 3), (h - 1, w - 1), (3, 2)):
        box, rf = boxes(net, "out", torch.tensor([y, xx]), (2, 41, 37))
        top, left, bottom, right = box.tolist()
        expected = torch.zeros(41, 37, dtype=torch.bool)
        expected[max(top, 0):bottom, max(left, 0):right] = True
        assert torch.equal(_support(net, x, 1, y, xx), expected), (y, xx, box)
    assert rf == (bottom - top, right - left)


def test_receptive_field_contains_the_support_through_relu_and_max_pooling():
    torch.manual_seed(3)
    net = _Branches(nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
    for trial in range(6):
        x = torch.randn(1, 2, 33, 33)
        h, w = net(x).shape[-2:]
        y, xx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        box, _ = boxes(net, "out", torch.tensor([y, xx]), (2, 33, 33))
        top, left, bottom, right = box.tolist()
        support = _support(net, x, trial % 3, y, xx)
        inside = torch.zeros_like(support)
        inside[max(top, 0):bottom, max(left, 0):right] = True
        assert support.any() and not (support & ~inside).any()


def test_patches_and_patterns_are_the_crops_and_rule_gradients_of_each_unit():
    net, x = _net(), torch.rand(10, 3, 16, 16)
    tp = top_patches(net, x, "3", k=2, channels=[0, 4], pattern="deconvnet", batch_size=3)
    assert tp.field == (8, 8) and tp.patches.shape == (2, 2, 3, 8, 8) and tp.rule == "deconvnet"
    for row in range(2):
        for j in range(2):
            i, (y, xx), box = int(tp.index[row, j]), tp.position[row, j].tolist(), tp.box[row, j]
            assert torch.equal(tp.patches[row, j], crop(x[i], box))
            xi = x[i:i + 1].clone().requires_grad_(True)
            with relu_rule("deconvnet"):
                unit = net[:4](xi)[0, int(tp.channels[row]), y, xx]
                (g,) = torch.autograd.grad(unit, xi)
            assert torch.allclose(tp.patterns[row, j], crop(g[0], box, fill=0.0), atol=1e-6)
            outside = g[0].abs().sum(0).clone()
            outside[max(box[0], 0):box[2], max(box[1], 0):box[3]] = 0
            assert float(outside.max()) == 0.0


def test_crop_pads_outside_the_image():
    img = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    out = crop(img, (-1, 3, 3, 7), fill=-1.0)
    assert out.shape == (2, 4, 4)
    assert torch.equal(out[:, 1:, :2], img[:, 0:3, 3:5]) and (out[:, 0] == -1).all() and (out[:, :, 2:] == -1).all()


def test_unit_gradients_batch_equals_one_at_a_time():
    net, x = _net(), torch.rand(5, 3, 16, 16)
    ch, pos = torch.tensor([0, 1, 3, 4, 0]), torch.tensor([[0, 0], [2, 3], [5, 5], [1, 4], [3, 0]])
    together = unit_gradients(net, x, "3", ch, pos, rule="guided", batch_size=5)
    alone = torch.cat([unit_gradients(net, x[i:i + 1], "3", ch[i:i + 1], pos[i:i + 1], rule="guided",
                                      batch_size=1) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_errors_and_the_model_is_left_as_found():
    net = _net().train()
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(InputError, match="k: 5 images per channel asked, the dataset has only 4"):
        top_patches(net, x, "1", k=5)
    with pytest.raises(LayerError):
        top_patches(net, x, "nope", k=2)
    with pytest.raises(InputError, match="pattern"):
        top_patches(net, x, "1", k=2, pattern="lrp")
    with pytest.raises(InputError, match="channels"):
        top_patches(net, x, "1", k=2, channels=[9])
    with pytest.raises(InputError, match="channels: patches"):
        top_patches(net, x, "1", k=2, max_bytes=10)
    top_patches(net, x, "1", k=2, batch_size=2)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert model_problems(net.modules()) == []


def test_stream_stops_after_the_layer_unless_it_is_reused():
    calls = {"head": 0}
    net = _net()
    handle = net[6].register_forward_hook(lambda m, i, o: calls.__setitem__("head", calls["head"] + 1))
    x = torch.rand(9, 3, 16, 16)
    parts = list(stream(net, "1", x, 3))
    handle.remove()
    assert calls["head"] == 1 and len(parts) == 3  # only the first batch ran to the end
    assert torch.allclose(torch.cat([a["1"] for _, a in parts]), net[:2](x).detach(), atol=1e-6)

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu, self.head = nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.relu(self.head(self.relu(self.conv(x))))

    r = Reused().eval()
    got = torch.cat([a["relu"] for _, a in stream(r, "relu", x, 4)])
    assert torch.allclose(got, r(x).detach(), atol=1e-6)  # the last call's output, every batch run to the end
    assert model_problems(r.modules()) == []


def test_builtin_model_top_patches(shapes_model, shapes_small):
    tp = top_patches(shapes_model, shapes_small, "features.9", k=3, channels=range(4), batch_size=16)
    assert tp.patches.shape[:2] == (4, 3) and tp.patterns.shape == tp.patches.shape
    assert tp.field is not None and tp.field[0] < 64 and tp.patterns.abs().sum() > 0

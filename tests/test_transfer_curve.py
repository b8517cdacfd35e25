"""Yosinski's transfer grid: the blocks compose to the network, the frozen cache is exact, the splits and errors,
the statistics against scipy, resume, and (slow lane) the grid's robust findings on the built-in shapes net."""

from __future__ import annotations

import json

import pytest
import scipy.stats
import torch

from underhood.core.errors import InputError
from underhood.data import shapes
from underhood.data.shapes import CLASSES
from underhood.models.architectures import ARCHITECTURES
from underhood.transfer import TransferResult, transfer_curve
from underhood.transfer.curve import Settings, _Chain, _fit, _halves, blocks, interval, spearman


@pytest.mark.parametrize("arch,shape", [("shapes", (2, 3, 32, 32)), ("shapes-resnet", (2, 3, 32, 32)),
                                        ("digits", (2, 1, 32, 32))])
def test_blocks_compose_to_the_forward_pass(arch, shape):
    torch.manual_seed(0)
    net = ARCHITECTURES[arch](num_classes=5, in_channels=shape[1]).eval()
    pieces, names = blocks(arch, net)
    x = torch.rand(shape)
    y = x
    for p in pieces:
        y = p(y)
    assert torch.allclose(y, net(x), atol=1e-6)
    assert len(names) == len(pieces) - 1
    own = dict(net.named_modules())
    assert all(n in own for n in names)  # each depth is named by a layer of the network


def test_frozen_blocks_on_cached_features_train_exactly_like_the_full_network():
    """The cache is exact: training blocks d.. on the frozen blocks' stored outputs gives the same weights as
    training the whole chain with blocks ..d frozen in eval mode."""
    dev = torch.device("cpu")
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 3, (40,))
    s = Settings(epochs=2, batch_size=16)
    source = _Chain("shapes", 3, 3, 1, dev)
    cached, full = _Chain("shapes", 3, 3, 2, dev), _Chain("shapes", 3, 3, 2, dev)
    for net in (cached, full):
        net.copy_lower(source, 2)
    with torch.no_grad():
        source.eval()
        feats = source.pieces[1](source.pieces[0](x))
    _fit(cached, 2, feats, y, 2, 1e-3, s, 0, dev)
    # the reference: the whole chain from the pixels, lower blocks frozen and in eval mode
    for p in full.pieces[:2]:
        p.requires_grad_(False)
    params = [p for piece in full.pieces[2:] for p in piece.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=2 * 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(40, generator=g)
        full.train()
        for p in full.pieces[:2]:
            p.eval()
        for i in range(0, 40, 16):
            idx = order[i:i + 16]
            loss = torch.nn.functional.cross_entropy(full(x[idx]), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    for a, b in zip(cached.state_dict().values(), full.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    for a, b in zip(cached.pieces[0].state_dict().values(), source.pieces[0].state_dict().values()):
        assert torch.equal(a, b)  # the frozen block is the source's, untouched (BatchNorm statistics too)


def test_splits():
    a, b, kind = _halves("random", CLASSES, "shapes", 0)
    assert kind == "random" and sorted(a + b) == list(range(8)) and len(a) == len(b) == 4
    assert _halves("random", CLASSES, "shapes", 0) == (a, b, kind)  # seeded
    assert any(_halves("random", CLASSES, "shapes", s)[0] != a for s in range(1, 5))  # a new split per seed
    a, b, kind = _halves("dissimilar", CLASSES, "shapes", 0)
    assert {CLASSES[i] for i in b} == {"circle", "ring", "crescent"} and kind == "dissimilar"
    a, b, kind = _halves((["circle", 2], ["star", "cross"]), CLASSES, "shapes", 0)
    assert (a, b, kind) == ([0, 2], [3, 4], "custom")


@pytest.mark.parametrize("split,match", [
    ((["circle"], ["star", "cross"]), "half A has 1 class"),
    (([], ["star", "cross"]), "half A has 0 class"),
    ((["circle", "star"], ["star", "cross"]), "in both halves"),
    ((["circle", "blob"], ["star", "cross"]), "'blob' in half A is not a class"),
    ("halves", "split"),
])
def test_bad_splits(split, match):
    with pytest.raises(InputError, match=match):
        _halves(split, CLASSES, "shapes", 0)


def test_dissimilar_needs_a_known_dataset_and_errors_are_one_line():
    data = shapes(200, size=16)
    data.info["dataset"] = "mine"
    with pytest.raises(InputError, match="no 'dissimilar' split"):
        transfer_curve("shapes", data, split="dissimilar", seeds=1, epochs=1)
    with pytest.raises(InputError, match="each class needs at least"):
        transfer_curve("shapes", "shapes:60", size=16, seeds=1, epochs=1)
    with pytest.raises(InputError, match="arch"):
        transfer_curve("alexnet", "shapes:60")
    with pytest.raises(InputError, match="depths"):
        transfer_curve("shapes", "shapes:400", size=16, depths=[0, 9])
    with pytest.raises(InputError, match="treatments"):
        transfer_curve("shapes", "shapes:400", size=16, treatments=["AnC"])
    with pytest.raises(InputError, match="reduced"):
        transfer_curve("shapes", "shapes:400", size=16, reduced=(1.5,))


def test_interval_and_spearman_against_scipy():
    v = [0.61, 0.58, 0.64, 0.6]
    m, lo, hi = interval(v)
    ref = scipy.stats.t.interval(0.95, len(v) - 1, loc=sum(v) / 4, scale=scipy.stats.sem(v))
    assert abs(lo - ref[0]) < 1e-3 and abs(hi - ref[1]) < 1e-3 and abs(m - sum(v) / 4) < 1e-12
    assert interval([0.5]) == (0.5, 0.5, 0.5)
    a, b = [0.9, 0.8, 0.8, 0.3, 0.1], [1, 2, 4, 3, 9]
    assert abs(spearman(a, b) - scipy.stats.spearmanr(a, b).statistic) < 1e-12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    result = transfer_curve("shapes", "shapes:320", size=16, seeds=2, depths=[1, 5], epochs=1, finetune_epochs=1,
                            n_cka=100, out=out)
    return result, out


def test_a_tiny_grid_has_every_network_and_resumes(tiny):
    result, out = tiny
    assert isinstance(result, TransferResult)
    kinds = {(r["treatment"], r["depth"]) for r in result.runs}
    for t in ("BnB", "BnB+", "AnB", "AnB+", "random"):
        assert {(t, 1), (t, 5)} <= kinds
    assert {("baseA", 0), ("baseB", 0), ("reduced", 0)} <= kinds
    assert len(result.runs) == 2 * (3 + 2 * 5) and result.seeds == [0, 1]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in result.runs)
    assert result.halves[0] != result.halves[1]  # a new random split per seed
    assert set(result.cka[0]) == {"features.3", "features.17"}
    assert all(0 <= v <= 1 + 1e-9 for v in result.cka[0].values())
    assert result.statements() and all(isinstance(s, str) for s in result.statements())
    assert result.curve("AnB")[1][1] <= result.curve("AnB")[1][0] <= result.curve("AnB")[1][2]
    saved = json.loads((out / "runs.json").read_text())["runs"]
    again = transfer_curve("shapes", "shapes:320", size=16, seeds=2, depths=[1, 5], epochs=1, finetune_epochs=1,
                           n_cka=100, out=out)
    assert [r["accuracy"] for r in again.runs] == [r["accuracy"] for r in result.runs]
    assert json.loads((out / "runs.json").read_text())["runs"] == saved  # nothing retrained, nothing appended


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_grid_on_the_shapes_net_shows_yosinskis_robust_findings():
    r = transfer_curve("shapes", "shapes:3000", seeds=3, controls=(), reduced=())
    drop = r.drop("AnB")
    # the AnB drop grows with depth, within noise: the deepest transfer costs at least as much as the first
    assert drop[5][0] <= drop[1][0] + 0.005
    # transfer then fine-tuning is not worse than the base by more than half a point
    plus = [v for d in r.depths for v in r.values("AnB+", d)]
    assert sum(plus) / len(plus) >= r.base()[0] - 0.005

"""The activations family's results follow the one result protocol: short repr, text summary, figure, save/load."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from underhood.activations.ablate import Ablation, ablate
from underhood.activations.embed import Embedding, embed
from underhood.activations.neighbors import Neighbors, neighbors
from underhood.activations.patches import TopPatches, top_patches
from underhood.activations.statistics import LayerStatistics, statistics
from underhood.core.results import Result, load
from underhood.data import ImageSet

from .conftest import check_protocol


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 5, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    net = _net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:3] = torch.tensor([0, 1, 2])
    data = ImageSet(x, y, ["a", "b", "c"])
    return {
        "TopPatches": top_patches(net, data, "4", k=4, batch_size=8),
        "Ablation": ablate(net, data, "4", points=3),
        "Neighbors": neighbors(net, x[:2], data, "4", k=3),
        "LayerStatistics": statistics(net, data, "4", bins=5),
        "Embedding": embed(net, data, ["input", "4"], method="pca", k=3),
    }


@pytest.mark.parametrize("name, cls", [("TopPatches", TopPatches), ("Ablation", Ablation), ("Neighbors", Neighbors),
                                       ("LayerStatistics", LayerStatistics), ("Embedding", Embedding)])
def test_repr_is_short_and_the_summary_a_table(results, name, cls):
    r = results[name]
    assert isinstance(r, cls)
    check_protocol(r, name)
    assert r.summary().splitlines()[0] == name


def test_key_figures(results):
    tp = results["TopPatches"].scalars()
    assert (tp["layer"], tp["n"], tp["k"], tp["channels"], tp["rule"]) == ("4", 24, 4, 5, "guided")
    emb = results["Embedding"]
    s = emb.scalars()
    assert s["method"] == "pca" and s["n"] == 24
    assert s["knn[4]"] == emb.knn_accuracy["4"] and s["trust[input]"] == emb.trustworthiness["input"]
    ab = results["Ablation"]
    assert ab.scalars()["baseline"] == ab.baseline and ab.scalars()["units"] == 5
    assert results["LayerStatistics"].scalars()["channels"] == 5
    assert results["Neighbors"].scalars() == {"layer": "4", "metric": "euclidean", "queries": 2, "k": 3}


@pytest.mark.parametrize("name", ["TopPatches", "Ablation", "LayerStatistics", "Embedding"])
def test_figure_is_a_bare_matplotlib_figure(results, name):
    fig = results[name].figure()
    assert isinstance(fig, Figure) and fig.axes


def test_top_patches_save_and_load(results, tmp_path):
    tp = results["TopPatches"]
    back = load(tp.save(tmp_path / "tp"))
    assert isinstance(back, TopPatches) and back.field == tp.field and back.rule == tp.rule
    assert torch.equal(back.patches, tp.patches) and torch.equal(back.index, tp.index)

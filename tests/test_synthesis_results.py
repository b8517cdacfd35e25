"""The synthesis family's results follow the one result protocol: short repr, text summary, figure."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from underhood.core.results import Result, load
from underhood.synthesis import Inversion, RenderResult, StyleResult, invert, render, style_transfer
from underhood.synthesis import objectives as O

from .conftest import check_protocol


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    net = _net()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    return {
        "RenderResult": render(net, [O.channel("2", 0), O.channel("2", 1)], size=12, steps=3),
        "Inversion": invert(net, x, "2", seeds=(0, 1), steps=3),
        "StyleResult": style_transfer(net, x, x[:1], steps=2),
    }


@pytest.mark.parametrize("name, cls", [("RenderResult", RenderResult), ("Inversion", Inversion),
                                       ("StyleResult", StyleResult)])
def test_repr_is_short_the_summary_a_table_and_the_figure_bare(results, name, cls):
    r = results[name]
    assert isinstance(r, cls)
    check_protocol(r, name)
    assert r.summary().splitlines()[0] == name
    fig = r.figure()
    assert isinstance(fig, Figure) and fig.axes


def test_key_figures(results):
    r = results["RenderResult"].scalars()
    assert (r["n"], r["steps"]) == (2, 3) and r["final"] == float(results["RenderResult"].final.mean())
    inv = results["Inversion"]
    assert inv.scalars()["seeds"] == 2 and inv.original.shape == (2, 3, 12, 12)
    style = results["StyleResult"]
    assert style.scalars()["steps"] == 2 and len(style.figure().axes) == 2 * 3  # content | style | result


def test_render_result_save_and_load(results, tmp_path):
    r = results["RenderResult"]
    back = load(r.save(tmp_path / "r"))
    assert isinstance(back, RenderResult) and torch.equal(back.images, r.images) and back.info == r.info

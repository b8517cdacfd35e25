"""The result protocol (core.results): summary, save and load, compact repr."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from underhood.core.errors import DataError
from underhood.core.results import Collection, Result, Summary, load


@dataclass(repr=False)
class Toy(Result):
    images: torch.Tensor
    norms: dict[str, torch.Tensor]
    steps: list[torch.Tensor]
    rate: float
    name: str = "toy"
    missing: float = math.nan
    info: dict = field(default_factory=dict)

    def scalars(self) -> dict:
        return {"name": self.name, "n": len(self.images), "rate": self.rate}


@dataclass(repr=False)
class Holder(Result):
    inner: Toy
    net: nn.Module
    pairs: dict[int, str] = field(default_factory=dict)
    shape: tuple[int, int] = (2, 3)


def _toy(n: int = 5000) -> Toy:
    x = torch.rand(n, 3, 8, 8)
    return Toy(images=x, norms={"l2": x.flatten(1).norm(dim=1), "linf": x.flatten(1).amax(1)},
               steps=[x[:2], x[:2]], rate=0.25, info={"eps": 8 / 255, "seed": torch.tensor(3)})


def test_repr_shows_shapes_and_figures_never_whole_tensors():
    r = _toy()
    text = repr(r)
    assert len(text) <= 400
    assert text.startswith("Toy(name=toy, n=5000, rate=0.25") and "images=[5000, 3, 8, 8] float32" in text
    assert "norms={2 x [5000] float32}" in text and "steps=[2 x [2, 3, 8, 8] float32]" in text
    assert "tensor(" not in text


def test_summary_is_a_text_table_and_the_old_dict_access_warns():
    s = _toy().summary()
    assert isinstance(s, str) and s.splitlines() == ["Toy", "  name  toy", "  n     5000", "  rate  0.25"]
    with pytest.warns(DeprecationWarning, match="scalars"):
        assert s["rate"] == 0.25
    assert s[:3] == "Toy"  # still a str


def test_default_scalars_are_the_scalar_fields():
    @dataclass(repr=False)
    class Plain(Result):
        x: torch.Tensor
        k: int
        done: bool
        mean: torch.Tensor

    assert Plain(torch.zeros(3), 4, True, torch.tensor(0.5)).scalars() == {"k": 4, "done": True, "mean": 0.5}


def test_save_then_load_gives_back_every_field(tmp_path):
    r = _toy(10)
    out = r.save(tmp_path / "run", command="attack", model="shapes")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["manifest_version"] == 1 and manifest["result"] == "Toy" and manifest["command"] == "attack"
    assert manifest["summary"] == {"name": "toy", "n": 10, "rate": 0.25}
    assert isinstance(load(out), dict)  # a class outside underhood is imported only when trusted
    back = load(out, trust=True)
    assert isinstance(back, Toy) and back.rate == 0.25 and back.name == "toy" and math.isnan(back.missing)
    assert torch.equal(back.images, r.images) and torch.equal(back.norms["l2"], r.norms["l2"])
    assert len(back.steps) == 2 and torch.equal(back.steps[1], r.steps[1])  # shared storage saved twice
    assert back.info == {"eps": 8 / 255, "seed": 3}
    assert not list(out.glob(".*.tmp"))


def test_nested_results_modules_and_odd_keys(tmp_path):
    net = nn.Linear(3, 2)
    h = Holder(inner=_toy(4), net=net, pairs={1: "a", 2: "b"})
    back = load(h.save(tmp_path), trust=True)
    assert isinstance(back.inner, Toy) and torch.equal(back.inner.images, h.inner.images)
    assert torch.equal(back.net["weight"], net.weight)  # a module comes back as its state_dict
    assert back.pairs == {1: "a", 2: "b"} and back.shape == (2, 3)
    assert "<Linear>" in repr(h)


def test_save_refuses_a_file_and_load_a_folder_without_a_result(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="path: .* is a file"):
        _toy(2).save(tmp_path / "f")
    with pytest.raises(DataError, match="no saved result"):
        load(tmp_path)


def test_html_repr_draws_the_figure_when_there_is_one():
    class Drawn(Toy):
        def figure(self):
            from matplotlib.figure import Figure

            fig = Figure(figsize=(1, 1))
            fig.add_subplot().plot([0, 1])
            return fig

    html = Drawn(**{k: getattr(_toy(3), k) for k in ("images", "norms", "steps", "rate")})._repr_html_()
    assert "<table>" in html and "data:image/png;base64," in html
    assert "<img" not in _toy(3)._repr_html_()


def test_summary_type():
    assert isinstance(Summary("a", {}), str)


def test_a_collection_saves_several_results_as_one(tmp_path):
    both = Collection({"a": _toy(3), "b": _toy(4)})
    assert both.scalars()["b.n"] == 4 and len(both) == 2
    back = load(both.save(tmp_path), trust=True)
    assert isinstance(back, Collection) and isinstance(back["a"], Toy)
    assert torch.equal(back["b"].images, both["b"].images)


RESULTS = {"TopPatches", "Ablation", "Neighbors", "LayerStatistics", "Embedding", "Inversion", "Toy2D", "Evaluation",
           "LimeFit", "LinearDemo", "RobustnessCurve", "TransferMatrix"}  # results whose names do not say so


def test_every_result_class_of_the_package_keeps_the_protocol():
    import dataclasses
    import importlib
    import pkgutil

    import underhood

    found, wrong = set(), []
    for info in pkgutil.walk_packages(underhood.__path__, "underhood."):
        if info.name.startswith("underhood.cli") or info.name == "underhood.__main__":
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            if issubclass(cls, Result) and cls is not Result:
                found.add(cls.__name__)
                if "__repr__" in cls.__dict__ or not dataclasses.is_dataclass(cls):
                    wrong.append(f"{cls.__module__}.{cls.__name__}: a dataclass(repr=False) keeps the compact repr")
            elif dataclasses.is_dataclass(cls) and (cls.__name__.endswith("Result") or cls.__name__ in RESULTS):
                wrong.append(f"{cls.__module__}.{cls.__name__} is a result but not a core.results.Result")
    assert not wrong, "\n".join(wrong)
    assert RESULTS | {"AttackResult", "RenderResult", "StyleResult", "TrainResult"} <= found

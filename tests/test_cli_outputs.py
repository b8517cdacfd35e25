"""Outputs of the command line: atomic result folders (an interrupted run leaves the old result as it was and
no temporary folder), resumable sharded jobs, the demo's timings, the sample images, only the images used
generated, and images too small for the model refused."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from markupsafe import Markup

import underhood
from underhood.cli import main
from underhood.core.errors import InputError
from underhood.core.io import atomic_dir, check_out_dir


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_temporary(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], list(parent.iterdir())


@pytest.fixture
def old_result(tmp_path) -> Path:
    """A folder holding an earlier result: a manifest, a report and a figure."""
    out = tmp_path / "tour"
    (out / "figures").mkdir(parents=True)
    (out / "manifest.json").write_text('{"command": "demo"}\n')
    (out / "report.html").write_text("<p>the old report</p>")
    (out / "figures" / "old.png").write_bytes(b"old figure")
    return out


def _fake_sections(monkeypatch, second):
    """The report with two sections: one writes a figure, then ``second`` runs."""
    from underhood.report import base, figure

    def first(ctx):
        return figure(ctx, b"\x89PNG new figure", "new", "a new figure")

    report = importlib.import_module("underhood.report")
    monkeypatch.setattr(report, "discover", lambda: [(0, "first", "First", first), (1, "second", "Second", second)])
    return base


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, 130), (RuntimeError, 1)])
def test_an_interrupted_demo_leaves_the_old_result_as_it_was(raised, status, old_result, monkeypatch, capsys):
    before = _tree(old_result)

    def boom(ctx):
        assert (ctx.out / "figures" / "new.png").is_file() and ctx.out != old_result  # mid-way, in a temporary folder
        raise raised("stop")

    _fake_sections(monkeypatch, boom)
    assert main(["demo", "--n", "8", "--no-progress", "--out", str(old_result)]) == status
    assert _tree(old_result) == before
    _no_temporary(old_result.parent)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("as it was" in err[0] or "internal error" in err[0]), err


def test_a_finished_demo_replaces_the_old_result_whole_and_times_each_section(old_result, monkeypatch, capsys):
    _fake_sections(monkeypatch, lambda ctx: Markup("<p>second</p>"))
    assert main(["demo", "--n", "8", "--no-progress", "--timings", "--out", str(old_result)]) == 0
    files = set(_tree(old_result))
    assert "figures/old.png" not in files and {"figures/new.png", "report.html", "timings.json"} <= files
    assert "the old report" not in (old_result / "report.html").read_text()
    _no_temporary(old_result.parent)
    table = json.loads((old_result / "timings.json").read_text())
    assert [r["id"] for r in table["sections"]] == ["first", "second"]
    assert all(r["wall_s"] >= 0 and r["cpu_s"] >= 0 for r in table["sections"])
    assert table["total_wall_s"] >= table["sections_wall_s"] and table["total_cpu_s"] > 0
    out = capsys.readouterr().out
    assert "wall s" in out and "CPU s" in out and "whole command" in out and str(old_result) in out


def test_atomic_dir_contract(tmp_path):
    target = tmp_path / "r"
    with atomic_dir(target) as staging:
        assert staging.parent == tmp_path and not target.exists()
        (staging / "a.txt").write_text("1")
    assert _tree(target) == {"a.txt": b"1"}
    (target / "manifest.json").write_text("{}")
    (target / "shards").mkdir()
    (target / "shards" / "0.bin").write_text("s")
    with atomic_dir(target, keep=("shards",)) as staging:
        (staging / "b.txt").write_text("2")
    assert _tree(target) == {"b.txt": b"2", "shards/0.bin": b"s"}  # old entries gone, resume state kept
    with pytest.raises(ValueError), atomic_dir(target) as staging:
        (staging / "c.txt").write_text("3")
        raise ValueError
    assert _tree(target) == {"b.txt": b"2", "shards/0.bin": b"s"}
    _no_temporary(tmp_path)
    with pytest.raises(InputError, match="not an underhood result"):
        check_out_dir(tmp_path)  # holds 'r', no manifest: replacing it would delete it


def test_an_interrupted_sharded_job_resumes_and_keeps_its_shards(tmp_path, monkeypatch, capsys):
    patches = importlib.import_module("underhood.activations.patches")
    real, calls = patches.scan, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "dissect"
    argv = ["dissect", "--data", "shapes:96", "--layer", "features.2", "--channels", "0:4", "--k", "4", "--pattern",
            "none", "--shard-size", "24", "--batch-size", "24", "--no-progress", "--out", str(out)]
    monkeypatch.setattr(patches, "scan", interrupted)
    assert main(argv) == 130
    assert sorted(p.name for p in out.iterdir()) == ["shards"]  # resume state only: no half result
    _no_temporary(tmp_path)
    monkeypatch.setattr(patches, "scan", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumed: 2 of 4 shards were already done" in capsys.readouterr().out
    assert (out / "result.safetensors").is_file() and len(list((out / "shards" / "dissect").glob("0*"))) == 4
    _no_temporary(tmp_path)


def test_only_the_images_used_are_generated(tmp_path, monkeypatch):
    data = importlib.import_module("underhood.data")
    splits = importlib.import_module("underhood.data.splits")
    asked = []

    def spy(real):
        def shapes(n, **kw):
            asked.append(n)
            return real(n, **kw)
        return shapes

    monkeypatch.setattr(data, "shapes", spy(data.shapes))
    monkeypatch.setattr(splits, "shapes", spy(splits.shapes))
    assert main(["robustness", "--n", "4", "--eps", "0,8/255", "--steps", "1", "--no-progress", "--out",
                 str(tmp_path / "r")]) == 0
    assert asked == [4]
    whole, first = splits.test_set("shapes"), None
    asked.clear()
    first = splits.test_set("shapes", n=32)
    assert asked == [32] and torch.equal(first.images, whole.images[:32]) and torch.equal(first.labels,
                                                                                            whole.labels[:32])
    assert len(splits.test_set("digits", n=5)) == 5
    with pytest.raises(InputError, match="has 2000 images"):
        splits.test_set("shapes", n=2001)


def test_samples_are_deterministic_and_the_models_see_what_they_show(tmp_path, capsys):
    from underhood.data.samples import CLASSES, samples_names

    assert main(["samples", "--out", str(tmp_path / "a")]) == 0
    assert main(["samples", "--out", str(tmp_path / "b")]) == 0
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    pngs = {k: v for k, v in a.items() if k.endswith(".png")}
    assert set(pngs) == set(samples_names()) and pngs == {k: v for k, v in b.items() if k.endswith(".png")}
    shapes_model, digits_model = underhood.load_model("shapes"), underhood.load_model("digits")
    with torch.no_grad():
        for name in [*CLASSES, "photo", "content"]:
            x = underhood.load_image(tmp_path / "a" / f"{name}.png", size=64)
            assert shapes_model.classes[int(shapes_model(x).argmax())] == ("star" if name in ("photo", "content")
                                                                         else name)
        x = underhood.load_image(tmp_path / "a" / "digit.png", size=32, channels=1)
        assert int(digits_model(x).argmax()) == 3
    style = underhood.load_image(tmp_path / "a" / "style.png", size=64)
    assert style.std(dim=(2, 3)).mean() > 0.15  # strong colours and strokes at the model's scale


def test_images_below_the_models_minimum_are_refused_and_big_enlargements_warned(tmp_path, capsys):
    from PIL import Image

    from underhood.cli.common import load_images

    model = underhood.load_model("shapes")
    for side in (1, 12, 64):
        Image.new("RGB", (side, side), (120, 30, 30)).save(tmp_path / f"{side}.png")
    with pytest.raises(InputError, match=r"1x1 pixels, the model needs at least \d+x\d+"):
        load_images([str(tmp_path / "1.png")], model)
    capsys.readouterr()
    assert load_images([str(tmp_path / "12.png")], model).shape == (1, 3, 64, 64)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "enlarged 5.3x" in warning[0]
    load_images([str(tmp_path / "64.png")], model)
    assert capsys.readouterr().err == ""
    with pytest.raises(InputError, match="--size: the model needs images of at least"):
        load_images([str(tmp_path / "64.png")], model, size=2)

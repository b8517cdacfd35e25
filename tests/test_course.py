"""``underhood course``: the deck catalogue, the pages, resuming, and every experiment in quick mode."""

from __future__ import annotations

import json
import re

import pytest
from markupsafe import Markup

from underhood.cli import main
from underhood.report.base import figure, paragraph
from underhood.report.course import base
from underhood.report.course.base import DECKS, EXPERIMENTS, Lab, discover, experiment, select
from underhood.report.course.pages import build
from underhood.viz.render import figure_to_png, subplots


def _png(value: float) -> bytes:
    fig, ax = subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, value])
    return figure_to_png(fig)


@pytest.fixture
def fake(monkeypatch):
    """Two registered experiments that count their runs (the real ones put aside)."""
    monkeypatch.setattr(base, "EXPERIMENTS", {})
    monkeypatch.setattr(base, "discover", lambda: base.EXPERIMENTS)
    calls = {"a": 0, "b": 0}

    @experiment("fake-a", "First", decks=("map583", "ee559"), lecture="The lecture draws a line.", order=1)
    def a(lab: Lab) -> Markup:
        calls["a"] += 1
        return figure(lab, _png(2.0), "fake-a", f"Settings: quick={lab.quick}.") + paragraph("slope 2")

    @experiment("fake-b", "Second", decks=("ee559",), lecture="Nothing to show on CPU.", order=0)
    def b(lab: Lab) -> None:
        calls["b"] += 1
        return None
    return calls


def test_each_experiment_runs_once_and_every_deck_gets_a_self_contained_page(fake, tmp_path):
    timings = build(["map583", "ee559"], tmp_path, quick=True, progress=False)
    assert fake == {"a": 1, "b": 1}   # fake-a is on two decks, run once
    page = (tmp_path / "ee559.html").read_text()
    assert "The lecture draws a line." in page and "slope 2" in page and "data:image/png;base64," in page
    assert "Second" not in page        # an experiment with nothing to show is left out
    assert not re.search(r'src="https?:', page)
    assert (tmp_path / "figures" / "fake-a.png").is_file()
    index = (tmp_path / "index.html").read_text()
    assert 'href="map583.html"' in index and 'href="ee559.html"' in index
    assert [e["id"] for e in timings["decks"]["ee559"]["experiments"]] == ["fake-b", "fake-a"]


def test_a_rerun_with_the_kept_experiments_resumes_without_running_them(fake, tmp_path):
    keep = tmp_path / "keep"
    build(["map583"], tmp_path / "one", quick=True, progress=False, keep=keep)
    build(["map583"], tmp_path / "two", quick=True, progress=False, keep=keep)
    assert fake["a"] == 1
    assert (tmp_path / "two" / "figures" / "fake-a.png").read_bytes() == (tmp_path / "one" / "figures" /
                                                                         "fake-a.png").read_bytes()
    assert "slope 2" in (tmp_path / "two" / "map583.html").read_text()
    build(["map583"], tmp_path / "three", quick=False, progress=False, keep=keep)  # other settings: run again
    assert fake["a"] == 2


def test_the_catalogue_names_every_deck_and_the_command_line_checks_deck_names(tmp_path, capsys):
    assert select([]) == list(DECKS) == select(["all"])
    assert select(["cmp784", "ee559", "cmp784"]) == ["cmp784", "ee559"]
    out = tmp_path / "course"
    assert main(["course", "--list", "--out", str(out)]) == 0
    listing = capsys.readouterr().out
    assert all(key in listing for key in DECKS)
    assert all(e.id in listing for e in discover().values())
    assert not out.exists()             # --list writes nothing
    assert main(["course", "bogus"]) == 2
    assert "unknown deck 'bogus'" in capsys.readouterr().err


def test_registering_an_experiment_on_an_unknown_deck_is_refused():
    with pytest.raises(ValueError, match="decks"):
        experiment("x", "x", decks=("cs231n",), lecture="")


def test_every_deck_has_experiments_with_unique_figures_and_what_stays_out_is_said():
    registry = discover()
    assert registry is EXPERIMENTS
    for key in DECKS:
        assert [e for e in registry.values() if key in e.decks], f"{key}: no experiment"
    for e in registry.values():
        assert e.lecture.strip() and e.title.strip(), e.id
    assert set(base.OUTSIDE) <= set(DECKS)


def test_the_whole_course_runs_in_quick_mode_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "course"
    assert main(["course", "all", "--quick", "--no-progress", "--out", str(out)]) == 0
    timings = json.loads((out / "timings.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"index.html", *(f"{d}.html" for d in DECKS)}
    for key in DECKS:
        page = (out / f"{key}.html").read_text()
        shown = [e for e in timings["decks"][key]["experiments"] if e["shown"]]
        assert shown, f"{key}: nothing shown"
        assert page.count('<section id="') >= len(shown)
        assert not re.search(r'(src|href)="https?:(?!//)', page)
        assert not re.search(r'<img[^>]+src="(?!data:)', page), "every picture is embedded"
    names = [f for f in timings["figures"]]
    assert len(names) == len(set(names)), "two experiments wrote the same figure"
    assert all((out / f).is_file() for f in names)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_whole_course_at_full_settings_fits_its_budget(tmp_path):
    """Every deck at its full settings: each page within 5 minutes, the course within 15 (2 cores)."""
    out = tmp_path / "course"
    assert main(["course", "all", "--no-progress", "--out", str(out)]) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert timings["wall_s"] < 15 * 60
    assert all(d["wall_s"] < 5 * 60 for d in timings["decks"].values()), timings["decks"]

"""``underhood influence``: the command equals the library, resumes, and refuses bad input in one line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import underhood.cli.influence as cli_influence
from underhood.cli import main
from underhood.cli.common import load_images
from underhood.core.results import load
from underhood.data import from_spec, shapes
from underhood.influence import METHODS, influence, self_influence
from underhood.viz import to_png

TRAIN = "shapes:200"
COMMON = ["--train", TRAIN, "--method", "exact", "--damping", "0.01", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("queries")
    data = shapes(2, seed=987_654_321)
    paths = []
    for i, image in enumerate(data.images):
        path = folder / f"q{i}.png"
        path.write_bytes(to_png(image))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["influence", *images, *COMMON, "--k", "4", "--retrain", "2", "--shard-size", "64", "--out", str(out)])
    assert rc == 0
    return out


def test_the_command_writes_figures_table_result_and_manifest(run, images):
    for name in ("influence-000.png", "influence-001.png", "top.csv", "manifest.json", "result.safetensors"):
        assert (run / name).is_file(), name
    assert (run / "influence-000.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((run / "top.csv").open()))
    assert len(rows) == 2 * (4 + 4)
    first = [r for r in rows if r["query"] == images[0]]
    assert [r["kind"] for r in first] == ["helpful"] * 4 + ["harmful"] * 4
    assert [bool(r["actual_loss_change"]) for r in first] == [True, True, False, False] + [False] * 4
    assert all(float(r["score"]) > 0 for r in first[:4]) and all(float(r["score"]) < 0 for r in first[4:])
    assert all(float(r["actual_loss_change"]) > 0 for r in first[:2])   # the helpful ones, measured, helped


def test_the_command_equals_the_library(run, images, shapes_model):
    result = load(run)
    x = load_images(images, shapes_model)
    with torch.no_grad():
        labels = shapes_model(x).argmax(1)
    train = from_spec(TRAIN, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = influence(shapes_model, train, (x, labels), method="exact", params="classifier", damping=0.01,
                        progress=False, fragility=False)
    assert result.scores.shape == (2, 200) and result.params == ["classifier.weight", "classifier.bias"]
    torch.testing.assert_close(result.scores, ref.scores, rtol=1e-4, atol=1e-7)
    assert torch.equal(result.query_labels, labels)
    assert set(result.fragility) >= {"overlap_0.1x", "overlap_10x"}
    rows = list(csv.DictReader((run / "top.csv").open()))
    assert [int(r["train_index"]) for r in rows[:4]] == ref.helpful(0, 4).tolist()


def test_a_resumed_run_equals_the_first(run, images, capsys):
    first = load(run).scores
    shards = run / "shards" / "influence"
    assert sorted(p.name for p in shards.glob("*.safetensors")) == [f"{i:05d}.safetensors" for i in range(4)]
    for i in (1, 3):
        (shards / f"{i:05d}.safetensors").unlink()
    capsys.readouterr()
    rc = main(["influence", *images, *COMMON, "--k", "4", "--retrain", "0", "--shard-size", "64", "--out", str(run)])
    assert rc == 0
    assert "resumed: 2 of 4 shards were already done" in capsys.readouterr().out
    assert torch.equal(load(run).scores, first)


def test_self_influence_ranks_the_training_set(tmp_path, shapes_model):
    out = tmp_path / "self"
    rc = main(["influence", "--self", "--train", "shapes:120", "--method", "exact", "--k", "4", "--no-progress",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    assert (out / "self_influence.png").is_file()
    rows = list(csv.DictReader((out / "self_influence.csv").open()))
    assert len(rows) == 120 and [int(r["rank"]) for r in rows] == list(range(1, 121))
    ref = self_influence(shapes_model, from_spec("shapes:120", seed=0), method="exact", params="classifier",
                         progress=False)
    assert [int(r["train_index"]) for r in rows[:10]] == ref.top(10).tolist()
    loss_rank = {int(r["train_index"]): int(r["loss_rank"]) for r in rows}
    assert loss_rank[int(ref.losses.argmax())] == 1
    result = load(out)
    torch.testing.assert_close(result.scores, ref.scores, rtol=1e-4, atol=1e-9)


@pytest.mark.slow
def test_validate_tier_one_prints_its_table_and_writes_figures(tmp_path, capsys):
    out = tmp_path / "val"
    rc = main(["influence", "--validate", "--tier", "1", "--n-train", "40", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "| 1 convex LOO | exact: Pearson / Spearman vs retraining |" in text
    for name in ("convex_loo.png", "mislabel.png", "validation.md", "manifest.json"):
        assert (out / name).is_file(), name


def _refused(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line(images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--params" in _refused(["influence", images[0], "--train", "shapes:20", "--params", "nosuch"], capsys)
    assert "--damping" in _refused(["influence", images[0], "--damping=-1"], capsys)
    assert "images" in _refused(["influence"], capsys)
    assert "--self" in _refused(["influence", images[0], "--self"], capsys)
    assert "--tier" in _refused(["influence", images[0], "--tier", "1"], capsys)
    assert "--method" in _refused(["influence", "--self", "--method", "grad_cos"], capsys)
    assert "--cache" in _refused(["influence", images[0], "--cache", "c", "--no-cache"], capsys)
    empty = tmp_path / "empty"
    (empty / "circle").mkdir(parents=True)
    assert "error" in _refused(["influence", images[0], "--train", str(empty)], capsys)
    assert not (tmp_path / "underhood-out" / "influence" / "result.safetensors").exists()


class _Unused(nn.Module):
    """A classifier with a layer its output never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 8))
        self.unused = nn.Linear(4, 4)
        self.classes = list(shapes(1).classes)
        self.input_size = (3, 64, 64)

    def forward(self, x):
        return self.net(x)


def test_parameters_without_gradient_are_refused(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_influence, "model_from", lambda args: _Unused())
    line = _refused(["influence", images[0], "--train", "shapes:20", "--params", "unused", "--out",
                     str(tmp_path / "o")], capsys)
    assert "no gradient" in line and "params" in line
    assert cli_influence.head_name(_Unused()) == "unused"   # the last in module order, without an input
    assert cli_influence.head_name(_Unused(), torch.rand(1, 3, 64, 64)) == "net.1"   # the last one the forward runs


def test_the_method_list_is_the_library_s():
    assert cli_influence.METHODS == METHODS


@pytest.mark.slow
def test_two_gloo_processes_give_the_same_scores_as_one(images, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = ["influence", images[0], "--train", "shapes:120", "--method", "exact", "--damping", "0.01", "--retrain", "0",
            "--shard-size", "30", "--no-cache", "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "underhood", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                          "underhood", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    torch.testing.assert_close(load(tmp_path / "two").scores, load(tmp_path / "one").scores, rtol=0, atol=0)
    assert '"processes": 2' in (tmp_path / "two" / "manifest.json").read_text()

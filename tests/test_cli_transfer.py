"""``underhood probe``: its outputs and result, the train / test sets it draws, one-line errors before any work."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image

import underhood
from underhood.cli import main
from underhood.cli import transfer as cli_transfer
from underhood.core.results import load
from underhood.data import SHAPES_TEST_SIZE


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"data": None, "test_data": None, "seed": 0, **kw})


def test_probe_writes_the_figure_the_table_and_a_result_that_loads(tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--model", "shapes", "--data", "shapes:240", "--test-data", "shapes:160", "--layers",
                 "features.10,pool", "--no-progress", "--out", str(out)]) == 0
    table = json.loads((out / "probe.json").read_text())
    assert [row["layer"] for row in table["layers"]] == ["features.10", "pool"]
    assert (table["n_train"], table["n_test"]) == (240, 160)
    pool = table["layers"][-1]
    # the trained last layer reads the classes off linearly; its random copy does not
    assert pool["accuracy"] >= table["model_accuracy"] - 0.05 and pool["accuracy"] > pool["random"] + 0.3
    assert table["pixels"] < pool["accuracy"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "probe" and {"probe.png", "probe.json"} <= set(manifest["files"])
    result = load(out)
    assert isinstance(result, underhood.transfer.ProbeResult)
    assert result.accuracy == pytest.approx({"pixels": table["pixels"], "features.10": table["layers"][0]["accuracy"],
                                             "pool": pool["accuracy"]})
    assert Image.open(out / "probe.png").size[0] > 400
    printed = capsys.readouterr().out
    assert f"pool: probe accuracy {pool['accuracy']:.1%} (random copy {pool['random']:.1%})" in printed


def test_no_random_skips_the_random_copy(tmp_path):
    out = tmp_path / "probe"
    assert main(["probe", "--data", "shapes:60", "--test-data", "shapes:40", "--layers", "pool", "--no-random",
                 "--no-progress", "--out", str(out)]) == 0
    table = json.loads((out / "probe.json").read_text())
    assert table["layers"][0]["random"] is None and load(out).random == {}


def test_built_in_shapes_train_on_a_training_seed_and_score_on_the_held_out_set():
    model = underhood.load_model("shapes")
    train, test = cli_transfer.probe_data(_args(data="shapes:30"), model)
    held_out = underhood.datasets.test_set("shapes", 30)
    assert len(train) == 30 and len(test) == SHAPES_TEST_SIZE
    assert torch.equal(test.images[:30], held_out.images)
    assert not any(torch.equal(a, b) for a in train.images for b in held_out.images)  # no image in both
    assert torch.equal(train.images, underhood.datasets.shapes(30, seed=cli_transfer.TRAIN_SEED).images)


def test_digits_train_on_the_train_split_and_refuse_the_test_split_twice():
    from underhood.core.errors import InputError

    model = underhood.load_model("digits")
    train, test = cli_transfer.probe_data(_args(), model)  # the digits model's default
    assert (len(train), len(test)) == (len(underhood.datasets.digits(split="train")),
                                       len(underhood.datasets.digits(split="test")))
    with pytest.raises(InputError, match="--data: digits:test is the held-out split"):
        cli_transfer.probe_data(_args(data="digits:test"), model)


def test_a_folder_without_test_data_is_split_in_two_disjoint_halves(tmp_path):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("RGB", (64, 64), tuple(max(0, c - 8 * i) for c in rgb)).save(tmp_path / name / f"{i}.png")
    model = underhood.load_model("shapes")
    train, test = cli_transfer.probe_data(_args(data=str(tmp_path), seed=3), model)
    assert (len(train), len(test)) == (5, 5)
    every = torch.cat([train.images, test.images]).flatten(1)
    assert len(torch.unique(every, dim=0)) == 10  # each image in exactly one half
    again, _ = cli_transfer.probe_data(_args(data=str(tmp_path), seed=3), model)
    assert torch.equal(again.images, train.images)  # the split is seeded


@pytest.mark.parametrize("argv, message", [
    (["--layers", "features.1O"], "layer: no layer named 'features.1O'"),
    (["--data", "digits:test", "--model", "digits"], "--data: digits:test is the held-out split"),
])
def test_bad_input_is_one_line_before_the_probe_runs(argv, message, tmp_path, monkeypatch, capsys):
    def ran(*args, **kwargs):
        raise AssertionError("the probe ran")

    if argv[0] == "--layers":  # a typo fails before the images are made
        monkeypatch.setattr(cli_transfer, "probe_data", ran)
    monkeypatch.setattr("underhood.transfer.probe", ran)
    out = tmp_path / "probe"
    assert main(["probe", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("underhood probe: error:") and message in err[0], err
    assert not out.exists()


# --- underhood transfer -----------------------------------------------------------------------------------------

GRID = ["transfer", "--arch", "shapes", "--data", "shapes:400", "--size", "16", "--seeds", "1", "--depths", "1,5",
        "--epochs", "1", "--finetune-epochs", "1", "--no-progress"]


def test_the_grid_writes_its_figures_table_and_result_and_resumes(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main([*GRID, "--compare-dissimilar", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "transfer.json").read_text())
    assert {r["treatment"] for r in table["runs"]} == {"baseA", "baseB", "reduced", "BnB", "BnB+", "AnB", "AnB+",
                                                       "random"}
    assert len(table["runs"]) == 3 + 2 * 5 and table["statements"] and table["dissimilar"]["comparison"]
    assert table["dissimilar"]["halves"][0]["B"] == ["circle", "ring", "crescent"]
    for line in table["statements"]:
        assert line in printed
    for name in ("transfer.png", "generality.png", "dissimilar.png", "transfer-dissimilar.png"):
        assert Image.open(out / name).size[0] > 600
    result = load(out)
    assert isinstance(result, underhood.transfer.TransferResult) and result.runs == table["runs"]
    assert isinstance(load(out / "dissimilar"), underhood.transfer.TransferResult)
    # a rerun resumes from the kept rows: the same numbers, nothing trained again
    runs = json.loads((out / "shards" / "grid" / "runs.json").read_text())["runs"]
    assert main([*GRID, "--compare-dissimilar", "--out", str(out)]) == 0
    assert json.loads((out / "transfer.json").read_text())["runs"] == table["runs"]
    assert json.loads((out / "shards" / "grid" / "runs.json").read_text())["runs"] == runs


def test_a_users_model_gets_frozen_against_fine_tuned_curves(tmp_path):
    folder = tmp_path / "photos"
    data = underhood.datasets.shapes(48, size=64, seed=4)
    for i, (x, y) in enumerate(zip(data.images, data.labels)):
        kind = folder / ("round" if data.classes[y] in ("circle", "ring", "crescent") else "angular")
        kind.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(kind / f"{i}.png")
    out = tmp_path / "ft"
    assert main(["transfer", "--model", "shapes", "--target-data", str(folder), "--layers", "features.10,pool",
                 "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    table = json.loads((out / "finetune.json").read_text())
    assert table["classes"] == ["angular", "round"] and table["layers"] == ["features.10", "pool"]
    assert {r["treatment"] for r in table["runs"]} == {"frozen", "finetuned", "random"}
    assert isinstance(load(out), underhood.transfer.FinetuneResult)
    assert Image.open(out / "finetune.png").size[0] > 500


@pytest.mark.parametrize("argv, message", [
    (["--arch", "shapes", "--model", "shapes"], "--model: give --arch"),
    (["--model", "shapes"], "--target-data: --model needs"),
    (["--model", "shapes", "--target-data", "shapes:40", "--depths", "1"], "--depths: belongs to the --arch grid"),
    (["--arch", "shapes", "--layers", "features.3"], "--layers: belongs to --model"),
    (["--arch", "shapes", "--split", "circle/star,cross"], "half A has 1 class"),
    (["--arch", "shapes", "--split", "circle,star/star,cross"], "in both halves"),
    (["--arch", "shapes", "--split", "circle,blob/star,cross"], "'blob' in half A is not a class"),
    (["--arch", "shapes", "--depths", "1,7"], "depths: 'shapes' has depths 1..5"),
    (["--arch", "shapes", "--data", "shapes:50"], "each class needs at least 10"),
    (["--arch", "shapes", "--split", "round"], "--split"),
    (["--arch", "shapes", "--reduced", "1.5"], "--reduced"),
    (["--arch", "shapes", "--treatments", "AnC"], "--treatments"),
])
def test_transfer_bad_input_is_one_line(argv, message, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["transfer", *argv, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("underhood transfer: error:") and message in err[0], err
    assert not (out / "transfer.json").exists()

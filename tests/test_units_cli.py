"""Commands of the weights and activations families: outputs equal the library's, errors are one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import underhood
from underhood.activations import (
    Ablation,
    Embedding,
    LayerStatistics,
    Neighbors,
    TopPatches,
    ablate,
    embed,
    neighbors,
    statistics,
    top_patches,
)
from underhood.cli import EXAMPLES
from underhood.cli import main as _main
from underhood.core.results import load
from underhood.data import from_spec
from underhood.viz.render import to_png
from underhood.weights.toy2d import Toy2D

from .conftest import DEVICE, ON_GPU, same

pytestmark = pytest.mark.usefixtures("deterministic")


def main(argv: list[str]) -> int:
    """The command line on DEVICE, where the library side's model is (``--device auto`` would pick CUDA)."""
    return _main([*argv, "--device", DEVICE])


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "star.png"
    path.write_bytes(to_png(underhood.datasets.shapes(1, seed=9).images[0]))
    return str(path)


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_every_command_has_an_example():
    for name in ("filters", "toy2d", "activations", "statistics", "dissect", "embed", "neighbors", "ablate"):
        assert name in EXAMPLES and EXAMPLES[name].startswith(("underhood", "torchrun"))


def test_filters_writes_the_kernels(tmp_path):
    out = tmp_path / "f"
    assert main(["filters", "--layer", "features.7", "--out", str(out)]) == 0
    model = underhood.load_model("shapes", device=DEVICE)
    same(load_file(str(out / "filters.safetensors"))["weight"], model.net.features[7].weight, gpu_atol=0, gpu_rtol=0)
    assert _manifest(out)["layer"] == "features.7" and (out / "filters.png").stat().st_size > 1000


def test_toy2d_writes_strip_gif_and_the_units_parameters(tmp_path):
    out = tmp_path / "t"
    assert main(["toy2d", "--data", "circles", "--hidden", "6", "--steps", "60", "--frames", "3", "--out",
                 str(out)]) == 0
    saved = load(out)
    result = underhood.weights.toy2d("circles", hidden=6, steps=60)
    assert isinstance(saved, Toy2D) and len(saved.snapshots) == len(result.snapshots)
    assert torch.equal(saved.snapshots[-1].weight, result.snapshots[-1].weight)
    assert torch.equal(saved.x, result.x) and saved.final_accuracy == result.final_accuracy
    assert (out / "toy2d.gif").read_bytes()[:6] == b"GIF89a" and (out / "toy2d.png").exists()
    assert set(_manifest(out)["files"]) == {"toy2d.png", "toy2d.gif"} and _manifest(out)["hidden"] == 6


def test_activations_top_and_random_channels(image, tmp_path):
    out = tmp_path / "a"
    assert main(["activations", image, "--layers", "features.3,features.10", "--k", "4", "--random", "--out",
                 str(out)]) == 0
    maps = load_file(str(out / "maps.safetensors"))
    assert maps["features.3"].shape == (1, 16, 32, 32) and (out / "maps.png").exists()


def test_dissect_and_statistics_equal_the_library(tmp_path):
    data = from_spec("shapes:64")
    model = underhood.load_model("shapes", device=DEVICE)
    out = tmp_path / "d"
    assert main(["dissect", "--data", "shapes:64", "--layer", "features.9", "--channels", "0:3", "--k", "4",
                 "--shard-size", "20", "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    saved = load(out)
    direct = top_patches(model, data, "features.9", k=4, channels=range(3), batch_size=16)
    assert isinstance(saved, TopPatches) and saved.field == direct.field and saved.rule == direct.rule
    same(saved.index, direct.index)  # forward passes only, same kernels and shapes: the same ranking on a GPU
    same(saved.patches, direct.patches, atol=1e-8, rtol=1e-5)
    same(saved.patterns, direct.patterns, atol=1e-6, rtol=1e-5)
    assert _manifest(out)["shards"] == 4 and _manifest(out)["files"] == ["dissect.png"]
    out = tmp_path / "s"
    assert main(["statistics", "--data", "shapes:64", "--layer", "features.9", "--shard-size", "30",
                 "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    saved = load(out)
    direct = statistics(model, data, "features.9", batch_size=16)
    assert isinstance(saved, LayerStatistics) and saved.n == direct.n == 64
    same(saved.histogram, direct.histogram)
    same(saved.mean, direct.mean, atol=1e-8, rtol=1e-5)
    same(saved.dead, direct.dead)
    same(saved.edges, direct.edges, atol=1e-8, rtol=1e-5)
    assert (out / "statistics.csv").read_text().startswith("channel,mean,std,active,dead")


def test_embed_neighbors_and_ablate(image, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["embed", "--model", "digits", "--data", "digits", "--layers", "input,fc2", "--method", "pca",
                 "--shard-size", "100", "--out", str(out), "--no-progress"]) == 0
    scores = json.loads((out / "embedding.json").read_text())["layers"]
    assert scores["fc2"]["knn_accuracy"] > scores["input"]["knn_accuracy"]
    saved = load(out)
    digits = underhood.load_model("digits", device=DEVICE)
    direct = embed(digits, from_spec("digits", size=digits.input_size[1:], channels=1), ["input", "fc2"], method="pca")
    assert isinstance(saved, Embedding) and saved.layers == ["input", "fc2"] and saved.coords["fc2"].shape == (360, 2)
    same(saved.coords["fc2"], direct.coords["fc2"], atol=1e-4, rtol=1e-5)
    assert saved.knn_accuracy["fc2"] == pytest.approx(scores["fc2"]["knn_accuracy"])
    assert "features.safetensors" in _manifest(out)["files"]
    shapes = underhood.load_model("shapes", device=DEVICE)
    out = tmp_path / "n"
    assert main(["neighbors", image, "--data", "shapes:40", "--layer", "pool", "--k", "3", "--out", str(out)]) == 0
    found = json.loads((out / "neighbors.json").read_text())["queries"][0]
    assert len(found["pixel"]) == 3 and len(found["feature"]) == 3
    saved = load(out)
    direct = neighbors(shapes, underhood.load_image(image), from_spec("shapes:40"), "pool", k=3)
    assert isinstance(saved, Neighbors)
    same(saved.feature_index, direct.feature_index)
    assert saved.pixel_index[0].tolist() == found["pixel"]
    out = tmp_path / "ab"
    assert main(["ablate", "--data", "shapes:48", "--layer", "features.16", "--channels", "0:4", "--out", str(out),
                 "--no-progress"]) == 0
    saved = load(out)
    direct = ablate(shapes, from_spec("shapes:48"), "features.16", units=[0, 1, 2, 3])
    assert isinstance(saved, Ablation) and saved.single.shape == (4,) and saved.curves["random"].shape == (5,)
    same(saved.single, direct.single, atol=1e-8, rtol=1e-5)
    assert saved.baseline == pytest.approx(direct.baseline, rel=1e-4 if ON_GPU else 1e-12)
    same(saved.order_units["random"], direct.order_units["random"])
    assert set(_manifest(out)["files"]) == {"ablation.png", "ablation.json"}
    assert "baseline accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["filters", "--layer", "classifier"], "not a 2-D convolution"),
    (["filters", "--layer", "features.99"], "no layer named"),
    (["dissect", "--data", "shapes:5", "--layer", "features.3", "--k", "9"], "the dataset has only 5"),
    (["dissect", "--data", "shapes:5", "--layer", "featurs.3", "--k", "2"], "did you mean"),
    (["dissect", "--data", "shapes:5", "--layer", "features.3", "--channels", "a:b"], "--channels"),
    (["statistics", "--data", "nowhere/", "--layer", "features.3"], "neither a built-in dataset"),
    (["embed", "--data", "shapes:0"], "at least one"),
    (["neighbors", "IMAGE", "--data", "shapes:4", "--layer", "pool", "--k", "9"], "only 4"),
])
def test_bad_input_gives_one_line(argv, message, image, tmp_path, capsys):
    argv = [image if a == "IMAGE" else a for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith(f"underhood {argv[0]}: error:")


def test_an_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["dissect", "--data", str(tmp_path / "empty"), "--layer", "features.3", "--out",
                 str(tmp_path / "o")]) == 2
    assert "no class sub-folders" in capsys.readouterr().err


def test_a_flat_image_folder_is_an_unlabelled_dataset(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(underhood.datasets.shapes(3, seed=2).images):
        (folder / f"{i}.png").write_bytes(to_png(img))
    data = from_spec(str(folder), size=32, channels=1)
    assert data.images.shape == (3, 1, 32, 32) and data.info["labelled"] is False
    assert main(["ablate", "--data", str(folder), "--layer", "features.3", "--out", str(tmp_path / "o")]) == 2

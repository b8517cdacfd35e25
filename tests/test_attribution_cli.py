"""`underhood explain` / `underhood evaluate`, the evaluation table and the attribution figures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import underhood
from underhood import attribution as A
from underhood.attribution.evaluate import COLUMNS, Evaluation, cam_layer, evaluate
from underhood.cli import main as _main
from underhood.cli.attribution import method_names
from underhood.core.results import load
from underhood.viz import attribution_figure, metric_table_figure, render_map, strips_figure
from underhood.viz.render import to_png

from .conftest import DEVICE, same


def main(argv: list[str]) -> int:
    """The command line on DEVICE, where the library side's model is (``--device auto`` would pick CUDA)."""
    return _main([*argv, "--device", DEVICE])


@pytest.fixture
def images(tmp_path):
    data = underhood.datasets.shapes(2, seed=4)
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(to_png(data.images[i]))
        paths.append(str(path))
    return paths, data


def test_cli_method_names_are_the_registry():
    from underhood.attribution.registry import REGISTRY

    assert method_names() == list(REGISTRY)


@pytest.mark.usefixtures("deterministic")
def test_explain_writes_figure_maps_and_manifest(images, tmp_path, capsys):
    paths, data = images
    out = tmp_path / "out"
    assert main(["explain", *paths, "--methods", "saliency,gradcam", "--target", "star", "--out", str(out)]) == 0
    maps = load_file(str(out / "maps.safetensors"))
    assert maps["saliency"].shape == (2, 3, 64, 64) and maps["gradcam"].shape == (2, 1, 64, 64)
    model = underhood.load_model("shapes", device=DEVICE)
    x = torch.cat([underhood.load_image(p) for p in paths])
    star = model.classes.index("star")
    same(maps["saliency"], A.saliency(model, x, star), atol=1e-5, rtol=1e-5)  # one backward pass: default on GPU
    with safe_open(str(out / "maps.safetensors"), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    assert meta == {"images": paths, "targets": [star, star], "methods": ["saliency", "gradcam"]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"explain.png", "maps.safetensors"} and manifest["target"] == "star"
    assert (out / "explain.png").stat().st_size > 1000
    assert "explained star" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--methods", "gradcan"], "did you mean gradcam"),
    (["--methods", ","], "at least one method"),
    (["--target", "12"], "out of range"),
    (["--target", "dog"], "neither 'auto'"),
    (["--methods", "gradcam", "--layer", "classifier"], "spatial"),
    (["--methods", "gradcam", "--layer", "features.99"], "no layer named"),
])
def test_explain_bad_input_gives_one_line(argv, message, images, tmp_path, capsys):
    paths, _ = images
    assert main(["explain", paths[0], "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("underhood explain: error:")


def test_explain_rejects_a_non_image(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["explain", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_evaluate_command_writes_the_table(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--methods", "saliency,gradcam", "--n", "2", "--steps", "4", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "pointing" in text and "Grad" not in text.splitlines()[0]
    result = json.loads((out / "evaluation.json").read_text())
    assert set(result["values"]) == {"saliency", "gradcam"}
    assert (out / "evaluation.png").stat().st_size > 1000 and (out / "curves.png").stat().st_size > 1000
    assert len(result["curves"]["gradcam"]["deletion"]) == 5 and "model_ssim" in result["values"]["gradcam"]
    assert (out / "evaluation.csv").read_text().startswith("method,pointing,energy,deletion,insertion")
    saved = load(out)
    assert isinstance(saved, Evaluation) and saved.values == result["values"] and saved.curves == result["curves"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "evaluate" and manifest["n"] == 2 and manifest["steps"] == 4
    assert set(manifest["files"]) == {"evaluation.txt", "evaluation.json", "evaluation.csv", "evaluation.png",
                                      "curves.png"}


def test_evaluation_values_follow_the_metrics(shapes_model):
    data = underhood.datasets.shapes(3, seed=8)
    ev = evaluate(shapes_model, data, ["gradcam"], n=3, steps=5)
    maps = A.gradcam(shapes_model, data.images, layer=cam_layer(shapes_model))
    row = ev.values["gradcam"]
    assert row["pointing"] == pytest.approx(float(A.metrics.pointing_game(maps, data.masks).float().mean()))
    assert row["energy"] == pytest.approx(float(A.metrics.energy_in_mask(maps, data.masks).mean()), abs=1e-6)
    assert row["deletion"] == pytest.approx(float(A.metrics.deletion_auc(shapes_model, data.images, maps,
                                                                          steps=5).mean()), abs=1e-6)
    assert -1 <= row["model_rand"] <= 1 and set(ev.columns) <= set(COLUMNS)
    assert "gradcam" in ev.table()


def test_cam_layer_is_the_feature_map_the_head_averages(shapes_model):
    assert cam_layer(shapes_model) in ("features.17", "features")
    assert cam_layer(underhood.load_model("digits", device="cpu")) is None   # LeNet has an MLP head


def test_renderings_follow_each_papers_convention():
    torch.manual_seed(0)
    grad = torch.randn(3, 8, 8)
    image = torch.rand(3, 8, 8)
    mag = render_map(grad, "magnitude")
    assert mag.shape == (8, 8, 3) and mag.min() >= 0 and mag.max() <= 1
    assert (mag[..., 0] == mag[..., 1]).all()        # grey: max over channels of |grad|
    rgb = render_map(torch.zeros(3, 8, 8), "rgb")
    assert abs(rgb - 0.5).max() < 1e-6               # zero signal is mid-grey
    for style in ("overlay", "diverging"):
        out = render_map(grad[:1], style, image)
        assert out.shape == (8, 8, 3) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="style"):
        render_map(grad, "sparkles")


def test_figures_render(shapes_small):
    x = shapes_small.images[:2]
    maps = {"saliency": torch.randn(2, 3, 64, 64), "gradcam": torch.rand(2, 1, 64, 64)}
    for fig in (attribution_figure(x, maps, row_titles=["a", "b"]),
                strips_figure(x[0], {"saliency": [m for m in maps["saliency"]]}, ["trained", "+ fc"]),
                metric_table_figure({"saliency": {"energy": 0.3}, "gradcam": {"energy": 0.5}}, {"energy": "up"})):
        assert fig.get_axes()


def test_randomized_copy_is_the_end_of_the_cascade(shapes_model, shapes_small):
    x = shapes_small.images[:2]
    before = {k: v.clone() for k, v in shapes_model.state_dict().items()}
    twin = A.metrics.randomized_copy(shapes_model, seed=3)
    cascade = A.metrics.model_randomization(shapes_model, x, "saliency", seed=3)
    assert torch.allclose(A.saliency(twin, x, shapes_model(x).argmax(1)), cascade.maps[-1], atol=1e-5)
    for (name, p), q in zip(shapes_model.named_parameters(), twin.parameters()):
        assert not torch.equal(p, q) or p.numel() == 0 or torch.all(p == 1) or torch.all(p == 0), name
    assert all(torch.equal(v, shapes_model.state_dict()[k]) for k, v in before.items())


def test_presets_scale_occlusion_with_the_image_and_respect_overrides(shapes_model):
    from underhood.attribution.evaluate import method_options

    assert method_options(shapes_model, ["occlusion"])["occlusion"] == {"window": 8, "stride": 4}
    big = method_options(shapes_model, ["occlusion"], full=True, size=(224, 224))["occlusion"]
    assert big == {"window": 28, "stride": 7}
    opts = method_options(shapes_model, ["gradcam", "lime"], overrides={"lime": {"n_samples": 9}})
    assert opts["gradcam"]["layer"] == cam_layer(shapes_model) and opts["lime"]["n_samples"] == 9

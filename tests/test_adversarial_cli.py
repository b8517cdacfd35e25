"""Commands of the adversarial family: outputs equal the library's, errors are one line."""

from __future__ import annotations

import json

import pytest
import torch

import underhood
from underhood import adversarial as adv
from underhood.adversarial.registry import names
from underhood.cli import EXAMPLES
from underhood.cli import main as _main
from underhood.cli.adversarial import PER_IMAGE, SWEEPABLE, eps_grid
from underhood.core.errors import InputError
from underhood.core.results import Collection, load

from .adversarial_models import one_thread  # noqa: F401
from .conftest import DEVICE, ON_GPU, same

pytestmark = pytest.mark.usefixtures("deterministic")
ITERATED = 1e-3
"""GPU tolerance of iterated attacks, in pixels (see conftest.same): a quarter of one 8-bit grey level."""


def main(argv: list[str]) -> int:
    """The command line on DEVICE, where the library side's model is (``--device auto`` would pick CUDA)."""
    return _main([*argv, "--device", DEVICE])


@pytest.fixture(scope="module")
def model():
    return underhood.load_model("shapes", device=DEVICE)


@pytest.fixture
def images(shape_pngs):
    return shape_pngs


def _loaded(paths):
    from underhood.data.io import load_image

    return torch.cat([load_image(p, size=(64, 64)) for p in paths])


def _error(capsys, argv) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_commands_have_an_example_and_help(capsys):
    for name in ("attack", "robustness"):
        assert EXAMPLES[name].startswith("underhood " + name)
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and "--out" in text and "--eps" in text


def test_the_static_names_for_help_are_the_registrys():
    assert PER_IMAGE == names(per_image=True) and SWEEPABLE == names(sweepable=True)


def test_attack_equals_the_library_and_writes_the_figure(tmp_path, images, model, capsys):
    out = tmp_path / "a"
    assert main(["attack", *images, "--method", "pgd", "--eps", "4/255", "--steps", "3", "--out", str(out)]) == 0
    saved = load(out)
    ref = adv.pgd(model, _loaded(images), eps=4 / 255, steps=3, seed=0)
    assert isinstance(saved, adv.AttackResult)
    same(saved.adversarial, ref.adversarial, atol=1e-5, rtol=1.3e-6, gpu_atol=ITERATED)
    same(saved.perturbation, ref.perturbation, atol=1e-5, rtol=1.3e-6, gpu_atol=ITERATED)
    same(saved.success, ref.success)
    same(saved.predicted, ref.predicted)
    assert saved.info["eps"] == pytest.approx(4 / 255)
    summary = json.loads((out / "attack.json").read_text())
    assert summary["method"] == "pgd" and len(summary["images"]) == 2
    assert summary["eps"] == pytest.approx(4 / 255)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "attack" and manifest["model"] == "shapes" and manifest["steps"] == 3
    assert manifest["result"] == "AttackResult" and manifest["manifest_version"] == 1
    assert {"attack.png", "attack.json"} <= set(manifest["files"])
    assert all((out / f).is_file() for f in manifest["files"]) and (out / "result.safetensors").is_file()
    assert not (out / "attack.safetensors").exists()
    assert (out / "attack.png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "fooled" in text and "L-inf" in text


def test_targeted_attack_by_class_name(tmp_path, images, model):
    out = tmp_path / "t"
    x = _loaded(images).to(DEVICE)
    clean = model(x).argmax(1)
    target = int((clean[0] + 1) % len(model.classes))
    if target == int(clean[1]):
        target = (target + 1) % len(model.classes)
    name = model.classes[target]
    assert main(["attack", *images, "--method", "fgsm", "--eps", "16/255", "--target", name, "--out", str(out)]) == 0
    saved = load(out)
    ref = adv.fgsm(model, x, eps=16 / 255, target=target)
    same(saved.adversarial, ref.adversarial, atol=1e-5, rtol=1.3e-6)
    same(saved.target, ref.target)


def test_minimal_attack_and_history(tmp_path, images):
    out = tmp_path / "g"
    assert main(["attack", images[0], "--method", "gradient_ascent", "--steps", "4", "--out", str(out)]) == 0
    saved = load(out)
    assert saved.history.shape == (5, 1)
    assert "eps" not in json.loads((out / "manifest.json").read_text())


def test_one_pixel_from_the_command_line(tmp_path, images, model):
    out = tmp_path / "p"
    assert main(["attack", images[0], "--method", "one_pixel", "--pixels", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    saved = load(out)
    ref = adv.one_pixel(model, _loaded(images[:1]), pixels=2, iterations=2)
    same(saved.adversarial, ref.adversarial, atol=1e-5, rtol=1.3e-6, gpu_atol=ITERATED)
    changed = (saved.perturbation[0].abs().sum(0) > 0).sum()
    assert changed <= 2


def test_attack_errors_are_one_line(capsys, images):
    assert "--method: unknown per-image attack 'pgdd'; did you mean pgd?" in _error(
        capsys, ["attack", images[0], "--method", "pgdd"])
    assert "--method: unknown per-image attack 'universal'" in _error(capsys, ["attack", images[0], "--method",
                                                                              "universal"])
    assert "--eps: '2'" in _error(capsys, ["attack", images[0], "--eps", "2"])
    assert "--eps: deepfool takes no budget" in _error(capsys, ["attack", images[0], "--method", "deepfool",
                                                                 "--eps", "8/255"])
    assert "--eps" in _error(capsys, ["attack", images[0], "--eps", "eight"])
    line = _error(capsys, ["attack", images[0], "--method", "noise", "--target", "0"])
    assert line.startswith("underhood attack: error: --target") and "untargeted" in line
    assert "gradient_ascent, fgsm, pgd, cw, lbfgs or one_pixel" in line
    assert "--label: 3 labels for 1 images" in _error(capsys, ["attack", images[0], "--label", "0,1,2"])
    assert "--target: 'dragon' is neither an index nor a class name" in _error(capsys, ["attack", images[0],
                                                                                       "--target", "dragon"])
    assert "--steps" in _error(capsys, ["attack", images[0], "--steps", "0"])
    line = _error(capsys, ["attack", images[0], "--method", "fgsm", "--norm", "l2"])
    assert "--norm: fgsm works in the linf norm only" in line and "pgd, noise or deepfool" in line
    assert "--norm: gradient_ascent bounds no norm" in _error(capsys, ["attack", images[0], "--method",
                                                                        "gradient_ascent", "--norm", "linf"])


def test_target_equal_to_the_class_is_refused(capsys, images, model):
    pred = int(model(_loaded(images[:1]).to(DEVICE)).argmax(1))
    line = _error(capsys, ["attack", images[0], "--method", "pgd", "--target", str(pred)])
    assert "--target:" in line and "already the model's prediction" in line
    line = _error(capsys, ["attack", images[0], "--method", "pgd", "--label", "1", "--target", "1"])
    assert "already the true class" in line


def test_robustness_equals_the_library(tmp_path, model):
    out = tmp_path / "r"
    assert main(["robustness", "--model", "shapes", "--n", "8", "--eps", "0,8/255", "--steps", "2",
                 "--no-progress", "--out", str(out)]) == 0
    data = underhood.datasets.from_spec("shapes:2000", size=(64, 64), channels=3)[:8]
    ref = adv.robustness_curve(model, data, "pgd", [0, 8 / 255], steps=2, norm="linf")
    summary = json.loads((out / "robustness.json").read_text())["shapes"]
    assert summary["accuracy"] == pytest.approx(ref.accuracy.tolist())  # counts of 8 images: equal on any device
    assert summary["clean_accuracy"] == pytest.approx(ref.clean_accuracy)
    saved = load(out)
    assert isinstance(saved, Collection) and list(saved.items) == ["shapes"]
    saved = saved["shapes"]
    assert isinstance(saved, adv.RobustnessCurve) and saved.attack == "pgd" and saved.norm == "linf"
    same(saved.accuracy, ref.accuracy)
    same(saved.eps, ref.eps, atol=1e-8, rtol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "robustness" and manifest["eps"] == pytest.approx([0, 8 / 255])
    assert set(manifest["files"]) == {"robustness.png", "robustness.json"} and (out / "robustness.png").is_file()


def test_robustness_of_two_models_and_a_minimal_norm_curve(tmp_path):
    out = tmp_path / "m"
    assert main(["robustness", "--model", "shapes,shapes-resnet", "--attack", "deepfool", "--n", "4", "--steps",
                 "3", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "robustness.json").read_text())
    assert set(summary) == {"shapes", "shapes-resnet"} and summary["shapes"]["norm"] == "l2"
    assert (out / "norms.png").is_file()
    saved = load(out)
    assert isinstance(saved, Collection) and set(saved.items) == {"shapes", "shapes-resnet"}
    data = underhood.datasets.from_spec("shapes:2000", size=(64, 64), channels=3)[:4]
    ref = adv.robustness_curve(underhood.load_model("shapes-resnet", device=DEVICE), data, "deepfool", steps=3)
    curve = saved["shapes-resnet"]
    assert curve.norm == "l2"
    same(curve.norms, ref.norms, atol=1e-8, rtol=1e-5, gpu_atol=ITERATED)
    same(curve.accuracy, ref.accuracy)
    assert summary["shapes-resnet"]["median_norm"] == pytest.approx(ref.median_norm(), rel=1e-4 if ON_GPU else 1e-6)


def test_robustness_errors_are_one_line(capsys):
    assert "--eps: expected start:stop:count" in _error(capsys, ["robustness", "--eps", "0:x:3"])
    assert "--eps: '3' is above 1" in _error(capsys, ["robustness", "--eps", "0,3"])
    assert "--n" in _error(capsys, ["robustness", "--n", "0"])
    assert "fgsm works in the linf norm only" in _error(capsys, ["robustness", "--attack", "fgsm", "--norm", "l2",
                                                                 "--eps", "0,1", "--n", "2"])


def test_eps_grid():
    assert eps_grid("0:16/255:9") == pytest.approx([2 * i / 255 for i in range(9)])
    assert eps_grid("0,4/255") == pytest.approx([0, 4 / 255])
    assert eps_grid("0:1:3", "l2") == pytest.approx([0, 0.5, 1])
    assert eps_grid("0.5,2", "l2") == pytest.approx([0.5, 2.0])
    for bad in ("1:0:3", "0:1:1", "0:1", ""):
        with pytest.raises(InputError, match="--eps"):
            eps_grid(bad)

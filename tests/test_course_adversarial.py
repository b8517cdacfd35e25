"""The lectures' adversarial examples: EE-559's gradient-ascent preset and its class-per-iteration table, the
random-direction control on the lecture's sphere, the relative norm in the figures, and the course experiments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood.adversarial as adv
from underhood.core.errors import InputError

from .adversarial_models import one_thread  # noqa: F401  (an autouse fixture)


def tiny(classes: int = 4, seed: int = 0) -> nn.Module:
    """A small ReLU CNN on ``[N, 3, 8, 8]`` images."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, classes)).eval()


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return 0.2 + 0.6 * torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- EE-559's gradient ascent


def test_the_lecture_preset_is_sgd_lr_0_1_for_15_iterations_and_equals_the_explicit_options():
    assert adv.GRADIENT_ASCENT_PRESETS["lecture"] == {"steps": 15, "lr": 0.1, "optimizer": "sgd"}
    model, x = tiny(), images()
    preset = adv.gradient_ascent(model, x, preset="lecture")
    explicit = adv.gradient_ascent(model, x, steps=15, lr=0.1, optimizer="sgd")
    assert torch.equal(preset.adversarial, explicit.adversarial) and torch.equal(preset.history, explicit.history)
    assert preset.history.shape == (16, 3) and preset.info["preset"] == "lecture" and "preset" not in explicit.info
    # an option given in the call wins over the preset's; the defaults are unchanged
    assert adv.gradient_ascent_options("lecture", steps=4) == {"steps": 4, "lr": 0.1, "optimizer": "sgd"}
    assert adv.gradient_ascent_options() == {"steps": 15, "lr": 0.1, "optimizer": "sgd"}
    assert adv.gradient_ascent(model, x, preset="lecture", steps=4).history.shape == (5, 3)
    with pytest.raises(InputError, match="^preset: unknown gradient ascent preset 'ee999'"):
        adv.gradient_ascent(model, x, preset="ee999")


def test_the_recorded_classes_are_the_models_predictions_on_the_iterates():
    """Row k of the history is the class of x_k, the image after k SGD steps (an independent run stopped there)."""
    model, x = tiny(seed=1), images(seed=2)
    lr = 20.0  # large enough for the classes to change within a few steps on this small model
    full = adv.gradient_ascent(model, x, steps=6, lr=lr)
    with torch.no_grad():
        assert torch.equal(full.history[0], model(x).argmax(1))
    for k in range(1, 7):
        iterate = adv.gradient_ascent(model, x, steps=k, lr=lr).adversarial
        with torch.no_grad():
            assert torch.equal(full.history[k], model(iterate).argmax(1)), k
    assert (full.history != full.history[0]).any(), "the test needs some class to change"


def test_the_class_per_iteration_table_reads_the_history():
    model, x = tiny(), images()
    r = adv.gradient_ascent(model, x, steps=3, lr=5.0)
    head, rows = r.history_table(classes=["a", "b", "c", "d"])
    assert head == ["iteration", "image 1", "image 2", "image 3"] and len(rows) == 4
    assert [row[0] for row in rows] == [0, 1, 2, 3]
    assert [[("a", "b", "c", "d").index(c) for c in row[1:]] for row in rows] == r.history.tolist()
    assert r.history_table()[1][0][1:] == r.history[0].tolist()
    with pytest.raises(InputError, match="^history_table: fgsm records no per-iteration history"):
        adv.fgsm(model, x, eps=0.1).history_table()


# ---------------------------------------------------------------------------- the random-direction control


def test_the_drawn_points_lie_on_the_sphere_of_twice_the_adversarial_norm():
    model, x = tiny(), images(4)
    delta = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 0.03
    adversarial = x + delta
    c = adv.random_control(model, x, adversarial, n=150, factor=2.0, seed=3, clip=False, batch_size=64)
    oracle = 2 * delta.flatten(1).norm(dim=1)
    assert torch.allclose(c.radius, oracle, rtol=1e-5)
    assert torch.allclose(c.clipped, oracle, rtol=1e-4)  # unclipped: every draw exactly on the sphere
    u = adv.directions(150, (3, 8, 8), seed=3)
    assert u.shape == (150, 3, 8, 8) and torch.allclose(u.flatten(1).norm(dim=1), torch.ones(150), atol=1e-5)
    # slow reference: classify every draw one image at a time
    with torch.no_grad():
        ref = model(x).argmax(1)
        counts = [int((model(x[i] + oracle[i] * u).argmax(1) != ref[i]).sum()) for i in range(len(x))]
    assert c.counts.tolist() == counts and c.info["clip"] is False
    # the default clips to the box: the draws are no longer than the sphere's radius
    boxed = adv.random_control(model, x, adversarial, n=150, seed=3, batch_size=64)
    assert (boxed.clipped <= boxed.radius + 1e-5).all() and boxed.info == {"n": 150, "factor": 2.0, "seed": 3,
                                                                             "clip": True}


# ---------------------------------------------------------------------------- the relative norm


def test_the_relative_norm_is_the_perturbations_share_of_the_image_norm():
    x = torch.zeros(2, 1, 2, 2)
    x[0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]]) / 10  # ||x|| = 0.5
    x[1] = 0.5  # ||x|| = 1
    adversarial = x.clone()
    adversarial[0, 0, 0, 1] += 0.05  # ||delta|| = 0.05 -> 10%
    adversarial[1] += torch.tensor([[0.01, -0.01], [0.01, -0.01]])  # ||delta|| = 0.02 -> 2%
    rel = adv.relative_norm(x, adversarial)
    assert torch.allclose(rel, torch.tensor([0.10, 0.02]), atol=1e-6)
    model = tiny(classes=2)
    r = adv.fgsm(nn.Sequential(nn.Upsample(size=(8, 8)), nn.Conv2d(1, 3, 1), model).eval(), x.expand(2, 1, 2, 2) * 1,
                 eps=0.01)
    expected = r.perturbation.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert torch.allclose(r.relative_norm, expected, atol=1e-6)
    assert torch.allclose(adv.relative_norm(x, r), expected, atol=1e-6)
    with pytest.raises(InputError, match="^adversarial: expected a tensor shaped like the inputs"):
        adv.relative_norm(x, x[:1])


def test_the_three_panels_show_the_relative_norm_beside_linf_and_l2():
    from underhood.viz.adversarial import attack_figure

    model, x = tiny(), images(2)
    r = adv.fgsm(model, x, eps=4 / 255)
    fig = attack_figure(x, r)
    titles = [ax.get_title() for ax in fig.axes[1::3]]
    for title, rel, linf in zip(titles, r.relative_norm.tolist(), r.norms["linf"].tolist()):
        assert f"‖x − x̌‖ / ‖x‖ = {rel:.2%}" in title and f"L∞ {linf * 255:.1f}/255" in title
    plain = attack_figure(x, r, relative=False)
    assert all("‖x" not in ax.get_title() for ax in plain.axes)
    assert plain.get_figheight() < fig.get_figheight()


# ---------------------------------------------------------------------------- the course experiments


def test_the_lecture_experiments_run_quick_and_state_their_numbers(tmp_path):
    from underhood.report.course.base import run_experiments

    ids = ["ee559-gradient-ascent", "ee559-predicted-classes", "adversarial-szegedy"]
    out = run_experiments(ids, tmp_path, quick=True, seed=0)
    assert set(out) == set(ids) and all(out[i] for i in ids)
    assert "preset=&#39;lecture&#39;" in out["ee559-gradient-ascent"] and "%" in out["ee559-gradient-ascent"]
    assert out["ee559-predicted-classes"].count("<tr>") == 1 + 16  # header and iterations 0..15
    assert (tmp_path / "figures" / "ee559-gradient-ascent.png").exists()
    assert (tmp_path / "figures" / "adversarial-szegedy.png").exists()


@pytest.mark.slow
def test_every_adversarial_experiment_runs_quick(tmp_path):
    from underhood.report.course.base import discover, run_experiments

    ids = [k for k in discover() if k.startswith("adversarial-") or k in ("ee559-random-control",)]
    out = run_experiments(ids, tmp_path, quick=True, seed=0)
    assert all(out[i] for i in ids) and not any("nan" in str(out[i]) for i in ids)

"""adversarial, the result protocol and the registry: every result has scalars, a text summary, a short repr
and a figure where one helps; results save and load; the registry's flags drive the evaluation."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import underhood.adversarial as adv
from underhood.adversarial.registry import Attack
from underhood.core.errors import InputError
from underhood.core.results import Result, load

from .adversarial_models import one_thread, tiny, tiny_inputs  # noqa: F401  (an autouse fixture)
from .conftest import check_protocol

SRC = Path(__file__).resolve().parents[1] / "src" / "underhood" / "adversarial"


@pytest.fixture(scope="module")
def results():
    """One small result of every class of the family (a few forward passes each)."""
    model, other, x = tiny(3, seed=0), tiny(3, seed=1), tiny_inputs(4)
    with torch.no_grad():
        y = model(x).argmax(1)
    r = adv.pgd(model, x, y, eps=0.1, steps=2)
    return {
        "AttackResult": r,
        "ControlResult": adv.random_control(model, x, r, n=8, batch_size=4),
        "LinearDemo": adv.lecture_example(),
        "RobustnessCurve": adv.robustness_curve(model, (x, y), "pgd", [0, 0.1], steps=2, batch_size=4),
        "TransferMatrix": adv.transfer_matrix({"a": model, "b": other}, (x, y), "fgsm", eps=0.1, batch_size=4),
        "UniversalResult": adv.universal(model, x, eps=0.1, passes=1, batch_size=4),
        "PatchResult": adv.patch(model, x, target=int((y[0] + 1) % 3), size=0.5, steps=2, batch_size=2),
        "SubstituteResult": adv.substitute(model, x, rounds=1, epochs=1, batch_size=4, eps=0.1),
        "LogitPath": adv.logit_path(model, x, y, eps_max=0.1, points=5),
    }


def test_every_result_of_the_family_is_a_result():
    classes = {adv.AttackResult, adv.ControlResult, adv.LinearDemo, adv.RobustnessCurve, adv.TransferMatrix,
               adv.UniversalResult, adv.PatchResult, adv.SubstituteResult, adv.LogitPath}
    assert all(issubclass(c, Result) for c in classes)
    found = {node.name for path in SRC.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ClassDef) and any(getattr(d, "id", getattr(getattr(d, "func", None), "id", ""))
                                                       == "dataclass" for d in node.decorator_list)}
    assert found - {c.__name__ for c in classes} <= {"Problem", "Attack"}  # internal records, not results


@pytest.mark.parametrize("name", ["AttackResult", "ControlResult", "LinearDemo", "RobustnessCurve", "TransferMatrix",
                                  "UniversalResult", "PatchResult", "SubstituteResult", "LogitPath"])
def test_repr_is_short_and_summary_is_a_text_table(results, name):
    r = results[name]
    check_protocol(r, name)
    assert r.scalars() and r.summary().splitlines()[0] == name and len(r.summary().splitlines()) == len(r.scalars()) + 1


def test_attack_result_scalars_are_the_old_summary(results):
    r = results["AttackResult"]
    s = r.scalars()
    assert list(s) == ["method", "n", "targeted", "success_rate", "accuracy", "median_linf", "median_l2", "eps",
                       "norm", "seed"]
    assert s["method"] == "pgd" and s["n"] == 4 and s["eps"] == 0.1 and s["accuracy"] == pytest.approx(r.accuracy)
    with pytest.warns(DeprecationWarning, match="scalars"):
        assert r.summary()["success_rate"] == r.success_rate


def test_a_minimal_curve_reports_its_median_norm():
    model, x = tiny(3), tiny_inputs(4)
    curve = adv.robustness_curve(model, x, "deepfool", batch_size=4)
    assert curve.scalars()["median_norm"] == pytest.approx(float(curve.norms.median()))
    assert math.isnan(adv.RobustnessCurve(torch.zeros(1), torch.ones(1), 1.0, "pgd", "linf").median_norm())


def test_save_and_load_round_trip_an_attack_result(results, tmp_path):
    r = results["AttackResult"]
    back = load(r.save(tmp_path / "attack"))
    assert isinstance(back, adv.AttackResult) and back.scalars() == r.scalars()
    for key in ("adversarial", "perturbation", "success", "labels", "predicted", "confidence"):
        assert torch.equal(getattr(back, key), getattr(r, key)), key
    assert torch.equal(back.norms["l2"], r.norms["l2"]) and back.target is None and back.info == r.info


def test_save_and_load_a_result_holding_a_model(results, tmp_path):
    r = results["SubstituteResult"]
    back = load(r.save(tmp_path / "substitute"))
    assert isinstance(back, adv.SubstituteResult) and isinstance(back.result, adv.AttackResult)
    state = r.substitute.state_dict()
    assert back.substitute.keys() == state.keys() and all(torch.equal(back.substitute[k], state[k]) for k in state)
    assert torch.equal(back.inputs, r.inputs) and back.history == r.history and back.transfer_rate == r.transfer_rate


@pytest.mark.parametrize("name", ["AttackResult", "RobustnessCurve", "TransferMatrix", "UniversalResult",
                                  "PatchResult", "SubstituteResult"])
def test_figures_draw(results, name):
    import matplotlib.pyplot as plt

    fig = results[name].figure()
    assert fig.axes
    plt.close(fig)
    assert "<img" in results[name]._repr_html_()


def test_fooling_images_draw_as_a_grid_and_the_lecture_vector_has_no_picture():
    import matplotlib.pyplot as plt

    r = adv.fooling_images(tiny(3), [0, 1], method="gradient", size=4, channels=1, steps=2)
    fig = r.figure()
    assert len([ax for ax in fig.axes if ax.get_visible()]) >= 2
    plt.close(fig)
    with pytest.raises(InputError, match="^figure: this demonstration has no image shape"):
        adv.lecture_example().figure()


# ---------------------------------------------------------------------------- the registry


def test_the_registry_keeps_the_public_tables():
    assert list(adv.ATTACKS) == ["gradient_ascent", "fgsm", "pgd", "noise", "deepfool", "cw", "lbfgs", "one_pixel"]
    assert adv.MINIMAL == ("deepfool", "cw", "lbfgs") and adv.get("pgd") is adv.pgd
    assert all(adv.entry(name).fn is fn for name, fn in adv.ATTACKS.items())
    assert adv.names(per_image=False) == ("universal", "patch", "substitute", "fooling_images")
    assert adv.names(sweepable=True) == ("fgsm", "pgd", "noise", "deepfool", "cw", "lbfgs")
    assert adv.names(per_image=True, targeted=False) == ("noise", "deepfool")
    with pytest.raises(TypeError, match="no flag 'fast'"):
        adv.names(fast=True)


def test_flags_match_the_signatures():
    import inspect

    for spec in adv.REGISTRY.values():
        params = inspect.signature(spec.fn).parameters
        assert ("eps" in params) == spec.budget, spec.name
        assert ("target" in params) == spec.targeted, spec.name
        assert ("norm" in params) == spec.norm_option, spec.name
        if spec.per_image:
            assert list(params)[:3] == ["model", "inputs", "labels"] and "seed" in params, spec.name


def test_the_evaluation_reads_the_flags_not_the_names():
    model, x = tiny(3), tiny_inputs(4)
    # an entry declares a user's attack minimal: one run gives the whole curve, in its one norm
    mine = Attack("mine", adv.deepfool, minimal=True, norms=("l2",))
    curve = adv.robustness_curve(model, x, mine, batch_size=4)
    assert curve.attack == "mine" and curve.norms is not None and curve.norm == "l2"
    with pytest.raises(InputError, match="^norm: mine works in the l2 norm only, got 'linf'"):
        adv.robustness_curve(model, x, mine, norm="linf", batch_size=4)
    with pytest.raises(InputError, match="^attack: unbounded has no budget to sweep"):
        adv.robustness_curve(model, x, Attack("unbounded", adv.gradient_ascent), [0.1], batch_size=4)
    with pytest.raises(InputError, match="^attack: universal is a dataset-level attack"):
        adv.transfer_matrix([model], x, "universal")
    # a plain callable is a budgeted attack; the norm reaches it only when given
    seen = []

    def custom(model, inputs, labels=None, *, eps, seed=0, **options):
        seen.append(options)
        return adv.noise(model, inputs, labels, eps=eps, seed=seed, **options)

    assert adv.entry(custom).budget and adv.entry(custom).norms is None
    adv.robustness_curve(model, x, custom, [0.1], batch_size=4)
    adv.robustness_curve(model, x, custom, [0.1], norm="l2", batch_size=4)
    assert seen == [{}, {"norm": "l2"}]

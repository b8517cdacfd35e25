"""``core.checks.with_preset``: the options a method runs with (call, then preset, then defaults), shared by
SmoothGrad's and gradient ascent's presets."""

from __future__ import annotations

import pytest

from underhood.adversarial.gradient import GRADIENT_ASCENT_PRESETS, gradient_ascent_options
from underhood.attribution.gradient import SMOOTHGRAD_DEFAULTS, SMOOTHGRAD_PRESETS, smoothgrad_options
from underhood.core.checks import with_preset
from underhood.core.errors import InputError

DEFAULTS = {"a": 1, "b": 2, "c": 3}
PRESETS = {"p": {"a": 10, "b": 20}}


@pytest.mark.parametrize("call", [{}, {"a": 5}, {"b": None}, {"a": 0, "b": 0, "c": 0}])
@pytest.mark.parametrize("preset", [None, "p"])
def test_each_option_comes_from_the_call_else_the_preset_else_the_defaults(call, preset):
    got = with_preset("M", preset, DEFAULTS, PRESETS, call)
    for k in DEFAULTS:
        expected = call.get(k) if call.get(k) is not None else PRESETS.get(preset or "", {}).get(k, DEFAULTS[k])
        assert got[k] == expected, k
    assert DEFAULTS == {"a": 1, "b": 2, "c": 3} and PRESETS == {"p": {"a": 10, "b": 20}}   # nothing mutated


def test_unknown_presets_and_options_are_one_line_errors_naming_the_method():
    with pytest.raises(InputError, match="^preset: unknown M preset 'q'; choose one of p or leave it out$"):
        with_preset("M", "q", DEFAULTS, PRESETS, {})
    with pytest.raises(InputError, match="^options: unknown M option 'd'"):
        with_preset("M", None, DEFAULTS, PRESETS, {"d": 1})


def test_the_families_presets_go_through_it():
    assert smoothgrad_options("lecture") == {**SMOOTHGRAD_DEFAULTS, **SMOOTHGRAD_PRESETS["lecture"]}
    assert gradient_ascent_options("lecture", lr=0.5) == {**GRADIENT_ASCENT_PRESETS["lecture"], "lr": 0.5}
    with pytest.raises(InputError, match="^preset: unknown SmoothGrad preset"):
        smoothgrad_options("ee999")

"""Argument checks shared by every family and the command line: one-line errors naming the argument.

Each check returns the value (converted where it says so) or raises :class:`InputError` with the
argument's name, what was received and what to give instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .errors import InputError


def positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    return value


def number(name: str, value: object, *, low: float = 0.0, strict: bool = False,
           high: float | None = None) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` with ``strict``) and ``<= high`` when given."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and value >= low and not (strict and value == low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise InputError(f"{name}: expected a finite number {bound}, got {value!r}")
    return float(value)


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name}: unknown value {value!r}; choose one of {', '.join(map(str, choices))}")
    return str(value)


def parse_eps(value: float | int | str, name: str = "eps") -> float:
    """A budget as a float: a number, or a string such as ``"0.03"`` or ``"8/255"``."""
    if isinstance(value, str):
        try:
            num, _, den = value.partition("/")
            return float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            raise InputError(f"{name}: cannot read {value!r} as a number; give a float or a fraction "
                             "such as 8/255") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: expected a number such as 8/255, got {type(value).__name__}")
    return float(value)


PIXEL_TOLERANCE = 1e-4  # float round-off (a resize, an undone normalisation) beyond [0, 1] that is clamped


def pixels(x: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """``x`` if every value is finite and inside ``[0, 1]``: the one pixel check of every entry point.

    One ``aminmax`` pass over ``x`` (NaN and infinities show in its result; they are counted only to
    word the error). Values up to :data:`PIXEL_TOLERANCE` outside ``[0, 1]`` are float round-off and
    clamped; anything else is a one-line :class:`InputError` that names the fix.
    """
    if x.numel() == 0:
        return x
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise InputError(f"{name}: {bad} pixel value{'s are' if bad != 1 else ' is'} NaN or infinite; give finite "
                         "pixels in [0, 1] (look for a division by zero or an empty image in the preprocessing)")
    if hi > 1 + PIXEL_TOLERANCE:
        fix = "divide by 255" if hi > 2 else "clamp them (inputs.clamp(0, 1))"
        raise InputError(f"{name}: pixel values must lie in [0, 1], got values up to {hi:.4g}; {fix}: underhood "
                         "takes [0, 1] pixels, the model's normalisation is part of the model")
    if lo < -PIXEL_TOLERANCE:
        raise InputError(f"{name}: pixel values must lie in [0, 1], got values down to {lo:.4g}; give un-normalised "
                         "pixels (undo the mean/std normalisation): the model's normalisation is part of the model")
    return x.clamp(0, 1) if lo < 0 or hi > 1 else x


def with_preset(what: str, preset: str | None, defaults: Mapping[str, object],
                presets: Mapping[str, Mapping[str, object]], options: Mapping[str, object]) -> dict[str, object]:
    """A method's options: those in ``options`` that are not None, then the named ``preset``'s, then ``defaults``.

    ``what`` names the method in the one-line errors (an unknown preset; an option ``defaults`` does not know).

    >>> with_preset("SmoothGrad", "lecture", {"n": 50, "s": 0.15}, {"lecture": {"n": 100}}, {"s": 0.2, "n": None})
    {'n': 100, 's': 0.2}
    """
    base = dict(defaults)
    if preset is not None:
        if not isinstance(preset, str) or preset not in presets:
            raise InputError(f"preset: unknown {what} preset {preset!r}; choose one of {', '.join(presets)} or "
                             "leave it out")
        base.update(presets[preset])
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise InputError(f"options: unknown {what} option {unknown[0]!r}; choose from {', '.join(defaults)}")
    base.update({k: v for k, v in options.items() if v is not None})
    return base

"""Argument checks shared by every family and the command line: one-line errors naming the argument.

Each check returns the value (converted where it says so) or raises :class:`InputError` with the
argument's name, what was received and what to give instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def pixels(x: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """``x`` if every value is finite and inside ``[0, 1]`` (float round-off of 1e-6 is clamped)."""
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(f"{name}: pixel values must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                         "give un-normalised pixels (the model applies its own normalisation)")
    return x.clamp(0, 1)

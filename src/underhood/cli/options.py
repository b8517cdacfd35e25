"""Option types: every option's value is checked by the parser, before a command loads anything.

Each type is an ``argparse`` ``type=`` callable built on :mod:`underhood.core.checks`; a bad value
ends the run with one line on stderr and exit status 2 (see :class:`Parser`). The numeric types
carry their bounds (``low``, ``strict``, ``high``), so the bad-input test derives its table of bad
values from the parser itself. Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ..core.errors import InputError

MAX_SIDE = 4096
"""The largest image side an option accepts (``--size``, ``--input-size``): beyond it memory runs out first."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        hint = f"; see `{self.prog} --help`" if " " in self.prog else ""
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def _refuse(check: Callable[[], object]) -> object:
    """Run a check of :mod:`underhood.core.checks`; its ``InputError`` becomes the parser's error (the option name,
    which argparse adds, is stripped from the message)."""
    try:
        return check()
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2] or str(exc)) from None


class Number:
    """An int or float option in ``[low, high]`` (``(low, high]`` with ``strict``), finite.

    Example: ``p.add_argument("--lr", type=Number(float, low=0, strict=True))``.
    """

    def __init__(self, kind: type = int, *, low: float = 1, strict: bool = False, high: float | None = None) -> None:
        self.kind, self.low, self.strict, self.high = kind, low, strict, high
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def __call__(self, text: str) -> int | float:
        from ..core.checks import number

        try:
            value = self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            number("value", value, low=self.low, strict=self.strict, high=self.high)
        except InputError as exc:
            message = str(exc).partition(": ")[2]
            raise argparse.ArgumentTypeError(message.replace("a finite number", "an integer") if self.kind is int
                                             else message) from None
        return value

    def __repr__(self) -> str:
        return f"Number({self.kind.__name__}, low={self.low}, strict={self.strict}, high={self.high})"


def count(high: float | None = None) -> Number:
    """A positive int (>= 1)."""
    return Number(int, low=1, high=high)


def natural(high: float | None = None) -> Number:
    """An int >= 0 (seeds, optional counts)."""
    return Number(int, low=0, high=high)


def positive_float(high: float | None = None) -> Number:
    """A finite float > 0 (step sizes, weights that must act)."""
    return Number(float, low=0, strict=True, high=high)


def weight(high: float | None = None) -> Number:
    """A finite float >= 0 (a penalty weight: 0 switches the term off)."""
    return Number(float, low=0, high=high)


def size() -> Number:
    """An image side in pixels: 1..MAX_SIDE (the model's own minimum is checked when it is loaded)."""
    return Number(int, low=1, high=MAX_SIDE)


class Grid(Number):
    """A grid ``HxW`` (or ``N`` for ``NxN``), each side an int in ``[low, high]``; returns ``(h, w)``.

    A :class:`Number` on each side, so the bad-input table covers it like the numeric options.
    """

    def __init__(self, high: float | None = MAX_SIDE) -> None:
        super().__init__(int, low=1, high=high)
        self.__name__ = "grid"

    def __call__(self, text: str) -> tuple[int, int]:  # type: ignore[override]
        sides = text.lower().split("x")
        if len(sides) > 2:
            raise argparse.ArgumentTypeError(f"expected HxW (e.g. 14x14) or one side, got {text!r}")
        h, w = (super(Grid, self).__call__(v) for v in (sides * 2)[:2])
        return int(h), int(w)


def layout_options(p: argparse.ArgumentParser) -> None:
    """``--tokens``, ``--grid`` and ``--layout``: how a token / channels-last layer becomes ``[N, C, h, w]``
    (:mod:`underhood.core.layout`); read them back with :func:`layout_reading`."""
    p.add_argument("--tokens", type=count(high=MAX_SIDE), help="prefix tokens (class, register) before the patch "
                   "tokens of a token layer [N, L, C] (default: inferred from L and the image size, 0 included)")
    p.add_argument("--grid", type=Grid(), help="HxW grid of the patch tokens (default: inferred)")
    p.add_argument("--layout", choices=["nchw", "nhwc", "tokens"],
                   help="read the layer as [N, C, h, w], [N, h, w, C] or [N, L, C] tokens (default: from its shape)")


def layout_reading(args: argparse.Namespace) -> dict:
    """The ``tokens=`` / ``grid=`` / ``layout=`` keywords of :func:`layout_options`' values."""
    return {"tokens": args.tokens, "grid": args.grid, "layout": args.layout}


def budget(text: str) -> str:
    """A perturbation budget such as ``8/255`` or ``0.5``: finite and > 0 (the norm's ceiling is checked with the
    norm); the text is returned as given."""
    from ..core.checks import number, parse_eps

    _refuse(lambda: number("value", parse_eps(text, "value"), low=0, strict=True))
    return text


def eps_value(value: str | None, norm: str, name: str = "--eps") -> float | None:
    """A budget's text as a float (``None`` stays ``None``): finite, >= 0, and at most 1 in the L-inf norm."""
    from ..core.checks import number, parse_eps

    if value is None:
        return None
    eps = number(name, parse_eps(value, name))  # finite, >= 0
    if norm == "linf" and eps > 1:
        raise InputError(f"{name}: {value!r} is above 1, the whole pixel range; L-inf budgets are fractions of it, "
                         "e.g. 8/255")
    return eps


def eps_grid(value: str, norm: str = "linf") -> list[float]:
    """``"0:16/255:9"`` (start:stop:count, evenly spaced) or ``"0,2/255,8/255"`` -> budgets."""
    try:
        if ":" in value:
            parts = value.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop = (eps_value(p, norm) for p in parts[:2])
            count = int(parts[2])
            if count < 2 or stop <= start:
                raise ValueError
            return [start + (stop - start) * i / (count - 1) for i in range(count)]
        grid = [eps_value(v.strip(), norm) for v in value.split(",") if v.strip()]
    except InputError as exc:
        if "above 1" in str(exc):
            raise
        raise InputError(f"--eps: expected start:stop:count (e.g. 0:16/255:9) or a list (e.g. 0,4/255,8/255), "
                         f"got {value!r}") from None
    except (ValueError, TypeError):
        raise InputError(f"--eps: expected start:stop:count (e.g. 0:16/255:9) or a list (e.g. 0,4/255,8/255), "
                         f"got {value!r}") from None
    if not grid:
        raise InputError("--eps: give at least one budget, e.g. 0:16/255:9")
    return grid


def parse_channels(value: str | None, option: str = "--channels") -> list[int] | None:
    """``"0:16"``, ``"3,5,9"`` or ``None`` (all)."""
    if not value:
        return None
    try:
        if ":" in value:
            a, _, b = value.partition(":")
            ids = list(range(int(a or 0), int(b)))
        else:
            ids = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{option}: expected A:B or a comma-separated list of ids, got {value!r}") from None
    if not ids or min(ids) < 0:
        raise InputError(f"{option}: {value!r} names no valid channel; e.g. 0:16")
    return ids


def budgets(text: str) -> str:
    """Budgets ``start:stop:count`` or a comma list, each finite and >= 0 (the norm's ceiling is checked with the
    norm); the text is returned as given."""
    _refuse(lambda: eps_grid(text, "l2"))
    return text


def channels(text: str) -> str:
    """Channel ids ``A:B`` or ``3,5,9``; the text is returned as given."""
    _refuse(lambda: parse_channels(text))
    return text


def names(text: str) -> str:
    """A comma-separated list of names with at least one name; the text is returned as given."""
    if not [n for n in text.split(",") if n.strip()]:
        raise argparse.ArgumentTypeError(f"expected one or more comma-separated names, got {text!r}")
    return text


def one_of(choices: Sequence[str], what: str, *, single: bool = False) -> Callable[[str], str]:
    """A comma-separated list of names, each one of ``choices`` (e.g. attribution methods); one name with
    ``single``. An unknown name is refused with the closest known ones."""
    def parse(text: str) -> str:
        import difflib

        given = [text] if single else [n.strip() for n in text.split(",") if n.strip()]
        if not given:
            raise argparse.ArgumentTypeError(f"name at least one {what}, e.g. {choices[0]}")
        for name in given:
            if name not in choices:
                close = difflib.get_close_matches(name, list(choices), n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise argparse.ArgumentTypeError(f"unknown {what} {name!r}; {hint}choose from {', '.join(choices)}")
        return text
    parse.__name__ = what
    return parse


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether it is present is checked before the work)."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"cannot parse device {text!r}; use auto, cpu or cuda[:N]")
    return text


def image_file(text: str) -> str:
    """An existing file (read as an image when the command runs)."""
    if not Path(text).is_file():
        what = "a folder, not an image file" if Path(text).is_dir() else "no such file"
        raise argparse.ArgumentTypeError(f"{text!r} is {what}; check the path" if what.startswith("a folder")
                                         else f"no such file {text!r}; check the path")
    return text


def data_spec(text: str) -> str:
    """``shapes[:N]``, ``shapes-spurious[:p]``, ``digits[:train|test]`` or an existing folder; the text is returned
    as given (the images are made or read when the command runs)."""
    name, _, arg = text.partition(":")
    if name == "shapes" and arg:
        if not arg.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r} is not shapes:N with N an integer; e.g. shapes:512")
        if int(arg) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} asks for no images; ask for at least one, e.g. shapes:512")
    elif name == "shapes-spurious" and arg:
        _refuse(lambda: _fraction(arg, text))
    elif name == "digits" and arg not in ("", "train", "test"):
        raise argparse.ArgumentTypeError(f"{text!r}: digits has the splits train and test, e.g. digits:test")
    elif name not in ("shapes", "shapes-spurious", "digits") and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is neither a built-in dataset (shapes[:N], shapes-spurious[:p], "
                                         "digits[:split]) nor a folder")
    return text


def class_split(text: str) -> str:
    """``random``, ``dissimilar`` or two comma-separated class lists (names or indices) joined by ``/``."""
    if text in ("random", "dissimilar"):
        return text
    halves = text.split("/")
    if len(halves) != 2 or not all(h.strip(", ") for h in halves):
        raise argparse.ArgumentTypeError(f"{text!r}: give random, dissimilar or the halves as A1,A2/B1,B2 (names or "
                                         "indices), e.g. circle,ring/square,star")
    return text


def depths(text: str) -> str:
    """Comma-separated depths (positive integers)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give depths as positive integers, e.g. 1,3,5")
    return text


def fractions(text: str) -> str:
    """``none`` or comma-separated fractions strictly between 0 and 1."""
    if text == "none":
        return text
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions of B's images between 0 and 1, e.g. 0.25,0.5, "
                                         "or none")
    return text


def training_data(text: str) -> str:
    """What ``train`` learns from: ``shapes``, ``shapes-spurious[:p]``, ``shapes-random-labels``, ``digits`` or an
    existing image folder."""
    name, _, arg = text.partition(":")
    if name == "shapes-spurious":
        if arg:
            _refuse(lambda: _fraction(arg, text))
    elif text not in ("shapes", "shapes-random-labels", "digits") and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is neither shapes, shapes-spurious[:p], shapes-random-labels, "
                                         "digits nor a folder of images")
    return text


def _fraction(arg: str, text: str) -> float:
    from ..core.checks import number

    try:
        value = float(arg)
    except ValueError:
        raise InputError(f"data: {text!r}: expected a fraction in [0, 1] after the colon, e.g. shapes-spurious:0.9") \
            from None
    return number("data", value, high=1.0)


def priors(text: str) -> str:
    """Image priors as ``name=value`` pairs, read by :meth:`underhood.synthesis.Priors.parse`; the text is returned
    as given."""
    pairs = [p for p in text.split(",") if p.strip()]
    for pair in pairs:  # finiteness first, without importing the synthesis family (torch)
        key, _, value = pair.partition("=")
        try:
            number_ = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{pair.strip()!r}: expected name=value, e.g. tv=1e-3") from None
        if not math.isfinite(number_) or number_ < 0:
            raise argparse.ArgumentTypeError(f"{key.strip()}: expected a finite number >= 0, got {value.strip()!r}")
    from ..synthesis import Priors

    _refuse(lambda: Priors.parse(text))
    return text

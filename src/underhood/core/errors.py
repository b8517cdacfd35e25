"""The error hierarchy: every error underhood raises is an :class:`UnderhoodError`.

Messages name the argument, what was received and what to do, on one line, so the CLI can
print them as they are.
"""

from __future__ import annotations


class UnderhoodError(Exception):
    """Base of every error raised by underhood."""


class InputError(UnderhoodError, ValueError):
    """An argument has the wrong value, type or shape."""


class LayerError(InputError):
    """A layer name does not exist in the model, or the layer cannot be used here."""


class ModelError(UnderhoodError):
    """A model spec cannot be resolved or loaded."""


class DataError(UnderhoodError):
    """A file or dataset cannot be read."""


def check(condition: bool, message: str, kind: type[UnderhoodError] = InputError) -> None:
    """Raise ``kind(message)`` unless ``condition`` holds."""
    if not condition:
        raise kind(message)


def lookup(name, table: dict, argument: str, kind: str):
    """``table[name]`` (a callable ``name`` is returned as it is); an unknown name raises a one-line
    :class:`InputError` naming ``argument``, the closest known names and all of them."""
    if callable(name):
        return name
    if name not in table:
        import difflib

        close = difflib.get_close_matches(str(name), list(table), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"{argument}: unknown {kind} {name!r}; {hint}choose from {', '.join(table)}")
    return table[name]

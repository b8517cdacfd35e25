"""Core plumbing shared by every family: errors, layers, hooks, targets, batching, seeding, devices."""

from .errors import DataError, InputError, LayerError, ModelError, UnderhoodError

__all__ = ["UnderhoodError", "InputError", "LayerError", "ModelError", "DataError"]

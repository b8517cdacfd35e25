"""The influence family's numerical failures (bad arguments are :class:`~underhood.core.errors.InputError`)."""

from __future__ import annotations

from ..core.errors import UnderhoodError


class InfluenceError(UnderhoodError):
    """An estimator could not produce a trustworthy inverse-Hessian product (negative curvature, divergence).

    The message names ``damping`` (or the estimator's own setting) and a value to try.
    """


class InfluenceWarning(UserWarning):
    """A result that needs a second look: fragile under damping, or dominated by a few global points."""

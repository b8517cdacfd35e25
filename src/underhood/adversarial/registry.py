"""One registry of the family's attacks, and what each can do.

Every attack has one :class:`Attack` entry whose flags say what it takes and returns. Code that
treats attacks differently (:func:`~underhood.adversarial.robustness_curve`,
:func:`~underhood.adversarial.transfer_matrix`, the command line, the report) reads the flags,
never the names; a new attack is one entry here.

Example:
    >>> from underhood.adversarial.registry import entry, names
    >>> entry("pgd").budget, entry("pgd").norms, entry("deepfool").minimal
    (True, ('linf', 'l2'), True)
    >>> names(per_image=True, black_box=True)
    ('noise', 'one_pixel')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import lookup
from .base import AttackResult
from .blackbox import one_pixel
from .control import noise
from .fooling import fooling_images
from .gradient import fgsm, gradient_ascent, pgd
from .minimal import cw, deepfool, lbfgs
from .substitute import substitute
from .universal import patch, universal


@dataclass(frozen=True)
class Attack:
    """One attack and its capabilities.

    Attributes:
        name: the name users and the command line give (``"pgd"``).
        fn: the function.
        budget: takes ``eps``, a radius in the norm ball (pixel units).
        minimal: looks for the smallest adversarial perturbation per sample (no budget): its norms
            measure each input's distance to the decision boundary.
        targeted: accepts ``target=`` (classes to reach).
        black_box: needs no gradient of the model: it reads its outputs only (probabilities or
            labels), with its default options.
        per_image: ``fn(model, inputs, labels=None, *, seed=0, **options) -> AttackResult`` on given
            images, one result per image; ``False``: a dataset-level attack with its own signature and
            result (one perturbation, patch or substitute for many images, or images from scratch).
        norms: the norms the attack bounds or minimises its perturbation in, its default first; more
            than one: it takes a ``norm=`` option. ``()``: unbounded (the lecture's gradient ascent, a
            patch); ``("l0",)``: a number of pixels. ``None``: unknown (a user's callable), the norm is
            passed to it only when one is given.
        baseline: a random control an attack must beat, not an optimisation.
    """

    name: str
    fn: Callable[..., Any]
    budget: bool = False
    minimal: bool = False
    targeted: bool = False
    black_box: bool = False
    per_image: bool = True
    norms: tuple[str, ...] | None = ()
    baseline: bool = False

    @property
    def norm_option(self) -> bool:
        """Whether the attack takes a ``norm=`` option (it supports more than one norm)."""
        return self.norms is not None and len(self.norms) > 1

    @property
    def sweepable(self) -> bool:
        """Whether a robustness curve can sweep it: a per-image attack with a budget, or a minimal one."""
        return self.per_image and (self.budget or self.minimal)

    @property
    def default_norm(self) -> str:
        """The norm of ``eps`` (or of the minimal perturbation) when none is given."""
        return self.norms[0] if self.norms else ("l2" if self.minimal else "linf")


REGISTRY: dict[str, Attack] = {a.name: a for a in (
    Attack("gradient_ascent", gradient_ascent, targeted=True),
    Attack("fgsm", fgsm, budget=True, targeted=True, norms=("linf",)),
    Attack("pgd", pgd, budget=True, targeted=True, norms=("linf", "l2")),
    Attack("noise", noise, budget=True, black_box=True, norms=("linf", "l2"), baseline=True),
    Attack("deepfool", deepfool, minimal=True, norms=("l2", "linf")),
    Attack("cw", cw, minimal=True, targeted=True, norms=("l2",)),
    Attack("lbfgs", lbfgs, minimal=True, targeted=True, norms=("l2",)),
    Attack("one_pixel", one_pixel, targeted=True, black_box=True, norms=("l0",)),
    Attack("universal", universal, budget=True, per_image=False, norms=("linf", "l2")),
    Attack("patch", patch, targeted=True, per_image=False),
    Attack("substitute", substitute, budget=True, black_box=True, per_image=False, norms=("linf",)),
    Attack("fooling_images", fooling_images, black_box=True, per_image=False),
)}

ATTACKS: dict[str, Callable[..., AttackResult]] = {a.name: a.fn for a in REGISTRY.values() if a.per_image}
"""The per-image attacks by name: ``attack(model, inputs, labels=None, *, seed=0, **options) -> AttackResult``."""

MINIMAL: tuple[str, ...] = tuple(a.name for a in REGISTRY.values() if a.per_image and a.minimal)
"""The per-image attacks without a budget: they return minimal perturbations."""


def get(name: str | Callable[..., AttackResult]) -> Callable[..., AttackResult]:
    """The per-image attack called ``name`` (see :data:`ATTACKS`); a callable is returned as it is."""
    return lookup(name, ATTACKS, "attack", "attack")


def entry(attack: str | Callable[..., Any] | Attack) -> Attack:
    """The :class:`Attack` entry of ``attack``: a name from :data:`REGISTRY`, one of its functions, or an
    entry (returned as it is). Another callable gets an entry of a budgeted per-image attack whose norms
    are unknown (``norms=None``); name it by its ``__name__``."""
    if isinstance(attack, Attack):
        return attack
    if callable(attack):
        known = next((a for a in REGISTRY.values() if a.fn is attack), None)
        return known or Attack(getattr(attack, "__name__", str(attack)), attack, budget=True, norms=None)
    return lookup(attack, REGISTRY, "attack", "attack")


def names(**flags: Any) -> tuple[str, ...]:
    """The names of the attacks whose flags (or properties, such as ``sweepable``) equal ``flags``.

    Example:
        >>> names(per_image=True, minimal=True)
        ('deepfool', 'cw', 'lbfgs')
    """
    for key in flags:
        if not hasattr(Attack, key) and key not in Attack.__dataclass_fields__:
            raise TypeError(f"names: Attack has no flag {key!r}")
    return tuple(a.name for a in REGISTRY.values() if all(getattr(a, k) == v for k, v in flags.items()))

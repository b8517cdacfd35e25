"""A re-initialised copy of a model: the "same architecture, no training" control of several families.

The attribution family's model-randomisation test and the transfer family's random-features probe both
compare a trained network with its untrained twin; the twin is made here, once.
"""

from __future__ import annotations

import copy
import zlib

import torch
from torch import nn

from .errors import InputError
from .names import named_layers
from .seeding import seeded


def randomize(module: nn.Module, name: str, seed: int) -> None:
    """Re-initialise every parameter-owning module inside ``module`` (named ``name``) as a freshly built one would be.

    ``reset_parameters()`` where the module has it (random for Conv/Linear; identity affine and reset
    running statistics for BatchNorm); otherwise each parameter is redrawn from ``N(0, std(p)^2)``,
    keeping its scale and destroying its structure. Each layer's seed comes from ``(seed, its name)``:
    the same weights whether it is randomised alone or in a block.
    """
    for sub, m in module.named_modules(prefix=name):
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        with seeded((int(seed) * 1_000_003 + zlib.crc32(sub.encode())) % (2**63), own[0].device):
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
            else:
                with torch.no_grad():
                    for p in own:
                        p.normal_(0.0, float(p.std()) if p.numel() > 1 else 1.0)


def randomized_copy(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameterised layer re-initialised (see :func:`randomize`).

    The copy keeps the model's wrapper (normalisation, classes), mode and device; ``model`` is untouched.

    Example:
        >>> twin = randomized_copy(model, seed=0)   # doctest: +SKIP
    """
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # any failure to copy means the same to the user
        raise InputError(f"model: cannot deep-copy {type(model).__name__} ({exc}); an untrained twin needs a "
                         "copy to re-initialise") from exc
    for name, m in named_layers(twin).items():
        if any(True for _ in m.parameters(recurse=False)):
            randomize(m, name, seed)
    return twin


__all__ = ["randomize", "randomized_copy"]

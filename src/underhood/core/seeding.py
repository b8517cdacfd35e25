"""Explicit seeding: the same ``seed`` gives the same result, and the caller's random state is untouched.

Library code never seeds the global generators for good: it draws from a
:func:`generator`, or runs under :func:`seeded`, which restores the global state on exit.
Only the ``demo`` command seeds the process (:func:`seed_everything`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh :class:`torch.Generator` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device | None = None) -> Iterator[None]:
    """torch's default generators (the CPU's, and ``device``'s when it is a GPU), Python's ``random`` and
    NumPy's global generator seeded with ``seed`` for the block; their states are restored on exit.

    For code that draws from the global generators and cannot take a :class:`torch.Generator`
    (parameter initialisation, dropout, a training loop).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it would reseed every GPU for good
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators for the rest of the process (the demo command only)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

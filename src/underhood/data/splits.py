"""The built-in datasets' splits: what each training run sees, and the held-out images it is scored on.

Shapes models train on freshly generated images (seeds ``seed * 1000 + epoch``) and are
evaluated on images from :data:`SHAPES_TEST_SEED`, a seed no training run uses.
"""

from __future__ import annotations

import torch

from ..core.errors import InputError
from .digits import digits
from .imageset import ImageSet
from .shapes import shapes

SHAPES_TEST_SEED = 987_654_321
SHAPES_TEST_SIZE = 2000
SHORTCUT_TEST_SEED = 246_813_579
RANDOM_LABELS = "shapes-random-labels"


def training_data(data: str, *, seed: int = 0, epoch: int = 0, n_train: int = 16_000) -> ImageSet:
    """The training images :func:`train` uses in ``epoch`` for the data spec ``data``.

    Procedural shapes are fresh every epoch (seed ``seed * 1000 + epoch``), except for
    ``"shapes-random-labels"``: the same ``n_train`` images (seed ``seed * 1000``) every epoch,
    their labels shuffled by a permutation seeded with ``seed``.
    """
    if data == RANDOM_LABELS:
        fixed = shapes(n_train, seed=seed * 1000)
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
        fixed.labels = fixed.labels[perm]
        fixed.info["labels"] = f"permuted with seed {seed}"
        return fixed
    if data == "shapes":
        return shapes(n_train, seed=seed * 1000 + epoch)
    if data.startswith("shapes-spurious"):
        return shapes(n_train, seed=seed * 1000 + epoch, spurious=float(data.partition(":")[2] or 0.9))
    if data == "digits":
        return digits(split="train")
    return ImageSet.from_folder(data)


def test_set(data: str) -> ImageSet:
    """The held-out evaluation set of a training dataset name."""
    if data in ("shapes", RANDOM_LABELS):
        return shapes(SHAPES_TEST_SIZE, seed=SHAPES_TEST_SEED)
    if data.startswith("shapes-spurious"):
        return shapes(SHAPES_TEST_SIZE, seed=SHAPES_TEST_SEED, spurious=float(data.partition(":")[2] or 0.9))
    if data == "digits":
        return digits(split="test")
    raise InputError(f"data: no held-out split is defined for {data!r}")

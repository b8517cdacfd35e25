"""The built-in datasets' splits: what each training run sees, and the held-out images it is scored on.

Shapes models train on freshly generated images (seeds ``seed * 1000 + epoch``) and are
evaluated on images from :data:`SHAPES_TEST_SEED`, a seed no training run uses.
"""

from __future__ import annotations

import torch

from ..core.checks import positive_int
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


def test_set(data: str, n: int | None = None) -> ImageSet:
    """The held-out evaluation set of a training dataset name: all of it, or its first ``n`` images.

    Only the images asked for are made (``shapes(n, seed)`` is a prefix of ``shapes(m, seed)``, so
    the first ``n`` are exactly those of the whole set); ``n`` above the set's size is an error.
    """
    if n is not None:
        positive_int("n", n)
    if data in ("shapes", RANDOM_LABELS) or data.startswith("shapes-spurious"):
        spurious = float(data.partition(":")[2] or 0.9) if data.startswith("shapes-spurious") else 0.0
        return shapes(_count(data, n, SHAPES_TEST_SIZE), seed=SHAPES_TEST_SEED, spurious=spurious)
    if data == "digits":
        held_out = digits(split="test")
        return held_out if n is None else held_out[:_count(data, n, len(held_out))]
    raise InputError(f"data: no held-out split is defined for {data!r}")


def _count(data: str, n: int | None, size: int) -> int:
    if n is not None and n > size:
        raise InputError(f"n: the held-out set of {data!r} has {size} images, {n} asked for; ask for {size} or fewer")
    return size if n is None else n

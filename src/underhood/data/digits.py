"""scikit-learn's bundled handwritten digits (8x8, 1,797 images), upsampled, fixed split."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import InputError
from .imageset import ImageSet

TEST_SIZE = 360
SPLIT_SEED = 0


def digits(*, split: str = "test", size: int = 32) -> ImageSet:
    """The bundled digits as grey ``[N, 1, size, size]`` images in ``[0, 1]``.

    The split is fixed: a permutation seeded with 0, the last 360 images (20%) are ``"test"``,
    the rest ``"train"``; ``"all"`` gives every image in the original order.

    Example:
        >>> d = digits(split="test")
        >>> d.images.shape
        torch.Size([360, 1, 32, 32])
    """
    if split not in ("train", "test", "all"):
        raise InputError(f"split: expected 'train', 'test' or 'all', got {split!r}")
    if not isinstance(size, int) or size < 8:
        raise InputError(f"size: expected an int >= 8, got {size!r}")
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(raw.target, dtype=torch.long)
    if split != "all":
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_test = TEST_SIZE
        index = order[-n_test:] if split == "test" else order[:-n_test]
        images, labels = images[index], labels[index]
    return ImageSet(images, labels, [str(k) for k in range(10)], info={"dataset": "digits", "split": split})

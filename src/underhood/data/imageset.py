"""ImageSet: images in [0, 1] with labels, optional object masks and class names."""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DataError, InputError
from .images import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageSet(torch.utils.data.Dataset):
    """A labelled set of images, usable as a ``torch.utils.data.Dataset``.

    Attributes:
        images: ``[N, C, H, W]`` float32 in ``[0, 1]``.
        labels: ``[N]`` long.
        masks: ``[N, 1, H, W]`` bool ground-truth object masks, or ``None``.
        classes: class names, ``classes[labels[i]]`` names sample ``i``.
        marker_masks: ``[N, 1, H, W]`` bool masks of a planted spurious marker, or ``None``.
        info: free-form provenance (dataset name, seed, ...).

    ``imageset[i]`` gives ``(image, label)``; a slice, index list or bool tensor gives an ImageSet.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    masks: torch.Tensor | None = None
    marker_masks: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise InputError(f"images: expected [N, C, H, W], got shape {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise InputError(f"labels: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, torch.Tensor) and index.ndim == 0:
            index = int(index)
        if not isinstance(index, (slice, list, tuple, torch.Tensor)) and hasattr(index, "__index__"):
            i = operator.index(index)
            return self.images[i], self.labels[i]
        pick = (lambda t: None if t is None else t[index])  # noqa: E731
        return ImageSet(self.images[index], self.labels[index], list(self.classes), pick(self.masks),
                        pick(self.marker_masks), dict(self.info))

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        return f"ImageSet({len(self)} images {shape}, {len(self.classes)} classes)"

    def to(self, device: str | torch.device) -> ImageSet:
        """A copy with every tensor on ``device``."""
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return ImageSet(self.images.to(device), self.labels.to(device), list(self.classes),
                        move(self.masks), move(self.marker_masks), dict(self.info))

    @classmethod
    def from_folder(cls, path: str | os.PathLike, *, size: int | tuple[int, int] = 64,
                    channels: int = 3) -> ImageSet:
        """Load ``path/<class>/<image>`` files: one class per sub-folder, sorted by name.

        Every image is resized and centre-cropped to ``size`` (see :func:`load_image`).
        """
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"path: {str(root)!r} is not a folder; give a folder with one sub-folder per class")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"path: {str(root)!r} has no class sub-folders; put images in {root}/<class>/")
        images, labels = [], []
        for k, name in enumerate(classes):
            files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for f in files:
                images.append(load_image(f, size=size, channels=channels)[0])
                labels.append(k)
        if not images:
            raise DataError(f"path: no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}")
        return cls(torch.stack(images), torch.tensor(labels), classes, info={"dataset": "folder", "path": str(root)})

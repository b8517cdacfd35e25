"""Built-in datasets (procedural shapes, bundled digits) and readers for real ones."""

from .digits import digits
from .imageset import ImageSet
from .io import cifar10, load_image, mnist, read_idx, resize_crop
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import shapes


def folder(path, *, size=64, channels=3) -> ImageSet:
    """An image folder with one sub-folder per class (see :meth:`ImageSet.from_folder`)."""
    return ImageSet.from_folder(path, size=size, channels=channels)


__all__ = ["ImageSet", "shapes", "digits", "mnist", "cifar10", "folder", "load_image", "read_idx",
           "resize_crop", "SHAPES_CLASSES"]

"""Built-in datasets (procedural shapes, bundled digits) and readers for real ones."""

from ..core.errors import DataError
from .digits import digits
from .images import load_image, resize_crop
from .imageset import ImageSet
from .io import cifar10, mnist, read_idx
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import shapes
from .splits import SHAPES_TEST_SEED, SHAPES_TEST_SIZE, test_set


def folder(path, *, size=64, channels=3) -> ImageSet:
    """An image folder with one sub-folder per class (see :meth:`ImageSet.from_folder`)."""
    return ImageSet.from_folder(path, size=size, channels=channels)


__all__ = ["ImageSet", "shapes", "digits", "mnist", "cifar10", "folder", "from_spec", "load_image", "read_idx",
           "resize_crop", "SHAPES_CLASSES", "test_set"]


def from_spec(spec: str, *, size: tuple[int, int] | int | None = None, channels: int | None = None,
              seed: int | None = None) -> ImageSet:
    """A dataset named on the command line.

    - ``shapes`` or ``shapes:N``: ``N`` (default 2,000) procedural shapes; the held-out seed unless
      ``seed`` is given; ``shapes-spurious[:p]`` likewise with the marker;
    - ``digits`` or ``digits:train`` / ``digits:test`` (default test);
    - a folder: one sub-folder per class, or images directly inside (then unlabelled: class 0);
    - images are resized and centre-cropped to ``size`` and converted to ``channels``.
    """
    from pathlib import Path

    from .imageset import IMAGE_SUFFIXES
    from .io import resize_crop

    name, _, arg = str(spec).partition(":")
    if name in ("shapes", "shapes-spurious"):
        try:
            n = int(arg) if name == "shapes" and arg else SHAPES_TEST_SIZE
            spurious = float(arg or 0.9) if name == "shapes-spurious" else 0.0
        except ValueError:
            raise DataError(f"data: {spec!r} is not NAME:COUNT; e.g. shapes:512") from None
        if n < 1:
            raise DataError(f"data: {spec!r} asks for {n} images; ask for at least one")
        data = shapes(n, seed=SHAPES_TEST_SEED if seed is None else seed, spurious=spurious,
                      size=64 if size is None else (size if isinstance(size, int) else size[0]))
    elif name == "digits":
        data = digits(split=arg or "test")
    else:
        root = Path(spec)
        if not root.exists():
            raise DataError(f"data: {spec!r} is neither a built-in dataset (shapes[:N], shapes-spurious[:p], "
                            "digits[:split]) nor a folder")
        flat = root.is_dir() and not any(d.is_dir() for d in root.iterdir()) and \
            any(f.suffix.lower() in IMAGE_SUFFIXES for f in root.iterdir())
        if flat:
            import torch

            files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            images = torch.cat([load_image(f, size=size or 64, channels=channels or 3) for f in files])
            data = ImageSet(images, torch.zeros(len(images), dtype=torch.long), ["unlabelled"],
                            info={"dataset": "folder", "path": str(root), "files": [f.name for f in files],
                                  "labelled": False})
        else:
            data = ImageSet.from_folder(root, size=size or 64, channels=channels or 3)
    if size is not None and tuple(data.images.shape[-2:]) != ((size, size) if isinstance(size, int) else tuple(size)):
        data.images = resize_crop(data.images, size)
        data.masks = data.marker_masks = None
    if channels is not None and data.images.shape[1] != channels:
        if channels == 1:
            data.images = data.images.mean(1, keepdim=True)
        elif data.images.shape[1] == 1:
            data.images = data.images.expand(-1, channels, -1, -1).contiguous()
        else:
            raise DataError(f"data: images have {data.images.shape[1]} channels, the model takes {channels}")
    return data

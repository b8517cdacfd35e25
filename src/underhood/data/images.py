"""Reading image files as ``[1, C, H, W]`` pixels in ``[0, 1]``, and resizing to a model's input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import DataError, InputError


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise InputError(f"size: expected a positive int or (height, width), got {size!r}")


def resize_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` so it covers ``size``, then centre-crop to exactly ``size``."""
    th, tw = _size_pair(size)
    h, w = images.shape[-2:]
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return images[..., top:top + th, left:left + tw].clamp(0, 1)


def load_image(path: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
               channels: int = 3) -> torch.Tensor:
    """Read a PNG/JPEG (or any format Pillow reads) as ``[1, C, H, W]`` float32 in ``[0, 1]``.

    Grey, palette and RGBA images are converted (transparency is composited over white).
    With ``size`` (int or ``(h, w)``) the image is resized to cover it and centre-cropped.
    ``channels`` is 3 (RGB) or 1 (grey).

    Example:
        >>> x = load_image("cat.png", size=64)   # doctest: +SKIP
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise InputError(f"channels: expected 1 or 3, got {channels!r}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image: no such file {str(p)!r}; check the path")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            im = im.convert("RGB" if channels == 3 else "L")
            array = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image: cannot read {str(p)!r} as an image ({exc}); give a PNG or JPEG file") from exc
    x = torch.from_numpy(array.copy())
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    x = x.unsqueeze(0)
    return resize_crop(x, size) if size is not None else x

"""Reading image files as ``[1, C, H, W]`` pixels in ``[0, 1]``, and resizing to a model's input."""

from __future__ import annotations

import os
import re
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


MAX_PIXELS = 64_000_000  # images above this many pixels are refused before decoding (decompression bombs)
MAX_PIXELS_ENV = "UNDERHOOD_MAX_PIXELS"


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit of :func:`load_image`: ``max_pixels`` when given, else the environment variable
    ``UNDERHOOD_MAX_PIXELS``, else :data:`MAX_PIXELS` (64 megapixels)."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV)
        if raw is None:
            return MAX_PIXELS
        try:
            max_pixels = int(raw)
        except ValueError:
            raise InputError(f"{MAX_PIXELS_ENV}: expected a positive int (pixels), got {raw!r}") from None
        name = MAX_PIXELS_ENV
    else:
        name = "max_pixels"
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise InputError(f"{name}: expected a positive int (pixels), got {max_pixels!r}")
    return max_pixels


def _too_big(path: Path, size: str, limit: int) -> DataError:
    return DataError(f"image: {str(path)!r} has {size}, above the limit of {limit:,} pixels (a guard against "
                     f"decompression bombs); raise it with load_image(..., max_pixels=N) or the environment "
                     f"variable {MAX_PIXELS_ENV}=N")


def _array(im, channels: int) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 3]`` float32 in ``[0, 1]`` from a Pillow image, at its true bit depth."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit / 32-bit single channel: scale by the range
        grey = np.asarray(im).astype(np.float32)
        if mode == "F":
            lo, hi = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
                raise DataError(f"image: a 32-bit float image must hold intensities in [0, 1], got [{lo:g}, {hi:g}]; "
                                "rescale it before saving")
        else:
            grey = np.clip(grey / 65535.0, 0.0, 1.0)
        return grey if channels == 1 else np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info) \
            or (mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike, *, size: int | tuple[int, int] | None = None,
               channels: int = 3, max_pixels: int | None = None) -> torch.Tensor:
    """Read a PNG/JPEG (or any format Pillow reads) as ``[1, C, H, W]`` float32 in ``[0, 1]``.

    - Bit depth: 8-bit images are divided by 255, 16-bit ones (PIL modes ``I;16``, ``I;16B``,
      ``I``) by 65535, so a 16-bit PNG at half intensity reads 0.5; 32-bit float images (``F``)
      must already hold ``[0, 1]``. (Pillow reads 16-bit RGB PNGs as 8-bit RGB.)
    - Grey, palette, CMYK and other modes are converted to RGB (``channels=3``) or grey (``1``).
    - Alpha (RGBA, grey+alpha, palette or grey/RGB with a transparent colour) is composited over
      white: a transparent pixel reads as white.
    - EXIF orientation is applied (a photo taken upright reads upright).
    - Images above ``max_pixels`` (default 64 megapixels, or the environment variable
      ``UNDERHOOD_MAX_PIXELS``) are refused from their header, before decoding: a guard
      against decompression bombs.

    With ``size`` (int or ``(h, w)``) the image is resized to cover it and centre-cropped.

    Example:
        >>> x = load_image("cat.png", size=64)   # doctest: +SKIP
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise InputError(f"channels: expected 1 or 3, got {channels!r}")
    limit = max_pixels_limit(max_pixels)
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image: no such file {str(p)!r}; check the path")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's own guard at our limit (restored below)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:  # reads the header only
                w, h = im.size
                if w * h > limit:
                    raise _too_big(p, f"{w}x{h} = {w * h:,} pixels", limit)
                im.load()
                array = _array(ImageOps.exif_transpose(im), channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow's own guard, at our limit
        raise _too_big(p, f"{int(found.group(1)):,} pixels" if found else "too many pixels", limit) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"image: cannot read {str(p)!r} as an image ({why}); give a PNG or JPEG file") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    x = torch.from_numpy(np.ascontiguousarray(array))
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    x = x.unsqueeze(0)
    return resize_crop(x, size) if size is not None else x

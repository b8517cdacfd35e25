"""Example images for the commands of the README: procedural, deterministic, offline.

:func:`samples` draws them; :func:`write_samples` saves them as PNG files (``underhood samples``):

- one image per class of the built-in shapes dataset (``circle.png``, ``square.png``, ...), drawn
  by the dataset's own generator at 128 px, the largest object of its class among the first images
  of :data:`SEED` (the built-in shapes model classifies each correctly; a test checks it);
- ``digit.png``: a handwritten 3 from the digits test split (the digits model's input);
- ``content.png`` and ``style.png``: a content/style pair for style transfer: a star over a soft
  gradient, and a texture of bold warped stripes with dabs of paint, whose colours and strokes the
  stylised image visibly takes;
- ``photo.png``: a photo-like scene (sky and ground gradients, a light source, textured ground, a
  shaded star casting a shadow, vignette and grain) in which the shapes model still sees the star.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.seeding import generator
from .shapes import _TESTS, CLASSES, shapes

SEED = 2024
"""The seed of every sample (the same images on every machine)."""

PHOTO_CLASS = "star"
"""The shapes class visible in ``photo.png`` (and ``content.png``)."""


def class_images(size: int = 128, pool: int = 96) -> dict[str, torch.Tensor]:
    """One ``[3, size, size]`` image per shapes class: the largest object of that class among ``shapes(pool, SEED)``."""
    data = shapes(pool, size=size, seed=SEED)
    area = data.masks.flatten(1).float().sum(1)
    out = {}
    for k, name in enumerate(CLASSES):
        ids = (data.labels == k).nonzero().squeeze(1)
        out[name] = data.images[ids[area[ids].argmax()]]
    return out


def digit(size: int = 128, value: int = 3) -> torch.Tensor:
    """A ``[1, size, size]`` handwritten ``value`` from the digits test split."""
    from .digits import digits

    data = digits(split="test", size=size)
    return data.images[int((data.labels == value).nonzero()[0, 0])]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return torch.meshgrid(c, c, indexing="ij")  # y, x in [0, 1]


def _noise(size: int, g: torch.Generator, octaves: int = 5, base: int = 4) -> torch.Tensor:
    """Fractal value noise ``[size, size]`` in about ``[0, 1]``: bicubic-upsampled random grids, halving amplitudes."""
    total, weight = torch.zeros(size, size), 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = torch.rand(1, 1, cells + 1, cells + 1, generator=g)
        total += F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0, 0] * 0.5**o
        weight += 0.5**o
    return (total / weight).clamp(0, 1)


def _mix(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``a`` (colour ``[3]``) to ``b`` along ``t`` (``[H, W]``) -> ``[3, H, W]``."""
    return a[:, None, None] * (1 - t) + b[:, None, None] * t


def _shape_mask(name: str, y: torch.Tensor, x: torch.Tensor, cx: float, cy: float, radius: float,
                theta: float = 0.0) -> torch.Tensor:
    """Inside shapes class ``name`` centred at ``(cx, cy)`` with ``radius`` (image units), rotated by ``theta``."""
    du, dv = (x - cx) / radius, (y - cy) / radius
    c, s = math.cos(theta), math.sin(theta)
    return _TESTS[CLASSES.index(name)](c * du + s * dv, -s * du + c * dv)


def style_texture(size: int = 256) -> torch.Tensor:
    """``[3, size, size]``: bold warped stripes (deep blue, ochre, cream) with dabs of red paint: a style with strong
    colours and strokes at the scale of a few pixels at 64 px, so that style transfer visibly takes them."""
    g = generator(SEED + 1)
    y, x = _grid(size)
    warp = 0.9 * _noise(size, g, octaves=3, base=3) + 0.25 * torch.sin(9 * y + 3 * x)
    phase = 2 * math.pi * (5.5 * (0.8 * x + 0.6 * y) + 2.2 * warp)
    t = 0.5 + 0.5 * torch.sin(phase)
    blue, ochre, cream = torch.tensor([0.08, 0.16, 0.48]), torch.tensor([0.92, 0.62, 0.12]), \
        torch.tensor([0.97, 0.93, 0.80])
    image = torch.where(t < 0.5, _mix(blue, ochre, (t / 0.5) ** 1.5), _mix(ochre, cream, (t - 0.5) / 0.5))
    # short dabs: blobs of a red paint where a fine noise peaks
    dabs = (_noise(size, g, octaves=2, base=14) > 0.68).float()
    dabs = F.avg_pool2d(dabs[None, None], 3, 1, 1)[0, 0]
    image = image * (1 - dabs) + torch.tensor([0.80, 0.12, 0.10])[:, None, None] * dabs
    grain = (_noise(size, g, octaves=2, base=48) - 0.5) * 0.12
    return (image + grain).clamp(0, 1)


def content_image(size: int = 128) -> torch.Tensor:
    """``[3, size, size]``: a pale-orange star over a soft blue-grey gradient (clear edges to keep)."""
    y, x = _grid(size)
    background = _mix(torch.tensor([0.55, 0.62, 0.72]), torch.tensor([0.25, 0.30, 0.40]), (0.6 * y + 0.4 * x))
    mask = _shape_mask(PHOTO_CLASS, y, x, 0.5, 0.52, 0.36, theta=0.2)
    star = _mix(torch.tensor([1.0, 0.75, 0.45]), torch.tensor([0.85, 0.45, 0.20]), y)
    return torch.where(mask, star, background).clamp(0, 1)


def photo(size: int = 256) -> torch.Tensor:
    """``[3, size, size]``: a photo-like scene with a shaded star standing on textured ground.

    Sky and ground gradients meet at a soft horizon, a warm light from the upper left brightens the
    sky and shades the star (lit side to shadow side), which casts a soft shadow; then vignette and
    sensor grain.
    """
    g = generator(SEED + 2)
    y, x = _grid(size)
    horizon = 0.62 + 0.02 * torch.sin(7 * x)
    sky = _mix(torch.tensor([0.33, 0.52, 0.80]), torch.tensor([0.80, 0.86, 0.92]), (y / 0.62).clamp(0, 1))
    clouds = (_noise(size, g, octaves=4, base=3) - 0.45).clamp(min=0) * 1.4
    sky = sky + clouds * (1 - y)
    texture = _noise(size, g, octaves=6, base=8)
    depth = ((y - horizon) / (1 - horizon)).clamp(0, 1)
    ground = _mix(torch.tensor([0.42, 0.46, 0.28]), torch.tensor([0.30, 0.24, 0.14]), depth)
    ground = ground * (0.75 + 0.5 * texture)
    blend = torch.sigmoid((y - horizon) * size / 3)
    image = sky * (1 - blend) + ground * blend
    # warm light from the upper left
    glow = torch.exp(-((x - 0.12) ** 2 + (y - 0.10) ** 2) / 0.08)
    image = image + torch.tensor([0.35, 0.25, 0.10])[:, None, None] * glow
    # the object: shadow first (offset down-right, blurred), then the star, lit from the upper left
    cx, cy, radius, theta = 0.5, 0.5, 0.34, 0.15
    shadow = _shape_mask(PHOTO_CLASS, y, x, cx + 0.05, cy + 0.06, radius * 1.02, theta).float()
    shadow = F.avg_pool2d(shadow[None, None], 9, 1, 4)[0, 0]
    image = image * (1 - 0.45 * shadow)
    mask = _shape_mask(PHOTO_CLASS, y, x, cx, cy, radius, theta)
    light = ((x - cx) * -0.7 + (y - cy) * -0.7) / radius  # +1 facing the light, -1 away
    star = _mix(torch.tensor([0.62, 0.10, 0.08]), torch.tensor([0.98, 0.42, 0.20]), (0.5 + 0.5 * light).clamp(0, 1))
    star = star * (0.92 + 0.16 * _noise(size, g, octaves=3, base=16))
    image = torch.where(mask, star, image)
    vignette = 1 - 0.35 * ((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.5
    grain = torch.randn(3, size, size, generator=g) * 0.015
    return (image * vignette + grain).clamp(0, 1)


def samples() -> dict[str, torch.Tensor]:
    """Every sample image by file name (``"circle.png"``, ..., ``"digit.png"``, ``"content.png"``, ``"style.png"``,
    ``"photo.png"``) as ``[C, H, W]`` pixels in ``[0, 1]``."""
    out = {f"{name}.png": image for name, image in class_images().items()}
    out["digit.png"] = digit()
    out["content.png"] = content_image()
    out["style.png"] = style_texture()
    out["photo.png"] = photo()
    return out


def write_samples(out: str | os.PathLike) -> list[str]:
    """Write :func:`samples` as PNG files into the folder ``out`` (created); the file names, sorted."""
    import numpy as np
    from PIL import Image

    from ..core.io import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in samples().items():
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        with atomic_path(out / name) as tmp:
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp, format="PNG")
    return sorted(samples_names())


def samples_names() -> list[str]:
    """The file names :func:`write_samples` writes."""
    return [f"{name}.png" for name in CLASSES] + ["digit.png", "content.png", "style.png", "photo.png"]

"""Tensors to the pictures the page shows: PNG bytes and data URLs, fast (PIL, no matplotlib).

Interactive views must answer within ~100 ms, so pictures here are built with numpy and Pillow:
a colormap is a 256-entry lookup table, a channel grid is one sprite image.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
import torch

CELL = 1            # pixels of gap between sprite tiles


@lru_cache(maxsize=8)
def lut(name: str = "viridis") -> np.ndarray:
    """A ``[256, 3]`` uint8 lookup table of a matplotlib colormap."""
    from ..viz.render import colormap

    return (colormap(name)(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    """PNG bytes of an ``[H, W]`` or ``[H, W, 3]`` uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def image_array(x: torch.Tensor, scale: int = 1) -> np.ndarray:
    """``[C, H, W]`` in ``[0, 1]`` -> ``[H*scale, W*scale, 3]`` uint8 (grey images are repeated)."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    a = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return a.repeat(scale, 0).repeat(scale, 1) if scale > 1 else a


def image_png(x: torch.Tensor, scale: int = 1) -> bytes:
    return png(image_array(x, scale))


def colour(values: np.ndarray, lo: float, hi: float, cmap: str = "viridis") -> np.ndarray:
    """Map ``values`` linearly from ``[lo, hi]`` onto a colormap: uint8 ``[..., 3]``."""
    span = hi - lo if hi > lo else 1.0
    idx = np.clip((values - lo) / span * 255, 0, 255).astype(np.uint8)
    return lut(cmap)[idx]


def upsample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[h, w, ...]`` to ``size`` (pixels stay crisp: a unit is a square)."""
    h, w = a.shape[:2]
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return a[rows][:, cols]


def grid_shape(count: int) -> tuple[int, int]:
    """Columns and rows of a near-square grid for ``count`` tiles (wider than tall)."""
    cols = int(np.ceil(np.sqrt(count * 1.5)))
    return cols, int(np.ceil(count / cols))


def sprite(maps: np.ndarray, *, scale: str = "own", cmap: str = "viridis", tile: int | None = None,
           symmetric: bool = False) -> tuple[bytes, dict]:
    """All channels ``[C, h, w]`` as one PNG grid, each tile scaled on its own (or one shared scale).

    Returns the PNG and its geometry ``{cols, rows, tile, gap}`` so the page can map a click to a unit.
    ``symmetric`` centres the scale on 0 (for differences, with a diverging colormap).
    """
    c, h, w = maps.shape
    if tile is None:
        tile = max(1, min(48, 48 // max(h, w))) * max(h, w) if max(h, w) < 48 else max(h, w)
    cols, rows = grid_shape(c)
    out = np.full((rows * (tile + CELL) - CELL, cols * (tile + CELL) - CELL, 3), 255, np.uint8)
    if symmetric:
        big = np.abs(maps).reshape(c, -1).max(1) if scale == "own" else np.full(c, np.abs(maps).max())
        lo, hi = -big, big
    elif scale == "own":
        flat = maps.reshape(c, -1)
        lo, hi = flat.min(1), flat.max(1)
    else:
        lo, hi = np.full(c, maps.min()), np.full(c, maps.max())
    for i in range(c):
        r, q = divmod(i, cols)
        cell = upsample(colour(maps[i], float(lo[i]), float(hi[i]), cmap), (tile, tile))
        out[r * (tile + CELL):r * (tile + CELL) + tile, q * (tile + CELL):q * (tile + CELL) + tile] = cell
    return png(out), {"cols": cols, "rows": rows, "tile": tile, "gap": CELL}

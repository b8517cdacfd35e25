"""The built-in procedural dataset: one coloured shape on a cluttered background.

Every image is drawn from its own random parameters (class, centre, scale, rotation, colour,
background gradient, noise, distractor strokes) by vectorised inside-tests on the pixel
grid, so a batch of thousands of images is a handful of tensor ops.
Images come in chunks of 256 seeded from ``(seed, chunk)``, so ``shapes(n, seed=s)`` is a
prefix of ``shapes(m, seed=s)`` for ``n < m``.
"""

from __future__ import annotations

import math

import torch

from ..core.errors import InputError
from ..core.seeding import generator
from .imageset import ImageSet

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "tee"]
_CHUNK = 256


def _regular_polygon(rho: torch.Tensor, phi: torch.Tensor, sides: int, radius: float) -> torch.Tensor:
    """Inside a regular polygon with circumradius ``radius`` (a vertex on the +x axis)."""
    sector = 2 * math.pi / sides
    a = torch.remainder(phi, sector) - sector / 2
    return rho * torch.cos(a) <= radius * math.cos(math.pi / sides)


def _star(u: torch.Tensor, v: torch.Tensor, points: int = 5, outer: float = 1.0, inner: float = 0.45):
    """Inside a star polygon: in each half-sector, on the origin's side of the outer-inner edge."""
    rho = torch.sqrt(u * u + v * v)
    sector = 2 * math.pi / points
    a = (torch.remainder(torch.atan2(v, u), sector) - sector / 2).abs()  # angle from the inner vertex
    t = sector / 2 - a  # angle from the outer vertex, in [0, sector/2]
    # edge from P1 = (outer, 0) to P2 = inner * (cos s, sin s), s = sector/2, in the half-sector frame
    s = sector / 2
    p2x, p2y = inner * math.cos(s), inner * math.sin(s)
    nx, ny = -(p2y - 0.0), p2x - outer  # a normal of the edge, pointing away from the origin side
    c = nx * outer  # n . P1
    px, py = rho * torch.cos(t), rho * torch.sin(t)
    return (nx * px + ny * py) * math.copysign(1, c) <= abs(c)


def _rho(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(u * u + v * v)


# One inside-test per class, in local coordinates where the shape's radius is about 1.
_TESTS = [
    lambda u, v: _rho(u, v) <= 0.92,                                                      # circle
    lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.75,                                 # square
    lambda u, v: _regular_polygon(_rho(u, v), torch.atan2(v, u) - math.pi / 2, 3, 1.05),  # triangle
    lambda u, v: _star(u, v),                                                             # star
    lambda u, v: ((u.abs() <= 0.28) & (v.abs() <= 1.0)) | ((v.abs() <= 0.28) & (u.abs() <= 1.0)),  # cross
    lambda u, v: (_rho(u, v) <= 0.95) & (_rho(u, v) >= 0.55),                             # ring
    lambda u, v: (_rho(u, v) <= 0.95) & ((u - 0.45) ** 2 + v * v >= 0.72**2),             # crescent
    lambda u, v: ((u.abs() <= 0.95) & (v <= -0.55) & (v >= -0.95)) | ((u.abs() <= 0.25) & (v.abs() <= 0.95)),  # tee
]


def _membership(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Object masks for local coordinates ``u, v`` ([B, P]) of shape classes ``kind`` ([B]).

    Each class's test runs only on the images of that class.
    """
    mask = torch.zeros(u.shape, dtype=torch.bool)
    for k, inside in enumerate(_TESTS):
        rows = (kind == k).nonzero().squeeze(1)
        if len(rows):
            mask[rows] = inside(u[rows], v[rows])
    return mask


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB, inputs in [0, 1], output ``[..., 3]``."""
    k = torch.tensor([5.0, 3.0, 1.0], device=h.device)
    t = torch.remainder(k + h.unsqueeze(-1) * 6, 6)
    return v.unsqueeze(-1) - v.unsqueeze(-1) * s.unsqueeze(-1) * torch.clamp(torch.minimum(t, 4 - t), 0, 1)


def _draw_strokes(img: torch.Tensor, size: int, g: torch.Generator, n_strokes: int = 4) -> torch.Tensor:
    """Paint class-independent distractor segments (about 1.5 px wide) into ``img`` [n, 3, P]."""
    n = img.shape[0]
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    x0, y0 = r(n, n_strokes, 1), r(n, n_strokes, 1)
    length = 0.15 + 0.35 * r(n, n_strokes, 1)
    angle = 2 * math.pi * r(n, n_strokes, 1)
    keep = r(n, n_strokes) < 0.8
    colour = _hsv_to_rgb(r(n, n_strokes), r(n, n_strokes), 0.2 + 0.8 * r(n, n_strokes))   # [n, S, 3]
    t = torch.linspace(0, 1, 2 * size)                                                   # samples along
    offsets = torch.tensor([-0.35, 0.35]) / size                                         # across
    ex, ey = torch.cos(angle), torch.sin(angle)
    xs = x0 + length * t * ex                                                            # [n, S, T]
    ys = y0 + length * t * ey
    xs = (xs.unsqueeze(-1) - offsets * ey.unsqueeze(-1)).flatten(2)                      # [n, S, 2T]
    ys = (ys.unsqueeze(-1) + offsets * ex.unsqueeze(-1)).flatten(2)
    inside = (xs >= 0) & (xs < 1) & (ys >= 0) & (ys < 1)
    index = (ys.clamp(0, 1 - 1e-6) * size).long() * size + (xs.clamp(0, 1 - 1e-6) * size).long()
    for k in range(n_strokes):
        rows = keep[:, k]
        idx = index[rows, k]
        src = torch.where(inside[rows, k].unsqueeze(1), colour[rows, k].unsqueeze(-1),
                          img[rows].gather(2, idx.unsqueeze(1).expand(-1, 3, -1)))
        img[rows] = img[rows].scatter(2, idx.unsqueeze(1).expand(-1, 3, -1), src)
    return img


def _chunk(n: int, size: int, seed: int, spurious: float, n_classes: int):
    g = generator(seed)
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in [0, 1]
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.reshape(1, -1), py.reshape(1, -1)

    labels = torch.randint(0, n_classes, (n,), generator=g)
    scale = 0.17 + 0.15 * r(n)                                   # object radius / image size
    cx = scale + (1 - 2 * scale) * r(n)
    cy = scale + (1 - 2 * scale) * r(n)
    theta = 2 * math.pi * r(n)
    obj_rgb = _hsv_to_rgb(r(n), 0.55 + 0.45 * r(n), 0.65 + 0.35 * r(n))            # [n, 3]
    bg_a = _hsv_to_rgb(r(n), 0.5 * r(n), 0.15 + 0.55 * r(n))
    bg_b = _hsv_to_rgb(r(n), 0.5 * r(n), 0.15 + 0.55 * r(n))
    bg_angle = 2 * math.pi * r(n)
    noise_std = 0.02 + 0.04 * r(n, 1, 1, 1)
    planted = r(n) < spurious

    # background: linear gradient between two colours along a random direction
    proj = ((px - 0.5) * torch.cos(bg_angle)[:, None] + (py - 0.5) * torch.sin(bg_angle)[:, None]) / math.sqrt(2)
    proj = (proj + 0.5)[:, None]
    img = bg_a[:, :, None] * (1 - proj) + bg_b[:, :, None] * proj                      # [n, 3, P]
    img = _draw_strokes(img, size, g)
    # the object, in its own rotated and scaled frame
    c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    du, dv = (px - cx[:, None]) / scale[:, None], (py - cy[:, None]) / scale[:, None]
    mask = _membership(labels, c * du + s * dv, -s * du + c * dv)                    # [n, P]
    img = torch.where(mask[:, None], obj_rgb[:, :, None], img)

    # spurious marker: a small black-outlined square of a class-specific hue, in the corner
    # farthest from the object (planted only where `planted`)
    m, b = 0.09, 0.018
    x0 = torch.where(cx < 0.5, 1 - 0.06 - m, 0.06)[:, None]
    y0 = torch.where(cy < 0.5, 1 - 0.06 - m, 0.06)[:, None]
    marker = (px >= x0) & (px <= x0 + m) & (py >= y0) & (py <= y0 + m) & planted[:, None]
    core = (px >= x0 + b) & (px <= x0 + m - b) & (py >= y0 + b) & (py <= y0 + m - b)
    marker_rgb = _hsv_to_rgb(labels.float() / n_classes, torch.ones(n), torch.ones(n))[:, :, None]
    img = torch.where(marker[:, None], marker_rgb * core[:, None], img)
    mask = mask & ~marker

    images = (img.view(n, 3, size, size) + torch.randn(n, 3, size, size, generator=g) * noise_std).clamp_(0, 1)
    return images, labels, mask.view(n, 1, size, size), marker.view(n, 1, size, size)


def shapes(n: int, *, size: int = 64, seed: int = 0, spurious: float = 0.0) -> ImageSet:
    """``n`` procedural RGB images of one shape each, with ground-truth object masks.

    Args:
        n: number of images.
        size: height and width in pixels (at least 16).
        seed: same seed, same images (and ``shapes(n, seed=s)`` is a prefix of ``shapes(m, seed=s)``).
        spurious: fraction of images carrying a small class-coloured marker square (a
            "Clever Hans" shortcut); its pixels are in ``marker_masks`` and excluded from ``masks``.

    Returns:
        An :class:`ImageSet` with ``images [n, 3, size, size]``, ``labels``, ``masks``,
        ``marker_masks`` and ``classes`` (``underhood.datasets.shapes.CLASSES``).

    Example:
        >>> data = shapes(8, seed=1)
        >>> data.images.shape, data.classes[int(data.labels[0])] in CLASSES
        (torch.Size([8, 3, 64, 64]), True)
    """
    if not isinstance(n, int) or n < 0:
        raise InputError(f"n: expected a non-negative int, got {n!r}")
    if not isinstance(size, int) or size < 16:
        raise InputError(f"size: expected an int >= 16, got {size!r}")
    if not 0.0 <= float(spurious) <= 1.0:
        raise InputError(f"spurious: expected a fraction in [0, 1], got {spurious!r}")
    parts = []
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        count = min(_CHUNK, n - start)
        chunk_seed = (int(seed) * 1_000_003 + chunk * 7919) % (2**63 - 1)
        full = _chunk(_CHUNK, size, chunk_seed, float(spurious), len(CLASSES))
        parts.append([t[:count] for t in full])
    if not parts:
        empty = torch.zeros(0, 3, size, size)
        parts = [[empty, torch.zeros(0, dtype=torch.long), empty[:, :1].bool(), empty[:, :1].bool()]]
    images, labels, masks, markers = (torch.cat(p) for p in zip(*parts))
    return ImageSet(images, labels, list(CLASSES), masks, markers if spurious > 0 else None,
                    info={"dataset": "shapes", "seed": seed, "size": size, "spurious": spurious})


def recolour_markers(data: ImageSet, labels: torch.Tensor) -> ImageSet:
    """A copy of ``data`` whose marker squares carry the colour of class ``labels`` (for shortcut tests).

    The bright core of each marker (the ``marker_masks`` pixels above 0.5 in some channel; the
    black outline stays) is shifted from its true class's hue to that of ``labels[i]``, keeping
    the pixel noise where no clipping intervenes. Objects, true ``labels`` and masks are unchanged.
    """
    if data.marker_masks is None:
        raise InputError("data: no marker_masks; generate it with shapes(..., spurious=1.0)")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != data.labels.shape:
        raise InputError(f"labels: expected {tuple(data.labels.shape)} marker classes, got {tuple(labels.shape)}")
    k, ones = len(data.classes), torch.ones(len(labels))
    old = _hsv_to_rgb(data.labels.float() / k, ones, ones)[:, :, None, None]
    new = _hsv_to_rgb(labels.float() / k, ones, ones)[:, :, None, None]
    core = data.marker_masks & (data.images.amax(1, keepdim=True) > 0.5)
    images = torch.where(core, (data.images + new - old).clamp(0, 1), data.images)
    return ImageSet(images, data.labels.clone(), list(data.classes), data.masks, data.marker_masks,
                    {**data.info, "recoloured_markers": True})

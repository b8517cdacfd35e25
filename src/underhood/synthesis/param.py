"""Parametrisations of a synthetic image, and the random transforms applied at each step.

- ``pixels``: one free value per pixel and channel, squashed into ``[0, 1]`` by a sigmoid.
- ``raw``: one free value per pixel and channel, used as it is (no squashing: a gradient step moves the
  pixels themselves, ``x <- x + lr * grad``, as the lectures write gradient ascent); values may leave ``[0, 1]``.
- ``fourier`` (Olah et al. 2017): the image's 2-D Fourier coefficients, scaled by ``1 / f^decay``
  so that every frequency learns at a comparable rate, and colours decorrelated: the three
  channels are mixed by the square root of an RGB colour covariance (the one of natural images
  that Lucid uses), then squashed by a sigmoid. Grey images skip the colour mixing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import choice

# square root of the colour covariance of natural images (Lucid's ``color_correlation_svd_sqrt``)
COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_SQRT = COLOR_SQRT / COLOR_SQRT.norm(dim=0).max()
PARAMS = ("pixels", "fourier", "raw")


class Image(nn.Module):
    """A batch of images ``[N, C, H, W]`` in ``[0, 1]`` computed from free parameters."""

    def __init__(self, shape: tuple[int, int, int, int], kind: str = "fourier", *, seed: int = 0, sd: float = 0.01,
                 decay: float = 1.0, decorrelate: bool = True, init: torch.Tensor | None = None) -> None:
        super().__init__()
        choice("param", kind, PARAMS)
        n, c, h, w = shape
        self.kind, self.shape = kind, shape
        self.decorrelate = decorrelate and c == 3
        g = torch.Generator().manual_seed(seed)
        if kind == "pixels":
            start = torch.randn(shape, generator=g) * sd if init is None else torch.logit(init.clamp(1e-3, 1 - 1e-3))
            self.raw = nn.Parameter(start.clone())
        elif kind == "raw":  # grey plus noise unless a start is given
            start = 0.5 + torch.randn(shape, generator=g) * sd if init is None else init.float()
            self.raw = nn.Parameter(start.clone())
        else:
            fy = torch.fft.fftfreq(h)[:, None]
            fx = torch.fft.rfftfreq(w)[None, :]
            freq = (fy ** 2 + fx ** 2).sqrt()
            scale = 1.0 / freq.clamp(min=1.0 / max(h, w)) ** decay
            # / 4 (Lucid: a sqrt(hw) scale and a 1/(hw) inverse) folded in here: a power of two, so exact
            self.register_buffer("scale", scale[None, None, :, :, None] / 4.0)
            self.raw = nn.Parameter(torch.randn(n, c, h, w // 2 + 1, 2, generator=g) * sd)

    def forward(self) -> torch.Tensor:
        if self.kind == "pixels":
            return torch.sigmoid(self.raw)
        if self.kind == "raw":
            return self.raw
        n, c, h, w = self.shape
        spectrum = torch.view_as_complex((self.raw * self.scale).contiguous())
        x = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")
        if self.decorrelate:  # a matmul over flattened pixels: faster than the equivalent einsum on CPU
            x = (COLOR_SQRT.to(x.device, x.dtype) @ x.reshape(n, c, h * w)).reshape(n, c, h, w)
        return torch.sigmoid(x)


TRANSFORMS = {"pad": 8, "jitter": 8, "scale": (0.9, 0.95, 1.0, 1.05, 1.1), "rotate": (-8, 8), "jitter2": 4}
"""Lucid's standard transforms, sized for 224-pixel images (the ``"lucid"`` preset)."""

SMALL_TRANSFORMS = {"pad": 4, "jitter": 4, "scale": (0.95, 1.0, 1.05), "rotate": (-5, 5), "jitter2": 2}
"""The same kinds, milder, for images under 128 pixels: Lucid's jitters move a 32-64 pixel image by
12-25% of its width, and class images of the built-in models then miss their class (``"small"``)."""

SMALL_BELOW = 128


def standard_transforms(size: tuple[int, int]) -> dict:
    """The ``"standard"`` preset for an image of ``size``: :data:`TRANSFORMS` from 128 pixels up,
    :data:`SMALL_TRANSFORMS` below."""
    return dict(TRANSFORMS if min(size) >= SMALL_BELOW else SMALL_TRANSFORMS)


def transform(x: torch.Tensor, g: torch.Generator, *, pad: int = 0, jitter: int = 0, scale: tuple[float, ...] = (),
              rotate: tuple[float, float] | None = None, jitter2: int = 0) -> torch.Tensor:
    """The Lucid "standard" transforms, one random draw per call for the whole batch: pad with
    grey, jitter by up to ``jitter`` pixels, rescale by a factor from ``scale``, rotate by an angle in
    ``rotate`` (degrees), crop the centre back to the input's size (so any model takes it), jitter
    again by up to ``jitter2``. Differentiable in ``x``.

    Computed in two image ops rather than six, with the same result: a jitter within the padding
    only moves the image on its grey canvas (an asymmetric pad); the crop and the second
    (circular) jitter only pick and permute output pixels, so they act on the sampling grid, and
    ``grid_sample`` computes just the pixels that are kept.
    """
    n, h, w = len(x), x.shape[-2], x.shape[-1]

    def rand_int(k: int) -> int:
        return int(torch.randint(-k, k + 1, (), generator=g)) if k else 0

    # the draws, in the order of the steps
    dy, dx = rand_int(jitter), rand_int(jitter)
    s = scale[int(torch.randint(len(scale), (), generator=g))] if scale else 1.0
    angle = math.radians(float(torch.empty(()).uniform_(rotate[0], rotate[1], generator=g))) if rotate else 0.0
    dy2, dx2 = rand_int(jitter2), rand_int(jitter2)

    if pad and jitter <= pad:  # a circular shift of the canvas by at most its border moves only grey
        x = F.pad(x, (pad + dx, pad - dx, pad + dy, pad - dy), value=0.5)
    else:
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), value=0.5)
        if jitter:
            x = torch.roll(x, (dy, dx), (2, 3))
    if scale or rotate:
        cos, sin = math.cos(angle) / s, math.sin(angle) / s
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta, [1, *x.shape[1:]], align_corners=False)
        grid = grid[:, pad:pad + h, pad:pad + w]
        if jitter2:
            grid = torch.roll(grid, (dy2, dx2), (1, 2))
        return F.grid_sample(x, grid.expand(n, -1, -1, -1), padding_mode="reflection", align_corners=False)
    if pad:
        x = x[..., pad:pad + h, pad:pad + w]
    if jitter2:
        x = torch.roll(x, (dy2, dx2), (2, 3))
    return x

"""Small hand-written transformer-style models for the token-layout tests (random weights, 3x32x32, 4 classes).

- ``TinyViT``: 8x8 patches -> 16 tokens, a class token (and optional register tokens), two
  pre-norm encoder blocks with GELU MLPs, the head on the class token. Block outputs are ``[N, L, C]``.
- ``TinySwin``: a patch embedding permuted to channels-last, two stages of NHWC blocks and a patch
  merging (2x2 -> 1) in between; block outputs are ``[N, h, w, C]``.
- ``TinyConvNeXt``: ConvNeXt-style blocks (depthwise conv in NCHW, then LayerNorm and the MLP in NHWC,
  permuted back, residual); the ``mlp`` submodules output ``[N, h, w, C]``, the blocks ``[N, C, h, w]``.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, classes: int = 4, dim: int = 32, patch: int = 8, size: int = 32, registers: int = 0) -> None:
        super().__init__()
        self.input_size = (3, size, size)
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        n = (size // patch) ** 2
        self.prefix = 1 + registers
        self.cls = nn.Parameter(torch.randn(1, self.prefix, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, n + self.prefix, dim) * 0.5)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos[:, :t.shape[1] + self.prefix]
        t = self.blocks(t)
        return self.head(self.norm(t)[:, 0])


class SwinBlock(nn.Module):
    """Channels-last block: LayerNorm + MLP over C, and a 3x3 depthwise mix over (h, w)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, h, w, C]
        x = x + self.mix(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(x))


class Merge(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(4 * dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)
        return self.reduce(x)


class TinySwin(nn.Module):
    def __init__(self, classes: int = 4, dim: int = 16, size: int = 32) -> None:
        super().__init__()
        self.input_size = (3, size, size)
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.stage1 = nn.Sequential(SwinBlock(dim), SwinBlock(dim))
        self.merge = Merge(dim)
        self.stage2 = nn.Sequential(SwinBlock(2 * dim))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).permute(0, 2, 3, 1)
        t = self.stage2(self.merge(self.stage1(t)))
        return self.head(self.norm(t).mean((1, 2)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, h, w]
        y = self.mlp(self.dw(x).permute(0, 2, 3, 1))
        return x + y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, classes: int = 4, dim: int = 16, size: int = 32) -> None:
        super().__init__()
        self.input_size = (3, size, size)
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.stages = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {"vit": TinyViT, "vit-reg": lambda: TinyViT(registers=4), "swin": TinySwin,
             "convnext": TinyConvNeXt}[name]()
    return model.eval()

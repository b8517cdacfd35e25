"""Rank statistics shared by the families (torch, batched, any device)."""

from __future__ import annotations

import torch

from .errors import InputError


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P along dim 1 of ``x [N, P]``, ties given their average rank (as scipy.stats.rankdata)."""
    n, p = x.shape
    values, order = x.sort(dim=1, stable=True)
    pos = torch.arange(p, device=x.device).expand(n, p)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]  # a tie group starts here
    end = torch.ones_like(new)
    end[:, :-1] = new[:, 1:]  # a tie group ends here
    first = torch.where(new, pos, 0).cummax(1).values
    last = torch.where(end, pos, p).flip(1).cummin(1).values.flip(1)
    return torch.empty_like(values).scatter_(1, order, (first + last).to(values.dtype) / 2 + 1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row: Pearson correlation of the ranks (ties averaged), float64.

    ``a``, ``b``: ``[N, ...]`` with equal shapes (each sample flattened) -> ``[N]``; a constant row gives
    NaN (as scipy.stats.spearmanr).
    """
    if a.shape != b.shape or a.ndim < 1:
        raise InputError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    ra = ranks(a.detach().flatten(1).double())
    rb = ranks(b.detach().to(a.device).flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))

"""Linear centred kernel alignment (Kornblith et al. 2019): how alike two representations of the same inputs are.

With ``X`` ``[n, p]`` and ``Y`` ``[n, q]`` the features of the same ``n`` inputs (two layers, or one
layer of two networks), each column centred, linear CKA is

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

the HSIC of the linear Gram matrices ``K = X X^T``, ``L = Y Y^T`` normalised by ``sqrt(HSIC(K, K) HSIC(L, L))``,
computed in feature space (``p x q`` products) or, for features wider than the number of inputs, from the
``n x n`` Gram matrices (``tr(K L) = ||Y^T X||_F^2``), whichever is smaller. It lies in ``[0, 1]``, is 1 for ``X``
against itself, and does not change under orthogonal transforms or isotropic scaling of either representation
(but does under arbitrary invertible linear maps, unlike CCA).
"""

from __future__ import annotations

import torch

from ..core.errors import InputError


def _matrix(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim < 2 or t.is_complex():
        raise InputError(f"{name}: expected a [n, features] (or [n, ...]) tensor, got "
                         f"{getattr(t, 'shape', type(t).__name__)}")
    t = t.detach().flatten(1).double()
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: holds NaN or infinite values; CKA needs finite features")
    return t - t.mean(0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between the features ``x`` ``[n, p]`` and ``y`` ``[n, q]`` of the same ``n`` inputs.

    Feature maps ``[n, C, h, w]`` are flattened per input. Computed in float64 on the tensors' device.

    Returns:
        A float in ``[0, 1]``.

    Example:
        >>> x = torch.randn(50, 8)
        >>> round(linear_cka(x, 3 * x), 6)
        1.0
    """
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if len(x) != len(y):
        raise InputError(f"y: {len(y)} rows for the {len(x)} of x; give the features of the same inputs, in order")
    if len(x) < 2:
        raise InputError(f"x: {len(x)} input(s); CKA compares representations of at least 2 inputs")
    if max(x.shape[1], y.shape[1]) > len(x):  # wide feature maps: the n x n Gram matrices are the smaller ones
        k, m = x @ x.T, y @ y.T
        xx, yy, xy = torch.linalg.matrix_norm(k), torch.linalg.matrix_norm(m), (k * m).sum()
    else:
        xx, yy = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
        xy = torch.linalg.matrix_norm(y.T @ x).pow(2)
    for name, norm in (("x", xx), ("y", yy)):
        if float(norm) == 0.0:
            raise InputError(f"{name}: every feature is constant over the inputs; CKA is undefined for it")
    return float(xy / (xx * yy))


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Centred kernel alignment of two representations: linear CKA (:func:`linear_cka`), the kernel offered.

    Example:
        >>> a = torch.randn(64, 16)
        >>> cka(a, a @ torch.linalg.qr(torch.randn(16, 16))[0]) > 0.999999
        True
    """
    return linear_cka(x, y)


__all__ = ["cka", "linear_cka"]

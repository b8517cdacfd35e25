"""Linear CKA against its definition: the HSIC form on centred Gram matrices computed the slow way, and its
invariances (orthogonal transforms, isotropic scaling), range and errors."""

from __future__ import annotations

import pytest
import torch

from underhood.core.errors import InputError
from underhood.transfer import cka, linear_cka


def _hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kornblith et al. 2019, eq. (3)-(4), n x n: HSIC(K, L) = tr(K H L H) / (n - 1)^2 with linear kernels."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)

    def hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741
        return torch.trace(k @ h @ l @ h) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T  # noqa: E741
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 12, generator=g) + 3.0  # offsets: centring must matter
    y = x[:, :5] @ torch.randn(5, 7, generator=g) + 0.5 * torch.randn(60, 7, generator=g)
    return x.double(), y.double()


def test_equals_the_gram_matrix_hsic_form():
    for seed in range(3):
        x, y = _data(seed)
        assert abs(linear_cka(x, y) - _hsic_cka(x, y)) < 1e-10
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(40, 3, 4, 4, generator=g), torch.randn(40, 20, generator=g)  # maps are flattened
    assert abs(cka(a, b) - _hsic_cka(a, b)) < 1e-10


def test_wide_features_take_the_gram_path_with_the_same_value():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 200, generator=g) + 1.0  # wider than the inputs: n x n Gram matrices
    y = x[:, :50] @ torch.randn(50, 300, generator=g)
    narrow = x[:, :10]
    assert abs(linear_cka(x, y) - _hsic_cka(x, y)) < 1e-10
    assert abs(linear_cka(x, narrow) - _hsic_cka(x, narrow)) < 1e-10  # one wide, one narrow


def test_one_against_itself_and_in_unit_interval():
    x, y = _data()
    assert abs(cka(x, x) - 1.0) < 1e-12
    for seed in range(5):
        a, b = _data(seed)
        assert 0.0 <= cka(a, torch.randn_like(b)) <= 1.0
        assert 0.0 <= cka(a, b) <= 1.0
    assert cka(x, y) > cka(x, torch.randn(60, 7, generator=torch.Generator().manual_seed(5)))


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = _data()
    g = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))[0]
    base = cka(x, y)
    assert abs(cka(x.double() @ q, y) - base) < 1e-10
    assert abs(cka(7.5 * x, 0.01 * y) - base) < 1e-10
    assert abs(cka(x + 100.0, y) - base) < 1e-8  # a shift is centred away
    skew = torch.diag(torch.linspace(0.1, 10, 12, dtype=torch.float64))  # not isotropic: CKA may change
    assert abs(cka(x.double() @ skew, y) - base) > 1e-3


def test_errors():
    x, y = _data()
    with pytest.raises(InputError, match="y: 59 rows for the 60 of x"):
        cka(x, y[:59])
    with pytest.raises(InputError, match="x: every feature is constant"):
        cka(torch.ones(10, 3), torch.randn(10, 3))
    with pytest.raises(InputError, match="x: expected a"):
        cka(torch.randn(10), torch.randn(10, 3))
    with pytest.raises(InputError, match="at least 2 inputs"):
        cka(torch.randn(1, 3), torch.randn(1, 3))

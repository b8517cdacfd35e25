"""Tier 3 of the influence validation: the linear datamodeling score of a small deep net (slow lane).

Single-point leave-one-out on a deep net is dominated by retraining noise; LDS over half subsets is what
is measured and claimed.
"""

from __future__ import annotations

import time

import pytest
import torch

from underhood.influence import validation as V

from .conftest import check_protocol

pytestmark = pytest.mark.slow


def test_full_batch_training_is_deterministic_and_checkpoints():
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(64) % 10
    nets = [V._mlp(64, 16, 10, seed=3).double() for _ in range(2)]
    runs = [V.train_full_batch(net, x, y, steps=20, lr=0.1, weight_decay=1e-3, every=5) for net in nets]
    assert [lr for _, lr in runs[0]] == [0.1] * 4  # steps 5, 10, 15 and the final weights
    for (a, _), (b, _) in zip(*runs):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, runs[0][-1][0][k]) for k, p in nets[0].state_dict().items())


def test_lds_of_cg_ekfac_and_tracin_on_a_digits_mlp():
    start = time.process_time(), time.perf_counter()
    r = V.lds(progress=False)
    cpu, wall = time.process_time() - start[0], time.perf_counter() - start[1]
    check_protocol(r, "LDS")
    assert r.masks.shape == (50, 1000) and (r.masks.sum(1) == 500).all()
    assert r.actual.shape == (50, 40) and r.damping > 0
    for m in ("cg", "ekfac", "tracin"):
        low, high = r.intervals[m]
        assert low <= r.lds[m] <= high
        assert r.lds[m] > 0.1, r.lds  # far above chance (0); dattri's MNIST MLP: 0.26 CG, 0.15 TracIn
    assert r.lds["cg"] > r.lds["tracin"] - 0.05, r.lds
    fig = r.figure()
    assert len(fig.axes) == 1
    print(f"\nLDS {r.lds} intervals {r.intervals} damping {r.damping:.4g} ({r.info['damping_rule']}) "
          f"test accuracy {r.info['test_accuracy']:.3f}; cpu {cpu:.0f} s, wall {wall:.0f} s")

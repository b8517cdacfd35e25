"""The shared batching helper: measured choice, cache, memory bound, explicit sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underhood.core import batching
from underhood.core.errors import InputError


def test_auto_batch_size_is_a_candidate_and_cached(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    net.eval()
    b = batching.auto_batch_size(net, (3, 16, 16), candidates=(1, 4, 16))
    assert b in (1, 4, 16)
    calls = []
    monkeypatch.setattr(batching, "_time", lambda *a: calls.append(a) or 1.0)
    assert batching.auto_batch_size(net, (3, 16, 16), candidates=(1, 4, 16)) == b
    assert not calls  # served from the cache


def test_auto_batch_size_picks_the_fastest_measured(monkeypatch):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    # pretend batch 4 is the fastest per image and 16 much slower (as on contended CPUs)
    seconds = {1: 1.0, 4: 1.0, 16: 40.0}
    monkeypatch.setattr(batching, "_time", lambda fn, x, device: seconds[len(x)])
    assert batching.auto_batch_size(net, (3, 2, 2), candidates=(1, 4, 16)) == 4


def test_memory_bound_caps_the_batch(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    monkeypatch.setattr(batching, "memory_bound", lambda device: 3 * batching.per_sample_bytes(
        net, (3, 32, 32), torch.device("cpu"), False))
    monkeypatch.setattr(batching, "_time", lambda fn, x, device: 1e-6)  # bigger would look faster
    assert batching.auto_batch_size(net, (3, 32, 32), candidates=(1, 2, 4, 16)) == 2


def test_grad_mode_leaves_no_gradients():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    batching.auto_batch_size(net, (3, 2, 2), grad=True, candidates=(1, 2))
    assert all(p.grad is None for p in net.parameters())


def test_resolve_and_batched():
    net = nn.Linear(2, 2)
    assert batching.resolve_batch_size(7, net, (2,)) == 7
    with pytest.raises(InputError, match="batch_size"):
        batching.resolve_batch_size(0, net, (2,))
    x = torch.arange(10.0).view(10, 1)
    assert torch.equal(batching.batched(lambda t: t * 2, x, 3), x * 2)
    assert [s.stop for s in batching.batches(10, 4)] == [4, 8, 10]


def test_auto_batch_size_on_a_gpu_takes_the_largest_that_fits_without_timing(monkeypatch):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    monkeypatch.setattr(batching, "memory_bound", lambda device: 600 * 1000)
    monkeypatch.setattr(batching, "per_sample_bytes", lambda *args: 1000)  # 600 samples fit

    def no_timing(*args, **kwargs):
        raise AssertionError("a GPU's batch size is not timed")
    monkeypatch.setattr(batching, "_time", no_timing)
    monkeypatch.setattr(batching, "_CACHE", {})
    assert batching.auto_batch_size(net, (3, 2, 2), device=torch.device("cuda")) == 256
    monkeypatch.setattr(batching, "memory_bound", lambda device: 5000 * 1000)
    monkeypatch.setattr(batching, "_CACHE", {})
    assert batching.auto_batch_size(net, (3, 2, 2), device=torch.device("cuda")) == 1024

"""Test fixtures, and the guard that fails any test leaving a hook on a model or changing its mode.

Every ``nn.Module`` built during a test is tracked. ``train()``/``eval()``/``requires_grad_()``
calls made by test code (or by ``underhood.models``, which owns the models it builds and
loads) set the state a module is expected to have; any other underhood code must put the
state back. At teardown, a module with a hook left or a state differing from the expected
one fails the test.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref

import pytest
import torch
from torch import nn

torch.set_num_threads(2)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
"""Where the command-line-versus-library tests run both sides: the command gets ``--device DEVICE`` and the
library side a model on DEVICE, so a CUDA machine compares CUDA with CUDA (``--device auto`` picks CUDA there)."""

ON_GPU = DEVICE != "cpu"
if ON_GPU:  # cuBLAS is deterministic only with a fixed workspace; read when its first handle is made
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def same(actual: torch.Tensor, expected: torch.Tensor, *, atol: float = 0.0, rtol: float = 0.0,
         gpu_atol: float = 1e-5, gpu_rtol: float = 1e-4) -> None:
    """``actual`` equals ``expected`` (moved to the CPU first): within ``atol``/``rtol`` (0: bit for bit) on the
    CPU; on a GPU within at least ``gpu_atol``/``gpu_rtol``. Integer and bool tensors must be equal everywhere.

    Why a tolerance on a GPU, even with :func:`deterministic` on: the command and the library run the same
    kernels on the same shapes, but a few CUDA backward kernels have no deterministic version (bilinear
    upsampling, grid sampling: the synthesis transforms) and accumulate with atomics in an order that
    varies between runs, so sums differ in their last bits (float32 epsilon 1.2e-7 times the number of
    terms). The default covers a few hundred such terms in one pass; a test that iterates (an attack, a
    render, Adam steps, where g / sqrt(v) enlarges tiny differences of tiny gradients) states its own,
    in pixel units: 1e-3 is a quarter of one 8-bit grey level, invisible in the saved images.
    """
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    if actual.is_floating_point():
        atol, rtol = (max(atol, gpu_atol), max(rtol, gpu_rtol)) if ON_GPU else (atol, rtol)
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
    else:
        assert torch.equal(actual, expected), (actual, expected)


_TRACKED: weakref.WeakSet = weakref.WeakSet()
_EXPECTED_MODE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_EXPECTED_GRAD: dict[int, tuple[weakref.ref, bool]] = {}  # id(param) -> (ref, flag); tensors are unhashable by value
_OWNERS = ("underhood.models",)


def _caller_is_owner() -> bool:
    """True when the nearest caller outside torch.nn is a test or underhood.models (not other underhood code)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_globals.get("__name__", "").startswith("torch")
                                 or frame.f_globals.get("__name__") == __name__):
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return not name.startswith("underhood") or name.startswith(_OWNERS)


_orig_init = nn.Module.__init__
_orig_train = nn.Module.train
_orig_requires_grad = nn.Parameter.requires_grad_


def _init(self, *args, **kwargs):
    _orig_init(self, *args, **kwargs)
    _TRACKED.add(self)


def _train(self, mode: bool = True):
    result = _orig_train(self, mode)
    if _caller_is_owner():
        for m in self.modules():
            _EXPECTED_MODE[m] = m.training
    return result


def _requires_grad(self, requires_grad: bool = True):
    result = _orig_requires_grad(self, requires_grad)
    if _caller_is_owner():
        _EXPECTED_GRAD[id(self)] = (weakref.ref(self), requires_grad)
    return result


def model_problems(modules) -> list[str]:
    """What is wrong with these modules: hooks left, mode or requires_grad not as expected."""
    problems = []
    for m in list(modules):
        name = type(m).__name__
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(m, attr, None):
                problems.append(f"{name} has {len(getattr(m, attr))} {attr} left")
        expected = _EXPECTED_MODE.get(m, True)
        if m.training != expected:
            problems.append(f"{name}.training is {m.training}, expected {expected}")
        for p in m.parameters(recurse=False):
            ref, want = _EXPECTED_GRAD.get(id(p), (None, True))
            want = want if ref is not None and ref() is p else True
            if p.requires_grad != want and p.is_leaf:
                problems.append(f"a parameter of {name} has requires_grad={p.requires_grad}, expected {want}")
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(torch.nn.modules.module, attr, None):
            problems.append(f"global {attr} left")
    return problems


@pytest.fixture(autouse=True)
def model_state_guard(monkeypatch, request):
    monkeypatch.setattr(nn.Module, "__init__", _init)
    monkeypatch.setattr(nn.Module, "train", _train)
    monkeypatch.setattr(nn.Parameter, "requires_grad_", _requires_grad)
    _TRACKED.clear()
    yield
    if request.node.get_closest_marker("no_state_guard"):
        return
    problems = model_problems(_TRACKED)
    _TRACKED.clear()
    if problems:
        pytest.fail("model state not restored: " + "; ".join(sorted(set(problems))[:6]), pytrace=False)


@pytest.fixture(scope="session")
def device() -> str:
    """:data:`DEVICE`: ``"cuda"`` on a machine with a GPU, else ``"cpu"``."""
    return DEVICE


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms`` for one test (the CLI-versus-library tests): on a GPU, cuDNN and
    the ops that have one take their deterministic kernel, so both sides follow the same arithmetic; ops
    without one only warn (``warn_only``), and :func:`same`'s tolerance covers them. Restored afterwards."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
        yield
    torch.use_deterministic_algorithms(before, warn_only=warn)


@pytest.fixture
def shapes_model():
    import underhood

    return underhood.load_model("shapes", device="cpu")


@pytest.fixture(scope="session")
def shapes_small():
    import underhood

    return underhood.datasets.shapes(16, seed=123)


@pytest.fixture
def shape_pngs(tmp_path):
    """Two held-out-style shapes images written as PNG files (the command-line tests' inputs)."""
    import underhood
    from underhood.viz.render import to_png

    paths = []
    for i, x in enumerate(underhood.datasets.shapes(2, seed=9).images):
        path = tmp_path / f"shape{i}.png"
        path.write_bytes(to_png(x))
        paths.append(str(path))
    return paths


def check_protocol(result, name: str | None = None) -> None:
    """The result protocol every family's result keeps: a core Result, a short repr with shapes and key
    figures (never whole tensors), plain scalars and a text summary."""
    from underhood.core.results import Result

    name = name or type(result).__name__
    assert isinstance(result, Result) and type(result).__name__ == name
    text = repr(result)
    assert text.startswith(f"{name}(") and len(text) <= 400 and "tensor(" not in text, text
    scalars = result.scalars()
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in scalars.values()), scalars
    summary = result.summary()
    assert isinstance(summary, str) and summary.strip()

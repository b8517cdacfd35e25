"""Test fixtures, and the guard that fails any test leaving a hook on a model or changing its mode.

Every ``nn.Module`` built during a test is tracked. ``train()``/``eval()``/``requires_grad_()``
calls made by test code (or by ``underhood.models``, which owns the models it builds and
loads) set the state a module is expected to have; any other underhood code must put the
state back. At teardown, a module with a hook left or a state differing from the expected
one fails the test.
"""

from __future__ import annotations

import sys
import weakref

import pytest
import torch
from torch import nn

torch.set_num_threads(2)

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

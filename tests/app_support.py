"""What the explorer's endpoint tests share: the model-state guard and waiting for a background job."""

from __future__ import annotations

import time

import pytest
from torch import nn


def state_of(model: nn.Module) -> list:
    """Every module's training flag and its parameters' requires_grad flags."""
    return [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]


def hooks_on(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def left_as_found(workspace):
    """A generator for an autouse fixture: every endpoint leaves each model of ``workspace`` as it found it
    (no hook, the same modes and requires_grad flags)."""
    before = {id: state_of(e.model) for id, e in workspace.models.items()}
    yield
    for id, e in workspace.models.items():
        assert hooks_on(e.model) == 0, f"{id}: hooks left"
        assert state_of(e.model) == before[id], f"{id}: modes or requires_grad changed"


def wait(client, view, until=("done",), timeout=120.0):
    """Poll a job's view until it finishes; assert it ended in one of ``until``; its last view."""
    deadline = time.monotonic() + timeout
    while view["status"] in ("queued", "running") and view["status"] not in until:
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
        view = client.get(f"/api/jobs/{view['job']}").json()
    assert view["status"] in until, view
    return view


@pytest.fixture(scope="module")
def client(workspace):
    """A test client of the module's ``workspace`` fixture (import this fixture into the test module)."""
    from fastapi.testclient import TestClient

    from underhood.app.server import create_app

    return TestClient(create_app(workspace))


@pytest.fixture(autouse=True)
def guard(workspace):
    """After every test of the module: each model of its ``workspace`` is as it was found."""
    yield from left_as_found(workspace)

"""The explorer's probe strip: ``GET /api/probe`` equals the library's probe on the dataset's two halves, runs in
the background without holding the model, and is cached on disk."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import underhood  # noqa: E402
from underhood.app import routes_transfer  # noqa: E402
from underhood.app.server import create_app  # noqa: E402
from underhood.app.workspace import Workspace  # noqa: E402

from .app_support import client, guard, wait  # noqa: E402,F401  (client, guard: fixtures)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = Workspace(["shapes"], "shapes:120", out=tmp_path_factory.mktemp("probe"))
    yield w
    w.close()




def test_the_strip_is_the_library_probe_of_each_stage_on_the_two_halves(client, workspace):
    view = client.get("/api/probe").json()
    assert view["kind"] == "probe"
    body = wait(client, view)["result"]
    entry = workspace.main
    train, test = routes_transfer.split(workspace)
    data = workspace.data
    direct = underhood.transfer.probe(entry.model, data[train], data[test], layers=entry.stages, seed=workspace.seed)
    assert [row["layer"] for row in body["layers"]] == entry.stages == ["features.3", "features.10", "features.17"]
    for row in body["layers"]:
        assert row["accuracy"] == pytest.approx(direct.accuracy[row["layer"]], abs=1e-4)
        assert row["random"] == pytest.approx(direct.random[row["layer"]], abs=1e-4)
        assert row["rf"] == direct.rf[row["layer"]]
    assert body["pixels"] == pytest.approx(direct.pixels, abs=1e-4)
    assert body["model_accuracy"] == pytest.approx(direct.model_accuracy, abs=1e-4) and body["model_accuracy"] > 0.9
    assert (body["n_train"], body["n_test"]) == (60, 60)
    # the strip's point: the trained last stage reads the classes off linearly, its random copy does not
    last = body["layers"][-1]
    assert last["accuracy"] > last["random"] + 0.3


def test_a_second_request_is_read_from_disk(client, workspace):
    first = wait(client, client.get("/api/probe").json())["result"]
    workspace.cache.forget()  # what a restarted server sees: the disk only
    again = client.get("/api/probe", params={"model": "shapes"}).json()
    assert again["status"] == "done" and again["cached"] and again["job"] is None
    assert again["result"] == first


def test_the_split_is_seeded_disjoint_and_capped(workspace, monkeypatch):
    train, test = routes_transfer.split(workspace)
    assert len(train) == len(test) == 60 and not set(train.tolist()) & set(test.tolist())
    assert torch.equal(routes_transfer.split(workspace)[0], train)
    labels = workspace.data.labels
    assert set(labels[train].tolist()) == set(labels[test].tolist()) == set(labels.tolist())
    monkeypatch.setattr(routes_transfer, "HALF", 25)
    assert [len(part) for part in routes_transfer.split(workspace)] == [25, 25]


def test_the_job_leaves_the_model_to_the_page(tmp_path, monkeypatch):
    """The probe runs on a private copy: the page's requests get the model while it runs."""
    w = Workspace(["shapes"], "shapes:80", out=tmp_path)
    entry, seen = w.main, {}

    def probe(model, *args, **kwargs):
        free = []

        def try_lock():  # from another thread, as a page request would
            free.append(entry.lock.acquire(blocking=False))
            if free[0]:
                entry.lock.release()

        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
        seen.update(free=free[0], copy=model is not entry.model)
        return real(model, *args, **kwargs)

    real = underhood.transfer.probe
    monkeypatch.setattr(underhood.transfer, "probe", probe)
    try:
        client = TestClient(create_app(w))
        wait(client, client.get("/api/probe").json())
    finally:
        w.close()
    assert seen == {"free": True, "copy": True}


def test_errors_name_the_problem(client, tmp_path):
    missing = client.get("/api/probe", params={"model": "nope"})
    assert missing.status_code == 404 and "model: 'nope' is not loaded" in missing.json()["error"]
    w = Workspace(["shapes"], underhood.datasets.shapes(3, seed=2), out=tmp_path)
    try:
        small = TestClient(create_app(w)).get("/api/probe")
    finally:
        w.close()
    assert small.status_code == 400 and "cannot be split" in small.json()["error"]

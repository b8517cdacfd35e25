"""The explorer's projector, nearest neighbours and live webcam socket, each checked against the library
function it wraps (activations.embed.features, a direct PCA, activations.neighbors, /api/predict)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from underhood.activations.embed import features  # noqa: E402
from underhood.activations.neighbors import neighbors as library_neighbors  # noqa: E402
from underhood.app import routes_projector  # noqa: E402
from underhood.app.jobs import Cancelled  # noqa: E402
from underhood.app.pictures import data_url, image_png  # noqa: E402
from underhood.app.server import create_app  # noqa: E402
from underhood.app.workspace import Workspace  # noqa: E402

from .app_support import wait  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = Workspace(["shapes"], "shapes:96", out=tmp_path_factory.mktemp("projector"))
    model = w.main.model
    before = (model.training, [p.requires_grad for p in model.parameters()])
    yield w
    # lifecycle: whatever the tests asked, the model is left as found
    assert (model.training, [p.requires_grad for p in model.parameters()]) == before
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks), m
    w.close()


@pytest.fixture(scope="module")
def client(workspace):
    with TestClient(create_app(workspace)) as c:
        yield c


@pytest.fixture(scope="module")
def layer(client):
    return client.get("/api/model").json()["default_layer"]




def project(client, **params):
    r = client.get("/api/projector", params=params)
    assert r.status_code == 200, r.text
    view = wait(client, r.json())
    return view["result"]


# ---------------------------------------------------------------------------------------------- projector
def test_projector_point_i_is_dataset_image_index_i(client, workspace, layer):
    from sklearn.decomposition import PCA

    n = 80
    out = project(client, method="pca", n=n)
    assert out["layer"] == layer and out["method"] == "pca" and out["n"] == n
    assert len(out["x"]) == len(out["y"]) == len(out["index"]) == n
    model, images = workspace.main.model, workspace.data.images
    feats = features(model, images[:n], layer)[layer].double().numpy()
    pca = PCA(2, svd_solver="full").fit(feats)
    xy = np.stack([out["x"], out["y"]], 1)
    direct = pca.transform(feats)
    sign = np.sign((direct * xy).sum(0))  # a principal axis is defined up to its sign
    assert np.allclose(sign * direct, xy, rtol=2e-3, atol=2e-3)
    # point i comes from the image index[i]: that image's features alone, projected, land on (x[i], y[i])
    for i in (0, 7, 33, n - 1):
        j = out["index"][i]
        alone = features(model, images[j:j + 1], layer)[layer].double().numpy()
        assert np.allclose(sign * pca.transform(alone)[0], xy[i], rtol=2e-3, atol=2e-3), i


def test_projector_colours_are_the_workspace_predictions(client, workspace):
    out = project(client, method="pca")
    n = len(workspace.data)
    assert out["n"] == n and out["index"] == list(range(n))
    pred = workspace.predictions(workspace.main).argmax(-1)
    labels = workspace.data.labels
    assert out["label"] == labels.tolist()
    assert out["pred"] == pred.tolist()
    assert out["correct"] == (pred == labels).tolist()
    assert out["classes"] == list(workspace.data.classes) and out["pred_classes"] == workspace.main.classes
    assert 0 <= out["knn"] <= 1 and 0 <= out["trust"] <= 1


def test_projector_tsne_and_the_disk_cache(client, workspace, layer):
    out = project(client, method="tsne", n=48, layer="features.10")
    assert out["method"] == "tsne" and len(out["x"]) == 48 and np.isfinite(out["x"] + out["y"]).all()
    again = client.get("/api/projector", params={"method": "tsne", "n": 48, "layer": "features.10"}).json()
    assert again["status"] == "done" and again["result"] == out
    # a restart (a new workspace on the same folder) finds the layout on disk: no job
    fresh = Workspace(["shapes"], "shapes:96", out=workspace.out)
    try:
        with TestClient(create_app(fresh)) as other:
            view = other.get("/api/projector", params={"method": "tsne", "n": 48, "layer": "features.10"}).json()
        assert view["job"] is None and view["cached"] and view["result"] == out
    finally:
        fresh.close()


def test_projector_pixel_space(client, workspace):
    out = project(client, method="pca", n=32, layer="input")
    assert out["layer"] == "input" and out["features"] == int(np.prod(workspace.main.input_size))


def test_features_in_chunks_equal_one_pass_and_cancel_keeps_the_prefix(workspace, monkeypatch):
    entry, name = workspace.main, "features.3"
    monkeypatch.setattr(routes_projector, "CHUNK", 32)

    class Job:
        def __init__(self, cancel_at):
            self.calls, self.cancel_at = 0, cancel_at

        def step(self, progress=None, message=None, partial=None):
            self.calls += 1
            if self.calls == self.cancel_at:
                raise Cancelled()

    with pytest.raises(Cancelled):
        routes_projector.layer_features(workspace, entry, name, 96, Job(cancel_at=3))
    kept = workspace.cache.recall(routes_projector._features_key(workspace, entry, name))
    assert kept is not None and len(kept) == 64  # two chunks done before the cancel
    job = Job(cancel_at=0)
    out = routes_projector.layer_features(workspace, entry, name, 96, job)
    assert job.calls == 1  # only the missing chunk was computed
    whole = features(entry.model, workspace.data.images, name)[name]
    assert torch.allclose(out, whole, atol=1e-5)


def test_projector_bad_requests(client):
    for params, status, word in [({"model": "nope"}, 404, "model"), ({"layer": "features.99"}, 404, "layer"),
                                 ({"method": "lle"}, 400, "method"), ({"n": 2}, 400, "n:"),
                                 ({"n": 10**6}, 400, "n:")]:
        r = client.get("/api/projector", params=params)
        assert r.status_code == status, (params, r.text)
        assert word in r.json()["error"], r.json()


def test_umap_is_optional(client):
    r = client.get("/api/projector", params={"method": "umap", "n": 32})
    if importlib.util.find_spec("umap") is None:
        assert r.status_code == 400 and "pip install 'underhood[umap]'" in r.json()["error"]
    else:
        assert r.status_code == 200


# ---------------------------------------------------------------------------------------------- neighbours
def test_neighbors_match_the_library(client, workspace, layer):
    r = client.get("/api/neighbors", params={"image": "data:7", "k": 6})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items[0]["index"] == 7 and items[0]["distance"] == 0.0  # nothing excluded: itself, first
    assert [it["distance"] for it in items] == sorted(it["distance"] for it in items)
    assert items[0]["label"] == int(workspace.data.labels[7]) and items[0]["image"] == "/api/thumb/7.png"
    found = library_neighbors(workspace.main.model, workspace.data.images[7], workspace.data, layer, k=6)
    assert [it["index"] for it in items] == found.feature_index[0].tolist()
    assert np.allclose([it["distance"] for it in items], found.feature_distance[0].numpy(), atol=1e-4)


def test_neighbors_of_an_upload_and_bad_requests(client, workspace):
    png = image_png(workspace.data.images[11])
    ref = client.post("/api/images", files={"file": ("a.png", png, "image/png")}).json()["id"]
    items = client.get("/api/neighbors", params={"image": ref, "k": 3, "layer": "features.10"}).json()["items"]
    assert items[0]["index"] == 11 and items[0]["distance"] < 1e-2
    for params, status, word in [({"model": "nope"}, 404, "model"), ({"layer": "featurez.3"}, 404, "layer"),
                                 ({"image": "data:999"}, 404, "image"), ({"image": "u00"}, 404, "image"),
                                 ({"k": 0}, 400, "k:"), ({"k": 1000}, 400, "k:")]:
        r = client.get("/api/neighbors", params=params)
        assert r.status_code == status, (params, r.text)
        assert word in r.json()["error"], r.json()


# ---------------------------------------------------------------------------------------------- live webcam
def frame(workspace, i, **extra):
    return json.dumps({"layer": "features.10", "scale": "own",
                       "image": data_url(image_png(workspace.data.images[i])), **extra})


def test_live_answers_frames_like_predict_and_layer(client, workspace):
    with client.websocket_connect("/api/live") as socket:
        for i in range(5):
            socket.send_text(frame(workspace, i))
            reply = json.loads(socket.receive_text())
            assert "error" not in reply, reply
            expected = client.get("/api/predict", params={"image": f"data:{i}"}).json()
            assert len(reply["top"]) == 5 and reply["top"][0]["index"] == expected["top"][0]["index"]
            grid = client.get("/api/layer", params={"image": f"data:{i}", "layer": "features.10"}).json()
            body = reply["layer"]
            assert body["units"] == grid["units"] and body["grid"] == grid["grid"]
            assert body["sprite"].startswith("data:image/png;base64,")
            assert np.allclose(body["max"], grid["max"], atol=0.05, rtol=0.05)  # the PNG rounds pixels to 1/255
            assert reply["frame"] == i and reply["ms"] > 0
        bad = ["not json", json.dumps([1, 2]), json.dumps({"image": "data:image/png;base64,@@@"}),
               json.dumps({"image": data_url(b"not a picture")}), json.dumps({"image": "http://x/a.png"}),
               frame(workspace, 0, layer="features.99"), frame(workspace, 0, model="nope"),
               frame(workspace, 0, scale="loud"), frame(workspace, 0, layer="input")]
        for text in bad:
            socket.send_text(text)
            reply = json.loads(socket.receive_text())
            assert set(reply) == {"error", "frame"} and reply["error"], (text[:40], reply)
        socket.send_bytes(b"\x00\x01")
        assert "error" in json.loads(socket.receive_text())
        socket.send_text(frame(workspace, 3, frame="f3", layer="classifier"))  # still answers; a vector layer
        reply = json.loads(socket.receive_text())
        assert reply["frame"] == "f3" and reply["layer"]["units"] == len(workspace.main.classes)


def test_live_client_that_leaves_mid_stream(client, workspace):
    with client.websocket_connect("/api/live") as socket:
        socket.send_text(frame(workspace, 1))
        socket.send_text(frame(workspace, 2))
        socket.close()
    with client.websocket_connect("/api/live") as socket:  # the server is fine
        socket.send_text(frame(workspace, 2))
        assert "top" in json.loads(socket.receive_text())


def test_live_refuses_pages_from_elsewhere(client):
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/api/live", headers={"origin": "http://evil.example"}) as socket:
            socket.receive_text()

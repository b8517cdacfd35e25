"""The explorer on the models users bring: tiny ViT, Swin and ConvNeXt and the built-in ResNet, through
every view (layer, unit, pattern, top-9, attribution, ablation, attack, projector, neighbours, why)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


import underhood  # noqa: E402
from underhood.app.workspace import Workspace  # noqa: E402

from .app_support import client, guard, wait  # noqa: E402,F401  (client, guard: fixtures)
from .transformer_models import build as build_tiny  # noqa: E402

KINDS = ["vit", "swin", "convnext", "shapes-resnet"]


@pytest.fixture(scope="module", params=KINDS)
def workspace(request, tmp_path_factory):
    torch.manual_seed(0)
    if request.param == "shapes-resnet":
        model = underhood.load_model("shapes-resnet", device="cpu")
    else:
        model = underhood.load_model(build_tiny(request.param), device="cpu")
    w = Workspace([(request.param, model)], "shapes:24", out=tmp_path_factory.mktemp(request.param))
    yield w
    w.close()




def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_every_view_works_on_the_model(client):
    info = ok(client.get("/api/model"))
    stage = info["stages"][-1]
    assert stage == info["default_layer"] or info["default_layer"] in {r["name"] for r in info["layers"]}
    grid = ok(client.get("/api/layer", params={"image": "data:1", "layer": stage}))
    assert grid["units"] == next(r["units"] for r in info["layers"] if r["name"] == stage)
    unit = ok(client.get("/api/unit", params={"image": "data:1", "layer": stage, "unit": 3}))
    assert unit["map"].startswith("data:image/png")
    ok(client.get("/api/unit/pattern", params={"image": "data:1", "layer": stage, "unit": 3}))
    wait(client, ok(client.get("/api/unit/top", params={"layer": stage, "unit": 3, "k": 4})))
    top = ok(client.get("/api/unit/top", params={"layer": stage, "unit": 3, "k": 4}))
    assert top["status"] == "done" and len(top["result"]["items"]) == 4
    methods = ok(client.get("/api/attribution/methods"))["methods"]
    for m in [m["name"] for m in methods if m["available"] and not m["slow"]][:4]:
        assert ok(client.get("/api/attribution", params={"image": "data:1", "method": m}))["image"]
    ablated = ok(client.post("/api/ablate", json={"image": "data:1", "layer": stage, "top_k": 2}))
    assert len(ablated["units"]) == 2
    attack = ok(client.post("/api/attack", json={"image": "data:1", "method": "fgsm", "eps": 0.03, "layer": stage}))
    assert attack["linf"] <= 0.03 + 1e-6
    proj = wait(client, ok(client.get("/api/projector", params={"layer": stage, "method": "pca"})))
    assert sorted(proj["result"]["index"]) == list(range(24))
    near = ok(client.get("/api/neighbors", params={"image": "data:2", "layer": stage, "k": 3}))
    assert near["items"][0]["index"] == 2
    why = client.get("/api/why", params={"image": "data:1", "k": 3})
    if len(info["classes"]) >= len(info["data"]["classes"]):
        assert len(wait(client, ok(why))["result"]["helpful"]) == 3
    else:  # the tiny transformers have 4 classes, the shapes data 8: influence needs the model's own labels
        assert why.status_code == 400 and "--data" in why.json()["error"]

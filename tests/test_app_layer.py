"""The explorer's layer view and unit panel: sprites, differences, unit maps and boxes, patterns, the top-k job
and activation maximisation, each checked against the library function it wraps."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from underhood.activations.maps import maps  # noqa: E402
from underhood.activations.patches import boxes, top_patches, unit_gradients  # noqa: E402
from underhood.app import routes_layer  # noqa: E402
from underhood.app.pictures import data_url, image_array, image_png  # noqa: E402
from underhood.app.workspace import Workspace  # noqa: E402
from underhood.viz.units import pattern_image  # noqa: E402

from .app_support import client, guard, wait  # noqa: E402,F401  (client, guard: fixtures)


class ToTokens(nn.Module):
    """``[N, C, h, w]`` -> ``[N, h*w, C]`` patch tokens (a transformer's reading)."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class ToNHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class Ragged(nn.Module):
    """A token sequence of 1000 tokens: no patch grid for a 64x64 input (prefix tokens at most 16)."""

    def forward(self, x):
        return x.flatten(1)[:, :2000].reshape(len(x), 1000, 2)


class Tiny(nn.Module):
    """A 4-channel ``features.0`` (shapes has 16: a shape mismatch), a token layer, a channels-last layer and a
    sequence that forms no grid."""

    input_size = (3, 64, 64)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.embed = nn.Conv2d(4, 6, 16, stride=16)
        self.tokens, self.nhwc, self.ragged = ToTokens(), ToNHWC(), Ragged()
        self.classifier = nn.Linear(6, 8)

    def forward(self, x):
        f = self.features(x)
        e = self.embed(f)
        t, c, s = self.tokens(e), self.nhwc(e), self.ragged(f)
        return self.classifier(t.mean(1) + c.mean((1, 2)) + 0 * s.sum((1, 2))[:, None])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    torch.manual_seed(0)
    w = Workspace(["shapes", "shapes-robust", ("tiny", Tiny().eval())], "shapes:96",
                  out=tmp_path_factory.mktemp("layer"))
    yield w
    w.close()




def picture(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def acts(entry, x, layer):
    with torch.no_grad():
        return maps(entry.model, x[None], layer)[layer][0]




# ---------------------------------------------------------------------------------------------- /api/layer
def test_layer_sprite_holds_every_channel_with_its_max_mean_and_order(client, workspace):
    entry = workspace.main
    body = client.get("/api/layer", params={"layer": "features.10", "image": "data:5"}).json()
    a = acts(entry, workspace.data.images[5], "features.10")
    assert body["units"] == 32 and body["grid"] == [16, 16] and not body["vector"] and not body["difference"]
    torch.testing.assert_close(torch.tensor(body["max"]), a.amax((1, 2)), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(body["mean"]), a.mean((1, 2)), atol=1e-4, rtol=0)
    assert sorted(body["order"]) == list(range(32))
    assert [body["max"][i] for i in body["order"]] == sorted(body["max"], reverse=True)
    cols, rows, tile, gap = body["cols"], body["rows"], body["tile"], body["gap"]
    assert cols * rows >= body["units"] > cols * (rows - 1)
    assert picture(body["sprite"]).size == (cols * (tile + gap) - gap, rows * (tile + gap) - gap)
    shared = client.get("/api/layer", params={"layer": "features.10", "image": "data:5", "scale": "shared"}).json()
    assert shared["scale"] == "shared" and shared["sprite"] != body["sprite"] and shared["max"] == body["max"]


def test_layer_of_an_uploaded_image(client, workspace):
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = workspace.add_tensor(x)
    body = client.get("/api/layer", params={"layer": "features.3", "image": ref}).json()
    torch.testing.assert_close(torch.tensor(body["max"]), acts(workspace.main, x, "features.3").amax((1, 2)),
                               atol=1e-4, rtol=0)


def test_vector_layer_is_drawn_as_1x1_tiles(client, workspace):
    body = client.get("/api/layer", params={"layer": "classifier", "image": "data:2"}).json()
    logits = acts(workspace.main, workspace.data.images[2], "classifier")
    assert body["vector"] and body["grid"] == [1, 1] and body["units"] == 8 and body["scale"] == "shared"
    torch.testing.assert_close(torch.tensor(body["max"]), logits, atol=1e-4, rtol=0)
    assert body["order"][0] == int(logits.argmax())
    assert body["cols"] * body["rows"] >= 8


@pytest.mark.parametrize("layer", ["tokens", "nhwc"])
def test_token_and_channels_last_layers_are_read_as_the_library_reads_them(client, workspace, layer):
    entry = workspace.models["tiny"]
    body = client.get("/api/layer", params={"model": "tiny", "layer": layer, "image": "data:1"}).json()
    a = acts(entry, workspace.data.images[1], layer)  # [6, 4, 4] through core.layout
    assert body["units"] == 6 and body["grid"] == [4, 4] and a.shape == (6, 4, 4)
    torch.testing.assert_close(torch.tensor(body["max"]), a.amax((1, 2)), atol=1e-5, rtol=0)
    unit = client.get("/api/unit", params={"model": "tiny", "layer": layer, "image": "data:1", "unit": 2}).json()
    y, x = unit["argmax"]
    assert a[2, y, x] == a[2].max() and unit["box"] is not None


def test_a_layer_without_a_grid_is_a_clear_400(client):
    r = client.get("/api/layer", params={"model": "tiny", "layer": "ragged"})
    assert r.status_code == 400 and "ragged" in r.json()["error"] and "pick another layer" in r.json()["error"]


def test_difference_with_a_second_model(client, workspace):
    a = acts(workspace.models["shapes"], workspace.data.images[3], "features.10")
    b = acts(workspace.models["shapes-robust"], workspace.data.images[3], "features.10")
    body = client.get("/api/layer", params={"layer": "features.10", "image": "data:3", "minus": "shapes-robust"}).json()
    assert body["difference"] and body["minus"] == "shapes-robust" and body["units"] == 32
    torch.testing.assert_close(torch.tensor(body["max"]), (a - b).amax((1, 2)), atol=1e-4, rtol=0)
    change = (a - b).abs().amax((1, 2))
    assert body["order"][0] == int(change.argmax())
    plain = client.get("/api/layer", params={"layer": "features.10", "image": "data:3"}).json()
    assert plain["sprite"] != body["sprite"]


@pytest.mark.parametrize("layer, words", [("features.0", "same layer shape"), ("features.10", "has no layer")])
def test_difference_needs_the_same_layer_and_shape(client, layer, words):
    r = client.get("/api/layer", params={"layer": layer, "minus": "tiny"})
    assert r.status_code == 400 and words in r.json()["error"] and r.json()["error"].startswith("minus:")


# ---------------------------------------------------------------------------------------------- bad inputs
ENDPOINTS = ["/api/layer", "/api/unit", "/api/unit/pattern", "/api/unit/top", "/api/unit/top/patterns",
             "/api/unit/actmax"]


BAD = [({"model": "nope"}, "model:"), ({"layer": "features.99"}, "layer:"), ({"unit": 32}, "unit:"),
       ({"unit": -1}, "unit:"), ({"image": "data:96"}, "image:"), ({"image": "u0000"}, "image:")]
NO_IMAGE = ("/api/unit/top", "/api/unit/top/patterns", "/api/unit/actmax")  # these work on the dataset


@pytest.mark.parametrize("path, bad, words", [
    (path, bad, words) for path in ENDPOINTS for bad, words in BAD
    if not ("image" in bad and path in NO_IMAGE) and not ("unit" in bad and path == "/api/layer")])
def test_unknown_model_layer_unit_or_image_is_404_with_a_message(client, path, bad, words):
    r = client.get(path, params={"layer": "features.10", "unit": 0, **bad})
    assert r.status_code == 404, r.text
    assert r.json()["error"].startswith(words)


@pytest.mark.parametrize("path, params, words", [
    ("/api/layer", {"scale": "loud"}, "scale:"),
    ("/api/layer", {"layer": ""}, "layer:"),
    ("/api/unit/pattern", {"rule": "lrp"}, "rule:"),
    ("/api/unit/top", {"k": 0}, "k:"),
    ("/api/unit/top", {"k": 97}, "k:"),
    ("/api/unit/top/patterns", {"rule": "x"}, "rule:"),
    ("/api/unit/actmax", {"steps": 0}, "steps:"),
])
def test_bad_values_are_400(client, path, params, words):
    r = client.get(path, params={"layer": "features.10", "unit": 0, **params})
    assert r.status_code == 400 and r.json()["error"].startswith(words), r.text


# ---------------------------------------------------------------------------------------------- /api/unit
def test_unit_map_value_argmax_and_receptive_field_box(client, workspace):
    entry = workspace.main
    body = client.get("/api/unit", params={"layer": "features.10", "image": "data:7", "unit": 5}).json()
    m = acts(entry, workspace.data.images[7], "features.10")[5]
    y, x = body["argmax"]
    assert m[y, x] == m.max() and body["value"] == pytest.approx(float(m.max()), abs=1e-4)
    assert body["mean"] == pytest.approx(float(m.mean()), abs=1e-4)
    expected, field = boxes(entry.model, "features.10", torch.tensor([y, x]), (3, 64, 64))
    assert body["box"] == expected.tolist() and body["field"] == list(field) == [14, 14]
    assert body["input_size"] == [64, 64] and picture(body["map"]).size == (256, 256)


def test_vector_unit_has_no_position_and_no_box(client, workspace):
    body = client.get("/api/unit", params={"layer": "classifier", "image": "data:7", "unit": 1}).json()
    logit = acts(workspace.main, workspace.data.images[7], "classifier")[1]
    assert body["argmax"] is None and body["box"] is None
    assert body["value"] == pytest.approx(float(logit), abs=1e-4) and picture(body["map"]).size == (256, 256)


@pytest.mark.parametrize("layer, rule", [("features.10", "guided"), ("features.3", "deconvnet"),
                                         ("classifier", "guided")])
def test_pattern_is_the_library_pattern(client, workspace, layer, rule):
    entry = workspace.main
    x = workspace.data.images[4]
    body = client.get("/api/unit/pattern", params={"layer": layer, "image": "data:4", "unit": 3, "rule": rule}).json()
    a = acts(entry, x, layer)[3]
    position = [0, 0] if a.ndim == 0 else [int(a.argmax()) // a.shape[-1], int(a.argmax()) % a.shape[-1]]
    assert body["argmax"] == (None if a.ndim == 0 else position) and body["rule"] == rule
    grads = unit_gradients(entry.model, x[None], layer, torch.tensor([3]), torch.tensor([position]), rule=rule)
    g = grads[0]
    if a.ndim:  # cut to a window around the unit's receptive field (at least a quarter of the image side)
        from underhood.activations.patches import boxes, crop

        box = boxes(entry.model, layer, torch.tensor([position]), (3, 64, 64))[0][0].long().tolist()
        window = routes_layer.pattern_window(box, (64, 64))
        assert body["window"] == window
        if window is not None:
            assert window[2] - window[0] >= min(64, max(16, box[2] - box[0]))
            assert window[0] <= max(0, box[0]) and window[2] >= min(64, box[2])
            g = crop(g, window, fill=0.0)
    assert body["image"] == data_url(image_png(pattern_image(g), routes_layer._scale(*g.shape[-2:])))


# ---------------------------------------------------------------------------------------------- top-k job
def test_top_job_equals_top_patches_and_is_cached_on_disk(client, workspace, monkeypatch):
    monkeypatch.setattr(routes_layer, "CHUNK", 40)  # 3 chunks: the streamed state is merged twice
    entry, u = workspace.main, 6
    view = client.get("/api/unit/top", params={"layer": "features.10", "unit": u}).json()
    assert view["kind"] == "top" and view["status"] in ("queued", "running", "done")
    wait(client, view)
    view = client.get("/api/unit/top", params={"layer": "features.10", "unit": u}).json()
    assert view["status"] == "done" and view["result"]["scanned"] == view["result"]["total"] == 96
    expected = top_patches(entry.model, workspace.data, "features.10", k=9, crops=False)
    items = view["result"]["items"]
    assert [i["index"] for i in items] == expected.index[u].tolist()
    torch.testing.assert_close(torch.tensor([i["value"] for i in items]), expected.values[u], atol=1e-4, rtol=0)
    assert [i["box"] for i in items] == expected.box[u].tolist()
    first = items[0]
    assert first["image"] == f"/api/thumb/{first['index']}.png" and picture(first["patch"]).size == (70, 70)
    other = client.get("/api/unit/top", params={"layer": "features.10", "unit": 2}).json()  # the same job
    assert other["job"] == view["job"] and other["status"] == "done"
    assert [i["index"] for i in other["result"]["items"]] == expected.index[2].tolist()

    key = routes_layer._top_key(workspace, entry, "features.10", 9)
    assert (workspace.out / "cache" / f"{key}.json").is_file()
    workspace.cache.forget()  # a restart: only the disk is left
    again = client.get("/api/unit/top", params={"layer": "features.10", "unit": u}).json()
    assert again["status"] == "done" and again["cached"] and again["result"] == view["result"]

    patterns = client.get("/api/unit/top/patterns", params={"layer": "features.10", "unit": u}).json()
    full = top_patches(entry.model, workspace.data, "features.10", k=9, channels=[u], pattern="guided")
    assert [i["index"] for i in patterns["items"]] == full.index[0].tolist() and patterns["rule"] == "guided"
    got = torch.tensor(np.asarray(picture(patterns["items"][0]["pattern"])), dtype=torch.float32)
    want = torch.tensor(image_array(pattern_image(full.patterns[0, 0]), 5), dtype=torch.float32)
    torch.testing.assert_close(got, want, atol=1, rtol=0)  # to a grey level: the batches differ


def test_top_patterns_before_the_scan_is_400(client):
    r = client.get("/api/unit/top/patterns", params={"layer": "features.3", "unit": 0})
    assert r.status_code == 400 and "GET /api/unit/top first" in r.json()["error"]


def test_top_job_of_a_vector_layer(client, workspace):
    view = wait(client, client.get("/api/unit/top", params={"layer": "classifier", "unit": 1, "k": 4}).json())
    expected = top_patches(workspace.main.model, workspace.data, "classifier", k=4, crops=False)
    items = client.get("/api/unit/top", params={"layer": "classifier", "unit": 1, "k": 4}).json()["result"]["items"]
    assert view["status"] == "done" and [i["index"] for i in items] == expected.index[1].tolist()
    assert all(i["box"] == [0, 0, 64, 64] for i in items)


def test_a_cancelled_top_job_reports_cancelled(client, workspace, monkeypatch):
    monkeypatch.setattr(routes_layer, "CHUNK", 8)
    entry = workspace.main
    with entry.lock:  # the job waits for the model at its first chunk
        view = client.get("/api/unit/top", params={"layer": "features.17", "unit": 0, "k": 5}).json()
        assert view["status"] in ("queued", "running") and view["result"] is None
        assert client.delete(f"/api/jobs/{view['job']}").status_code == 200
    view = wait(client, view, until=("cancelled",))
    assert client.get("/api/unit/top", params={"layer": "features.17", "unit": 0, "k": 5}).json()["job"] != view["job"]
    wait(client, client.get("/api/unit/top", params={"layer": "features.17", "unit": 0, "k": 5}).json())


# ---------------------------------------------------------------------------------------------- actmax job
def test_actmax_renders_the_channel_and_is_cached(client, workspace):
    from underhood.synthesis.objectives import channel
    from underhood.synthesis.render import render

    params = {"layer": "features.10", "unit": 4, "steps": 6}
    missing = client.get("/api/unit/actmax", params={**params, "cached": "true"}).json()
    assert missing["status"] == "missing" and missing["job"] is None  # asking does not start a render
    view = wait(client, client.get("/api/unit/actmax", params=params).json())
    result = view["result"]
    expected = render(workspace.main.model, channel("features.10", 4), size=(3, 64, 64), steps=6, lr=0.2, seed=0)
    assert result["steps"] == 6 and result["value"] == pytest.approx(float(expected.final[0]), abs=1e-3)
    assert picture(result["image"]).size == (256, 256)
    again = client.get("/api/unit/actmax", params=params).json()
    assert again["status"] == "done" and again["result"] == result
    assert client.get("/api/unit/actmax", params={**params, "cached": "true"}).json()["result"] == result

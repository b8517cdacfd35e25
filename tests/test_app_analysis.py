"""The explorer's analysis panels: attribution maps, ablation, attacks, "why" (influence) and the report, each
checked against the library function it wraps, with every bad input a one-line 4xx."""

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

from underhood.activations.ablate import ablated_logits  # noqa: E402
from underhood.app.workspace import Workspace  # noqa: E402
from underhood.attribution.cam import gradcam  # noqa: E402
from underhood.attribution.evaluate import method_options  # noqa: E402
from underhood.attribution.gradient import saliency  # noqa: E402
from underhood.attribution.registry import REGISTRY  # noqa: E402
from underhood.influence.api import influence  # noqa: E402
from underhood.viz.attribution import LABELS, STYLES, render_map  # noqa: E402

from .app_support import client, guard, wait  # noqa: E402,F401  (client, guard: fixtures)

LAYER = "features.14"   # a convolution of the shapes model (64 channels)


class Headless(nn.Module):
    """A classifier with no nn.Linear: no CAM, no influence on a head."""

    input_size = (3, 64, 64)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    torch.manual_seed(0)
    w = Workspace(["shapes", ("headless", Headless().eval())], "shapes:96", out=tmp_path_factory.mktemp("analysis"))
    yield w
    w.close()




def pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def drawn(a: torch.Tensor, method: str, x: torch.Tensor) -> np.ndarray:
    return (np.clip(render_map(a, STYLES[method], x), 0, 1) * 255).round().astype(np.uint8)


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert error and "\n" not in error
    return error




# ---------------------------------------------------------------------------------------------- attribution
def test_methods_are_the_registry_with_their_labels_and_styles(client):
    body = client.get("/api/attribution/methods").json()
    assert [m["name"] for m in body["methods"]] == list(REGISTRY) and len(REGISTRY) == 13
    for m in body["methods"]:
        assert m["label"] == LABELS[m["name"]] and m["style"] == STYLES[m["name"]] and m["available"]
        assert m["needs_layer"] == REGISTRY[m["name"]].layer
    assert {m["name"] for m in body["methods"] if m["slow"]} == {"occlusion", "lime", "scorecam"}
    headless = {m["name"]: m["available"] for m in client.get("/api/attribution/methods",
                                                              params={"model": "headless"}).json()["methods"]}
    assert not headless["cam"] and headless["gradcam"]


def test_attribution_map_is_the_library_map_drawn_in_its_papers_style(client, workspace):
    entry, x = workspace.main, workspace.data.images[7]
    with torch.no_grad():
        pred = int(entry.model(x[None]).argmax())
    layer = method_options(entry.model, ["gradcam"])["gradcam"]["layer"]
    body = client.get("/api/attribution", params={"image": "data:7", "method": "gradcam"}).json()
    assert body["method"] == "gradcam" and body["label"] == "Grad-CAM"
    assert body["target"] == {"index": pred, "class": entry.classes[pred]}
    expected = drawn(gradcam(entry.model, x[None], pred, layer=layer)[0], "gradcam", x)
    assert np.abs(pixels(body["image"]).astype(int) - expected).max() <= 1

    other = (pred + 1) % len(entry.classes)
    body = client.get("/api/attribution", params={"image": "data:7", "method": "saliency", "target": other}).json()
    assert body["target"]["index"] == other
    expected = drawn(saliency(entry.model, x[None], other)[0], "saliency", x)
    assert np.abs(pixels(body["image"]).astype(int) - expected).max() <= 1
    again = client.get("/api/attribution", params={"image": "data:7", "method": "saliency", "target": other}).json()
    assert again == body  # cached in memory


def test_attribution_bad_inputs_are_one_line_4xx(client):
    one_line_error(client.get("/api/attribution", params={"method": "nope"}), 404)
    assert "gradcam" in one_line_error(client.get("/api/attribution", params={"method": "gradcm"}), 404)
    one_line_error(client.get("/api/attribution", params={"method": "saliency", "model": "nope"}), 404)
    one_line_error(client.get("/api/attribution", params={"method": "saliency", "image": "data:999"}), 404)
    one_line_error(client.get("/api/attribution", params={"method": "saliency", "target": 8}), 400)
    one_line_error(client.get("/api/attribution", params={"method": "saliency", "target": -1}), 400)
    one_line_error(client.get("/api/attribution"), 400)
    one_line_error(client.get("/api/attribution", params={"method": "cam", "model": "headless"}), 400)


# ---------------------------------------------------------------------------------------------- ablation
def manual_ablation(model: nn.Module, x: torch.Tensor, units: list[int]) -> torch.Tensor:
    """The shapes model run by hand with channels ``units`` of features.14 zeroed (nn.Sequential slicing)."""
    net = model.net
    with torch.no_grad():
        a = net.features[:15]((x[None] - model.mean) / model.std).clone()
        a[:, units] = 0
        return net.classifier(torch.flatten(net.pool(net.features[15:](a)), 1))[0]


def test_ablating_a_unit_gives_the_logits_of_the_model_with_that_channel_zeroed(client, workspace):
    entry, x = workspace.main, workspace.data.images[4]
    body = client.post("/api/ablate", json={"image": "data:4", "layer": LAYER, "units": [5]}).json()
    assert body["layer"] == LAYER and body["units"] == [5]
    torch.testing.assert_close(torch.tensor(body["after"]["logits"]), manual_ablation(entry.model, x, [5]),
                               atol=1e-5, rtol=0)
    with torch.no_grad():
        clean = entry.model(x[None])[0]
    torch.testing.assert_close(torch.tensor(body["before"]["logits"]), clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(body["delta"]), torch.tensor(body["after"]["logits"])
                               - torch.tensor(body["before"]["logits"]), atol=1e-6, rtol=0)
    assert body["after"]["top"][0]["index"] == int(manual_ablation(entry.model, x, [5]).argmax())
    assert len(body["before"]["top"]) == 5


def test_ablating_the_top_k_units_zeroes_the_most_active_ones(client, workspace):
    entry, x = workspace.main, workspace.data.images[4]
    body = client.post("/api/ablate", json={"image": "data:4", "layer": LAYER, "top_k": 4}).json()
    with torch.no_grad():
        acts = entry.model.net.features[:15]((x[None] - entry.model.mean) / entry.model.std)[0]
    expected = acts.flatten(1).amax(1).argsort(descending=True)[:4].tolist()
    assert body["units"] == expected
    torch.testing.assert_close(torch.tensor(body["after"]["logits"]), manual_ablation(entry.model, x, expected),
                               atol=1e-5, rtol=0)
    same = ablated_logits(entry.model, x[None], LAYER, expected)[0]
    torch.testing.assert_close(torch.tensor(body["after"]["logits"]), same, atol=0, rtol=0)


def test_ablation_bad_inputs_are_one_line_4xx(client):
    def post(**body):
        return client.post("/api/ablate", json={"image": "data:0", "layer": LAYER, **body})

    one_line_error(post(units=[64]), 404)
    one_line_error(post(units=[-1]), 404)
    one_line_error(post(units=[]), 400)
    one_line_error(post(units="3"), 400)
    one_line_error(post(units=[1.5]), 400)
    one_line_error(post(), 400)
    one_line_error(post(units=[1], top_k=2), 400)
    one_line_error(post(top_k=0), 400)
    one_line_error(post(top_k=65), 400)
    one_line_error(post(units=[1], layer="features.99"), 404)
    one_line_error(post(units=[1], layer=None), 400)
    one_line_error(post(units=[1], model="nope"), 404)
    one_line_error(post(units=[1], image="nope"), 404)


# ---------------------------------------------------------------------------------------------- attack
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_stays_in_the_budget_and_its_image_opens(client, workspace, method):
    eps = 0.03
    body = client.post("/api/attack", json={"image": "data:2", "method": method, "eps": eps, "steps": 5,
                                            "layer": LAYER}).json()
    x = workspace.data.images[2]
    adv = workspace.images[body["image_id"]]
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= eps + 1e-6
    assert body["linf"] <= eps + 1e-6 and body["method"] == method and body["eps"] == eps
    assert pixels(body["adversarial"]).shape == (64, 64, 3) and pixels(body["perturbation"]).shape == (64, 64, 3)
    opened = client.get("/api/predict", params={"image": body["image_id"]})
    assert opened.status_code == 200
    assert [t["index"] for t in opened.json()["top"]] == [t["index"] for t in body["after"]["top"]]
    assert body["success"] == (body["after"]["top"][0]["index"] != body["before"]["top"][0]["index"])
    units = body["units"]
    assert len(units) == 10 and len({u["unit"] for u in units}) == 10
    changes = [abs(u["change"]) for u in units]
    assert changes == sorted(changes, reverse=True)
    for u in units:
        assert u["change"] == pytest.approx(u["after"] - u["before"], abs=1e-4)


def test_attack_bad_inputs_are_one_line_4xx(client):
    def post(**body):
        return client.post("/api/attack", json={"image": "data:0", "method": "pgd", "eps": 0.03, "steps": 3, **body})

    for eps in (0, -0.1, 1.5, "big", None):
        one_line_error(post(eps=eps), 400)
    for steps in (0, 1000, 2.5):
        one_line_error(post(steps=steps), 400)
    one_line_error(post(method="cw"), 400)
    one_line_error(post(norm="l1"), 400)
    one_line_error(post(method="fgsm", norm="l2"), 400)
    one_line_error(post(layer="features.99"), 404)
    one_line_error(post(model="nope"), 404)
    one_line_error(post(image="data:-3"), 404)


# ---------------------------------------------------------------------------------------------- why
def test_why_lists_the_most_helpful_and_harmful_images_of_the_head(client, workspace):
    k = 5
    view = wait(client, client.get("/api/why", params={"image": "data:9", "k": k}).json())
    result = view["result"]
    helpful, harmful = result["helpful"], result["harmful"]
    assert len(helpful) == k and len(harmful) == k and result["n"] == len(workspace.data)
    assert [h["score"] for h in helpful] == sorted((h["score"] for h in helpful), reverse=True)
    assert [h["score"] for h in harmful] == sorted(h["score"] for h in harmful)
    assert result["method"] == "exact" and result["params"] and result["damping"] == 0.01
    ref = influence(workspace.main.model, workspace.data, workspace.data.images[9][None], method="exact",
                    params="classifier", damping=0.01, progress=False, fragility=False)
    assert [h["index"] for h in helpful] == ref.helpful(0, k).tolist()
    assert [h["index"] for h in harmful] == ref.harmful(0, k).tolist()
    for h in helpful:
        assert h["image"] == f"/api/thumb/{h['index']}.png"
        assert h["class"] == workspace.data.classes[h["label"]] and h["label"] == int(workspace.data.labels[h["index"]])
    assert any(p.suffix == ".json" and "helpful" in p.read_text() for p in (workspace.out / "cache").iterdir())
    again = client.get("/api/why", params={"image": "data:9", "k": k}).json()
    assert again["status"] == "done" and again["result"] == result


def test_why_bad_inputs_are_one_line_4xx(client):
    one_line_error(client.get("/api/why", params={"k": 0}), 400)
    one_line_error(client.get("/api/why", params={"k": 1000}), 400)
    one_line_error(client.get("/api/why", params={"model": "nope"}), 404)
    one_line_error(client.get("/api/why", params={"image": "nope"}), 404)
    one_line_error(client.get("/api/why", params={"model": "headless"}), 400)


# ---------------------------------------------------------------------------------------------- report
def test_report_appends_self_contained_escaped_panels(client, workspace):
    picture = client.get("/api/attribution", params={"method": "saliency", "image": "data:1"}).json()["image"]
    title = 'Saliency <script>alert("x")</script> & co'
    table = "<table><tr><th>class</th><th>prob</th></tr><tr><td onclick='x()'>star<script>bad()</script></td>" \
            "<td>0.9</td></tr></table>"
    body = client.post("/api/report", json={"title": title, "caption": "why <b>this</b>?", "images": [picture],
                                            "state": "http://127.0.0.1:8000/?model=shapes&tab=attribution",
                                            "html_table": table})
    assert body.status_code == 200, body.text
    first = body.json()
    assert first["url"] == "/files/explorer-report.html" and first["panels"] == 1
    second = client.post("/api/report", json={"title": "second", "images": []}).json()
    assert second["panels"] == 2
    text = (workspace.out / "explorer-report.html").read_text()
    assert "Saliency &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in text
    assert "<script" not in text.split("<style>")[0] + text.split("</style>")[1]
    assert "onclick" not in text and "why &lt;b&gt;this&lt;/b&gt;?" in text
    assert "http://" not in text and "https://" not in text
    assert picture in text and "<td>star</td>" in text and "?model=shapes&amp;tab=attribution" in text
    assert text.count('<section class="panel"') == 2 and "--accent" in text  # styled with report.css
    served = client.get("/files/explorer-report.html")
    assert served.status_code == 200 and served.text == text


def test_report_bad_inputs_are_one_line_4xx(client):
    one_line_error(client.post("/api/report", json={"title": ""}), 400)
    one_line_error(client.post("/api/report", json={"title": "t", "images": ["https://example.com/x.png"]}), 400)
    one_line_error(client.post("/api/report", json={"title": "t", "images": ["data:text/html;base64,PGI+"]}), 400)
    one_line_error(client.post("/api/report", json={"title": "t", "images": ["data:image/png;base64,%%%"]}), 400)
    one_line_error(client.post("/api/report", json={"title": "t", "images": "data:image/png;base64,AA=="}), 400)
    one_line_error(client.post("/api/report", json={"title": 3}), 400)

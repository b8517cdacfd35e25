"""The explorer's server: the model endpoint, the dataset browser, uploads, jobs, and its safety rules."""

from __future__ import annotations

import io
import threading
import time
import urllib.request

import pytest
import torch
from torch import nn

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from underhood.app.jobs import Jobs  # noqa: E402
from underhood.app.server import create_app, inside  # noqa: E402
from underhood.app.workspace import Workspace  # noqa: E402
from underhood.core.hooks import capture  # noqa: E402,F401  (the only place hooks live)


def png_bytes(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = Workspace(["shapes"], "shapes:48", out=tmp_path_factory.mktemp("explore"), upload_limit=200_000)
    yield w
    w.close()


@pytest.fixture(scope="module")
def client(workspace):
    return TestClient(create_app(workspace))


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def test_model_describes_name_classes_size_and_layers(client, workspace):
    body = client.get("/api/model").json()
    assert body["name"] == "shapes" and body["id"] == "shapes"
    assert body["classes"] == workspace.main.classes and len(body["classes"]) == 8
    assert body["input_size"] == [3, 64, 64]
    rows = {r["name"]: r for r in body["layers"]}
    assert rows["features.0"]["shape"] == [16, 64, 64] and rows["features.0"]["units"] == 16
    assert rows["features.0"]["rf"] == [3.0, 3.0] and rows["features.0"]["spatial"]
    assert rows["classifier"]["shape"] == [8] and rows["classifier"]["units"] == 8 and not rows["classifier"]["spatial"]
    assert body["default_layer"] in rows and body["stages"]
    assert body["data"] == {"spec": "shapes:48", "size": 48, "classes": workspace.data.classes}
    assert client.get("/api/models").json()["models"][0]["id"] == "shapes"


def test_unknown_model_is_a_404_naming_the_loaded_ones(client):
    r = client.get("/api/model?model=nope")
    assert r.status_code == 404 and "nope" in r.json()["error"] and "shapes" in r.json()["error"]


def test_predict_equals_the_model(client, workspace):
    body = client.get("/api/predict?image=data:5&k=3").json()
    with torch.no_grad():
        probs = workspace.main.model(workspace.data.images[5:6]).softmax(-1)[0]
    assert body["top"][0]["index"] == int(probs.argmax())
    assert abs(body["top"][0]["prob"] - float(probs.max())) < 1e-4 and len(body["top"]) == 3
    assert body["label"]["index"] == int(workspace.data.labels[5])
    assert no_hooks(workspace.main.model)
    assert client.get("/api/predict?image=data:48").status_code == 404
    assert client.get("/api/predict?image=data:x").status_code == 404
    assert client.get("/api/predict?image=u0000").status_code == 404
    assert client.get("/api/predict?image=data:1&k=0").status_code == 422


def test_dataset_browser_filters_by_class_and_correctness(client, workspace):
    probs = workspace.predictions(workspace.main)
    pred, labels = probs.argmax(-1), workspace.data.labels
    body = client.get("/api/data?cls=2&limit=1000").json()
    assert [i["index"] for i in body["items"]] == (labels == 2).nonzero().flatten().tolist()
    assert all(i["label"] == 2 for i in body["items"])
    right = client.get("/api/data?correct=true&limit=1000").json()
    wrong = client.get("/api/data?correct=false&limit=1000").json()
    assert right["total"] + wrong["total"] == 48
    assert right["total"] == int((pred == labels).sum())
    assert all(i["correct"] for i in right["items"]) and not any(i["correct"] for i in wrong["items"])
    page = client.get("/api/data?offset=10&limit=5").json()
    assert [i["index"] for i in page["items"]] == list(range(10, 15)) and page["total"] == 48
    assert client.get("/api/data?cls=99").status_code == 404
    assert client.get("/api/data?limit=0").status_code == 422


def test_thumbnails_and_image_pngs_are_the_images(client, workspace):
    r = client.get("/api/thumb/7.png?scale=2")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = torch.from_numpy(__import__("numpy").array(Image.open(io.BytesIO(r.content)))).float() / 255
    assert im.shape == (128, 128, 3)
    expected = workspace.data.images[7].permute(1, 2, 0)
    assert (im[::2, ::2] - expected).abs().max() < 1 / 255 + 1e-6
    assert client.get("/api/thumb/999.png").status_code == 404
    assert client.get("/api/image.png?image=data:3").status_code == 200


def test_upload_validates_and_stores_at_the_model_size(client, workspace):
    r = client.post("/api/images", files={"file": ("red.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    ref = r.json()["id"]
    assert workspace.image(ref).shape == (3, 64, 64)
    assert abs(float(workspace.image(ref)[0].mean()) - 200 / 255) < 0.01
    assert client.post("/api/images", files={"file": ("red.png", png_bytes(), "image/png")}).json()["id"] == ref
    assert client.get(f"/api/predict?image={ref}").status_code == 200
    bad = client.post("/api/images", files={"file": ("notes.txt", b"just text", "text/plain")})
    assert bad.status_code == 415 and "PNG or JPEG" in bad.json()["error"]
    empty = client.post("/api/images", files={"file": ("e.png", b"", "image/png")})
    assert empty.status_code == 415
    big = client.post("/api/images", files={"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")})
    assert big.status_code == 413 and "limit" in big.json()["error"]
    assert client.post("/api/images").status_code == 422  # no file field


def test_upload_limit_holds_without_a_content_length(workspace):
    from underhood.app.workspace import TooLarge

    with pytest.raises(TooLarge):
        workspace.add_image(b"0" * (workspace.upload_limit + 1))


@pytest.mark.parametrize("path", [
    "/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e/server.py", "/static/..%252fserver.py",
    "/static/%2fetc%2fpasswd", "/static/..\\server.py", "/files/../../etc/passwd", "/files/..%2f..%2fetc%2fpasswd",
    "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/files/cache/x.json", "/files/%00", "/static/",
])
def test_path_traversal_is_a_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code)


def test_inside_keeps_to_its_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    (tmp_path / "secret.txt").write_text("s")
    assert inside(tmp_path / "a", "f.txt") == (tmp_path / "a" / "f.txt").resolve()
    for bad in ("../secret.txt", "..%2fsecret.txt", "%2e%2e/secret.txt", "/etc/passwd", "..\\secret.txt", "f.txt\x00"):
        assert inside(tmp_path / "a", bad) is None
    (tmp_path / "a" / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert inside(tmp_path / "a", "link.txt") is None  # a link out of the root is outside


def test_static_serves_our_files_and_plotly(client):
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "http://" not in page.text and "https://" not in page.text.replace("https://github.com", "")
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 100_000


def test_files_serves_the_output_folder(client, workspace):
    (workspace.out / "note.txt").write_text("hello")
    assert client.get("/files/note.txt").text == "hello"


def test_a_foreign_host_header_is_refused(client):
    assert client.get("/api/model", headers={"host": "evil.example:80"}).status_code == 403
    assert client.get("/api/model", headers={"host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/api/model", headers={"host": "localhost"}).status_code == 200


def test_jobs_report_progress_and_cancel():
    jobs = Jobs(workers=1)
    started = threading.Event()

    def work(job):
        started.set()
        for i in range(200):
            job.step(i / 200, partial={"i": i})
            time.sleep(0.01)
        return {"done": True}

    job = jobs.submit("slow", "k1", work)
    assert jobs.submit("slow", "k1", work) is job  # the same work joins the running job
    started.wait(5)
    jobs.cancel(job.id)
    for _ in range(200):
        if job.status == "cancelled":
            break
        time.sleep(0.01)
    assert job.status == "cancelled" and job.view()["result"]["i"] < 199
    again = jobs.submit("slow", "k1", lambda j: {"done": True})  # a cancelled job starts again
    for _ in range(200):
        if again.status == "done":
            break
        time.sleep(0.01)
    assert again is not job and again.view()["result"] == {"done": True}
    failed = jobs.submit("bad", "k2", lambda j: 1 / 0)
    for _ in range(200):
        if failed.status == "failed":
            break
        time.sleep(0.01)
    assert failed.status == "failed" and "ZeroDivisionError" in failed.error
    jobs.shutdown()


def test_job_endpoints(client, workspace):
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.delete("/api/jobs/nope").status_code == 404
    job = workspace.jobs.submit("t", "endpoint-test", lambda j: [time.sleep(0.01) or j.step(i / 300)
                                                                  for i in range(300)] and {"ok": 1})
    assert client.get(f"/api/jobs/{job.id}").json()["kind"] == "t"
    assert client.delete(f"/api/jobs/{job.id}").json()["job"] == job.id
    for _ in range(300):
        if job.status in ("cancelled", "done"):
            break
        time.sleep(0.01)
    assert client.get(f"/api/jobs/{job.id}").json()["status"] == "cancelled"


class Tiny(nn.Module):
    """Any model: no classes, no input size, functional ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_any_module_loads(tmp_path):
    w = Workspace([("tiny", Tiny())], "shapes:8", out=tmp_path)
    client = TestClient(create_app(w))
    body = client.get("/api/model").json()
    assert body["id"] == "tiny" and body["classes"] == ["0", "1", "2"] and body["input_size"] == [3, 64, 64]
    assert {r["name"] for r in body["layers"]} >= {"conv", "head"}
    assert client.get("/api/predict?image=data:0").json()["top"][0]["class"] in ("0", "1", "2")
    w.close()


def test_serve_binds_loopback_and_prints_the_url(tmp_path, capsys):
    from underhood.app.run import serve

    urls, stop = [], threading.Event()
    thread = threading.Thread(target=serve, kwargs=dict(models=[("tiny", Tiny())], data="shapes:8", port=0,
                                                         out=str(tmp_path), browser=False, ready=urls.append,
                                                         stop=stop), daemon=True)
    thread.start()
    for _ in range(300):
        if urls:
            break
        time.sleep(0.05)
    assert urls and urls[0].startswith("http://127.0.0.1:")
    for _ in range(100):
        try:
            body = urllib.request.urlopen(urls[0] + "api/model", timeout=5).read()
            break
        except OSError:
            time.sleep(0.05)
    assert b'"tiny"' in body
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert urls[0] in capsys.readouterr().out


def test_a_taken_port_is_a_one_line_error():
    from underhood.app.run import free_socket
    from underhood.core.errors import InputError

    sock = free_socket("127.0.0.1", 0)
    with pytest.raises(InputError, match="--port"):
        free_socket("127.0.0.1", sock.getsockname()[1])
    sock.close()
    with pytest.raises(InputError, match="--host"):
        free_socket("no-such-host.invalid", 0)


def test_another_host_warns(monkeypatch, tmp_path):
    import underhood.app.run as run

    monkeypatch.setattr(run, "free_socket", lambda host, port: (_ for _ in ()).throw(SystemExit("stop here")))
    with pytest.warns(UserWarning, match="not 127.0.0.1"), pytest.raises(SystemExit):
        run.serve([("tiny", Tiny())], "shapes:8", host="0.0.0.0", browser=False, out=str(tmp_path))


def test_cli_refuses_compare_with_itself(capsys):
    from underhood.cli import main

    assert main(["explore", "--model", "shapes", "--compare", "shapes", "--no-browser"]) == 2
    assert "--compare" in capsys.readouterr().err


def test_cache_memory_is_bounded_by_bytes_and_entries(tmp_path):
    from underhood.app.workspace import Cache

    cache = Cache(tmp_path, memory=4, max_bytes=1000)
    for i in range(3):
        cache.remember(f"t{i}", torch.zeros(100))  # 400 bytes each: the third pushes the first out
    assert cache.recall("t0") is None and cache.recall("t1") is not None and cache.recall("t2") is not None
    for i in range(6):
        cache.remember(f"s{i}", "x")
    assert cache.recall("s0") is None and cache.recall("s5") == "x"
    cache.store_json("k", {"a": 1})
    cache.forget()
    assert cache.recall("s5") is None and cache.load_json("k") == {"a": 1}  # the disk survives a restart


def test_foreign_origin_cannot_post(client):
    r = client.post("/api/images", files={"file": ("red.png", png_bytes(), "image/png")},
                    headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    assert client.post("/api/images", files={"file": ("red.png", png_bytes(), "image/png")},
                       headers={"origin": "http://127.0.0.1:8000"}).status_code == 200



def test_browser_page_does_not_wait_for_the_whole_dataset(tmp_path):
    w = Workspace(["shapes"], "shapes:40", out=tmp_path)
    client = TestClient(create_app(w))
    first = client.get("/api/data?offset=5&limit=4").json()
    assert first["accuracy"] is None  # the full pass has not run: the page was predicted on its own
    full = w.predictions(w.main)
    assert [i["pred"] for i in first["items"]] == full[5:9].argmax(-1).tolist()
    assert client.get("/api/data?limit=1").json()["accuracy"] is not None
    again = Workspace(["shapes"], "shapes:40", out=tmp_path)  # a restart reads the pass from disk
    assert torch.equal(again.predictions_ready(again.main), full)
    w.close()
    again.close()

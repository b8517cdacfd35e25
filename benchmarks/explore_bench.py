"""The explorer's speed on this machine: launch to interactive, and the interactive requests at p50 / p95.

    python benchmarks/explore_bench.py [--data shapes:2000] [--rounds 40] [--device cpu]

Targets (issue 17, 2 CPU cores, the built-in model, warm caches): page interactive within 5 s of
launch; switching layer <= 150 ms and selecting a unit <= 100 ms at the 95th percentile; live
ablation <= 150 ms. Requests go over real HTTP to a server on 127.0.0.1 (uvicorn, as a user
runs it). Each figure is also shown as a ratio to the model's raw forward pass on one image,
measured in the same run. The webcam's frames per second come from the browser test
(tests/test_app_browser.py, Chromium's fake camera). Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

import torch


def timed(url: str, data: bytes | None = None) -> tuple[float, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
    ms = (time.perf_counter() - start) * 1000
    return ms, (json.loads(body) if r.headers.get("content-type", "").startswith("application/json") else {})


def wait_job(base: str, body: dict) -> dict:
    while body.get("status") in ("queued", "running"):
        time.sleep(0.1)
        body = timed(f"{base}api/jobs/{body['job']}")[1]
    return body


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes:2000")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from underhood.app.run import serve

    urls: list[str] = []
    stop = threading.Event()
    cpu0, launch = time.process_time(), time.perf_counter()
    thread = threading.Thread(target=serve, kwargs=dict(models=["shapes"], data=args.data, port=0, browser=False,
                                                         out=args.out, device=args.device, ready=urls.append,
                                                         stop=stop), daemon=True)
    thread.start()
    while not urls:
        time.sleep(0.01)
    base = urls[0]
    while True:
        try:
            timed(base + "api/model")
            break
        except OSError:
            time.sleep(0.01)
    model_info = timed(base + "api/model")[1]
    layer = model_info["default_layer"]
    timed(base)                                                 # the page
    timed(f"{base}api/data?limit=60")                          # the dataset browser (predictions of the dataset)
    timed(f"{base}api/layer?image=data:0&layer={layer}")       # the first view
    interactive = time.perf_counter() - launch
    print(f"launch -> interactive (model, data, page, browser list, first layer): {interactive:.2f} s "
          f"(target 5 s); CPU {time.process_time() - cpu0:.2f} s")

    from underhood.core.hooks import evaluating
    from underhood.models.loading import load_model

    model = load_model("shapes", device=args.device)
    x = torch.rand(1, 3, 64, 64, device=args.device)
    with torch.no_grad(), evaluating(model):
        for _ in range(5):
            model(x)
        start = time.perf_counter()
        for _ in range(50):
            model(x)
        forward_ms = (time.perf_counter() - start) / 50 * 1000
    print(f"raw forward of one image: {forward_ms:.2f} ms")

    spatial = [r["name"] for r in model_info["layers"] if r["spatial"]]
    layers = (model_info["stages"] or spatial)[:6]
    for name in layers:                                         # warm the caches
        timed(f"{base}api/layer?image=data:0&layer={name}")
    rows = {}
    cases = {
        "switch layer": lambda i: timed(f"{base}api/layer?image=data:0&layer={layers[i % len(layers)]}"),
        "select unit": lambda i: timed(f"{base}api/unit?image=data:0&layer={layer}&unit={i % 32}"),
        "ablate top-3": lambda i: timed(f"{base}api/ablate", json.dumps(
            {"image": "data:0", "layer": layer, "top_k": 1 + i % 3}).encode()),
        "ablate unit": lambda i: timed(f"{base}api/ablate", json.dumps(
            {"image": "data:0", "layer": layer, "units": [i % 32]}).encode()),
        "predict": lambda i: timed(f"{base}api/predict?image=data:{i % 50}"),
    }
    for name, call in cases.items():
        call(0)
        ms = [call(i)[0] for i in range(args.rounds)]
        rows[name] = ms
        print(f"{name:14s} p50 {statistics.median(ms):7.1f} ms   p95 {pct(ms, 0.95):7.1f} ms   "
              f"({pct(ms, 0.95) / forward_ms:5.1f}x a raw forward)")
    start = time.perf_counter()
    wait_job(base, timed(f"{base}api/unit/top?layer={layer}&unit=0")[1])
    print(f"top-9 scan of {args.data} at {layer} (all units, background): {time.perf_counter() - start:.2f} s")
    ms = [timed(f"{base}api/unit/top?layer={layer}&unit={u}")[0] for u in range(16)]
    print(f"top-9 of another unit once scanned: p95 {pct(ms, 0.95):.1f} ms")
    start = time.perf_counter()
    wait_job(base, timed(f"{base}api/projector?layer={layer}&method=pca")[1])
    print(f"projector PCA of {args.data}: {time.perf_counter() - start:.2f} s")
    stop.set()
    thread.join(10)


if __name__ == "__main__":
    main()

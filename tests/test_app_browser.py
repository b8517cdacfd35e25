"""The explorer in a real browser: Debian's Chromium driven by Playwright (nothing is downloaded).

A short tour of the page: launch (time to interactive), pick a layer, select units with the keyboard
and with a click, switch tabs with keys, upload an image, draw on the canvas, run Chromium's fake
webcam (frames per second, end to end), lasso in the projector and open a point, ablate, attack, ask
why, add a panel to the report. Along the way: no console error, and every request stays on
127.0.0.1. Screenshots go to ``$UNDERHOOD_SCREENSHOTS`` (default: a temporary folder). Skips cleanly
where Chromium or Playwright is absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("UNDERHOOD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="needs Debian's chromium (apt install chromium)")

ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
WAIT = 45_000  # ms, generous: the machine is shared


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The explorer on a free port in a thread (two models, so compare mode has a partner)."""
    from underhood.app.run import serve

    out = tmp_path_factory.mktemp("explore")
    urls: list[str] = []
    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        try:
            serve(["shapes", "shapes-robust"], "shapes:300", port=0, browser=False, out=str(out),
                  ready=lambda url: (urls.append(url), ready.set()), stop=stop)
        finally:
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(120) and urls, "the explorer did not start"
    yield urls[0], out
    stop.set()
    thread.join(30)


@pytest.fixture(scope="module")
def shots():
    folder = Path(os.environ.get("UNDERHOOD_SCREENSHOTS") or tempfile.mkdtemp(prefix="underhood-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def state(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def wait_state(page, key: str, value: str) -> None:
    page.wait_for_function(f"new URLSearchParams(location.search).get({key!r}) === {value!r}", timeout=WAIT)


def wait_image(page, prefix_not: str | None = None, startswith: str | None = None) -> str:
    """Wait until the current input changes (and its grid has redrawn); returns its reference."""
    if startswith is not None:
        page.wait_for_function(f"(new URLSearchParams(location.search).get('image') || '').startsWith({startswith!r})",
                               timeout=WAIT)
    else:
        page.wait_for_function(f"new URLSearchParams(location.search).get('image') !== {prefix_not!r}", timeout=WAIT)
    return state(page)["image"]


def test_tour(server, shots):
    url, out = server
    console: list[str] = []
    remote: list[str] = []
    numbers: dict[str, float] = {}

    def on_request(request) -> None:
        host = urlparse(request.url)
        if host.scheme in ("data", "blob"):
            return
        if host.hostname != "127.0.0.1":
            remote.append(request.url)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900}, permissions=["camera"])
        page = context.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("request", on_request)
        page.on("websocket", lambda w: on_request(type("R", (), {"url": w.url})()))
        cpu0 = time.process_time()

        # launch: interactive = the first layer grid is drawn
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=WAIT)
        numbers["interactive_s"] = time.perf_counter() - t0
        first = state(page)
        assert first["tab"] == "layer" and first["layer"] and first["image"].startswith("data:")
        page.wait_for_selector("#top9 .top-item img", timeout=WAIT)        # top-9 filled in by the scan
        page.wait_for_function("document.querySelector('#unit-map').src.startsWith('data:image/png')",
                               timeout=WAIT)
        page.screenshot(path=str(shots / "layer.png"))

        # pick a layer with the picker, then step layers with the keyboard
        layers = page.evaluate("Array.from(document.querySelectorAll('#layer optgroup[label=\"All layers\"] option'))"
                               ".map(o => o.value)")
        target = layers[2] if layers[2] != first["layer"] else layers[3]
        page.select_option("#layer", target)
        wait_state(page, "layer", target)
        t1 = time.perf_counter()
        page.keyboard.press("]")
        wait_state(page, "layer", layers[layers.index(target) + 1])
        page.wait_for_function("document.querySelector('#grids .grid')._data.layer === "
                               f"{layers[layers.index(target) + 1]!r}", timeout=WAIT)
        numbers["layer_switch_ms"] = 1000 * (time.perf_counter() - t1)
        page.keyboard.press("[")
        wait_state(page, "layer", target)
        page.keyboard.press("PageDown")
        page.keyboard.press("PageDown")
        wait_state(page, "layer", layers[layers.index(target) + 2])

        # select a unit with the keyboard, then with a click on its tile
        page.wait_for_function("document.querySelector('#grids .grid')._data && "
                               "document.querySelector('#grids .grid')._data.layer === new URLSearchParams("
                               "location.search).get('layer')", timeout=WAIT)
        cols = page.evaluate("parseInt(document.querySelector('#grids .grid').dataset.cols)")
        page.keyboard.press("ArrowRight")
        wait_state(page, "unit", "1")
        page.keyboard.press("ArrowDown")
        wait_state(page, "unit", str(1 + cols))
        page.keyboard.press("ArrowLeft")
        wait_state(page, "unit", str(cols))
        box = page.locator("#grids .grid").first.bounding_box()
        scale, pitch = page.evaluate("[parseFloat(document.querySelector('#grids .grid').dataset.scale), "
                                     "parseFloat(document.querySelector('#grids .grid').dataset.pitch)]")
        t1 = time.perf_counter()
        page.mouse.click(box["x"] + (2 + 0.5) * pitch * scale, box["y"] + 0.5 * pitch * scale)
        wait_state(page, "unit", "2")
        page.wait_for_function("document.querySelector('#unit-title').textContent.endsWith('unit 2')")
        numbers["unit_click_ms"] = 1000 * (time.perf_counter() - t1)
        page.click("#rule button[data-rule='deconvnet']")
        page.wait_for_selector("#top9 .top-item img", timeout=WAIT)
        page.click("#actmax-run")
        page.wait_for_selector("#actmax-box img", timeout=WAIT)
        page.screenshot(path=str(shots / "unit.png"))

        # compare mode: both models' grids and their difference
        page.keyboard.press("c")
        page.wait_for_selector("#grids .grid-box.diff .sprite[src^='data:image/png']", timeout=WAIT)
        page.wait_for_selector("#grids .grid-box.b .sprite[src^='data:image/png']", timeout=WAIT)
        assert state(page)["compare"] == "shapes-robust"
        page.screenshot(path=str(shots / "compare.png"))
        page.keyboard.press("c")
        page.wait_for_function("!new URLSearchParams(location.search).get('compare')")

        # the projector: lasso a region, the grid lists exactly those images; a click opens that image
        page.keyboard.press("1")
        page.wait_for_selector("#grids .grid-box.a .sprite[src^='data:image/png']", timeout=WAIT)
        page.keyboard.press("3")
        wait_state(page, "tab", "projector")
        page.wait_for_function("document.querySelector('#plot').data && view.proj", timeout=WAIT)
        page.wait_for_selector("#plot .nsewdrag", timeout=WAIT)
        drag = page.locator("#plot .nsewdrag").first.bounding_box()
        cx, cy, rx, ry = (drag["x"] + drag["width"] / 2, drag["y"] + drag["height"] / 2,
                          drag["width"] * 0.45, drag["height"] * 0.45)
        page.mouse.move(cx - rx, cy - ry)
        page.mouse.down()
        for x, y in ((cx + rx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry), (cx - rx, cy - ry + 2)):
            page.mouse.move(x, y, steps=6)
        page.mouse.up()
        page.wait_for_selector("#selection .thumb", timeout=WAIT)
        selected = page.evaluate("Array.from(document.querySelectorAll('#selection .thumb'))"
                                 ".map(b => +b.dataset.index)")
        proj = page.evaluate("({x: view.proj.x, y: view.proj.y, index: view.proj.index})")
        assert len(set(selected)) == len(selected) and set(selected) <= set(proj["index"])
        page.screenshot(path=str(shots / "projector.png"))
        # click a point: exactly the image under the pointer opens (the index mapping)
        current = state(page)["image"]
        pick = next(k for k in range(len(proj["index"]) // 2, len(proj["index"]))
                    if f"data:{proj['index'][k]}" != current)
        point = page.evaluate(f"""(() => {{
            const gd = document.querySelector('#plot'), L = gd._fullLayout;
            return [L.xaxis.l2p(view.proj.x[{pick}]) + L._size.l, L.yaxis.l2p(view.proj.y[{pick}]) + L._size.t];
        }})()""")
        plot = page.locator("#plot").bounding_box()
        page.mouse.move(plot["x"] + point[0], plot["y"] + point[1])
        page.mouse.click(plot["x"] + point[0], plot["y"] + point[1])
        opened = wait_image(page, prefix_not=current)
        assert opened.startswith("data:")
        i = proj["index"].index(int(opened[5:]))
        near = page.evaluate(f"""(() => {{
            const gd = document.querySelector('#plot'), L = gd._fullLayout;
            return Math.hypot(L.xaxis.l2p(view.proj.x[{i}]) - L.xaxis.l2p(view.proj.x[{pick}]),
                              L.yaxis.l2p(view.proj.y[{i}]) - L.yaxis.l2p(view.proj.y[{pick}]));
        }})()""")
        assert near <= 6, f"the click opened image {opened}, {near:.1f} px away from the point clicked"
        page.wait_for_selector("#neighbors .thumb img", timeout=WAIT)

        # inputs: upload a file, draw on the canvas
        page.keyboard.press("1")
        page.click("#source-tabs button[data-src='upload']")
        from PIL import Image

        png = out / "upload-test.png"
        Image.new("RGB", (90, 70), (200, 40, 40)).save(png)
        before = state(page)["image"]
        page.set_input_files("#file", str(png))
        uploaded = wait_image(page, prefix_not=before)
        assert not uploaded.startswith("data:")
        page.wait_for_function("document.querySelector('#current-img').complete && "
                               "document.querySelector('#current-img').naturalWidth > 0", timeout=WAIT)

        page.click("#source-tabs button[data-src='draw']")
        canvas = page.locator("#canvas").bounding_box()
        page.mouse.move(canvas["x"] + 60, canvas["y"] + 60)
        page.mouse.down()
        for k in range(12):
            page.mouse.move(canvas["x"] + 60 + 12 * k, canvas["y"] + 60 + 10 * (k % 4), steps=2)
        page.mouse.up()
        drawn = wait_image(page, prefix_not=uploaded)
        assert not drawn.startswith("data:")
        page.wait_for_selector("#predictions .bar-row", timeout=WAIT)
        page.screenshot(path=str(shots / "draw.png"))

        # the fake webcam, end to end: frames/s over ~3 s with the live layer grid
        page.click("#source-tabs button[data-src='webcam']")
        page.click("#cam-start")
        page.wait_for_function("live.frames >= 3", timeout=WAIT)
        f0, s0 = page.evaluate("[live.frames, performance.now()]")
        time.sleep(3)
        f1, s1 = page.evaluate("[live.frames, performance.now()]")
        numbers["webcam_fps"] = (f1 - f0) / ((s1 - s0) / 1000)
        page.wait_for_selector("#live-top .bar-row")
        page.screenshot(path=str(shots / "webcam.png"))
        page.click("#cam-stop")
        print(f"\nexplorer so far: {numbers}", flush=True)

        # help overlay
        page.keyboard.press("?")
        page.wait_for_selector("#help-overlay:not([hidden])")
        page.screenshot(path=str(shots / "help.png"))
        page.keyboard.press("Escape")

        # tabs by key
        page.keyboard.press("2")
        wait_state(page, "tab", "attribution")
        page.wait_for_selector("[data-panel='attribution'] figure.attr:not(.loading) img[alt]:not([alt='input'])",
                               timeout=WAIT)
        page.click("#methods .chip[data-method='integrated_gradients'], #methods .chip:nth-child(3)")
        page.wait_for_function("document.querySelectorAll(\"[data-panel='attribution'] figure.attr.loading\")"
                               ".length === 0", timeout=WAIT)
        assert "," in state(page)["method"]
        page.screenshot(path=str(shots / "attribution.png"))

        page.keyboard.press("4")
        wait_state(page, "tab", "ablation")
        page.click("#ablate-topk")
        page.wait_for_selector(".ablation-view .logit-row", timeout=WAIT)
        page.screenshot(path=str(shots / "ablation.png"))

        page.keyboard.press("5")
        wait_state(page, "tab", "attack")
        page.click("#attack-method button[data-m='pgd']")
        page.click("#attack-run")
        page.wait_for_selector(".attack-view img[alt='adversarial']", timeout=WAIT)
        page.screenshot(path=str(shots / "attack.png"))
        before = state(page)["image"]
        page.click("text=Open adversarial image")
        adversarial = wait_image(page, prefix_not=before)
        assert not adversarial.startswith("data:")

        page.keyboard.press("6")
        wait_state(page, "tab", "why")
        page.wait_for_selector(".why.helpful .why-item img", timeout=WAIT)
        page.screenshot(path=str(shots / "why.png"))

        # add the panel to the report
        page.click("#report")
        page.wait_for_selector("#report-link:not([hidden])", timeout=WAIT)
        assert (out / "explorer-report.html").is_file()

        # the whole state is in the URL: reopening it restores the view
        page.keyboard.press("2")
        wait_state(page, "tab", "attribution")
        saved = page.url
        page2 = context.new_page()
        page2.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page2.on("request", on_request)
        page2.goto(saved)
        page2.wait_for_function("document.querySelector(\"[data-panel='attribution']\").hidden === false", timeout=WAIT)
        assert state(page2) == state(page)
        assert page2.locator("#layer").input_value() == state(page)["layer"]
        numbers["cpu_s"] = time.process_time() - cpu0
        browser.close()

    print("\nexplorer in Chromium: " + ", ".join(f"{k} {v:.2f}" for k, v in numbers.items())
          + f"; screenshots in {shots}")
    assert not console, console
    assert not remote, remote

"""The command line: help with examples, outputs and manifests, one-line errors, the demo report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from underhood.cli import EXAMPLES, main


def run(*argv: str):
    return subprocess.run([sys.executable, "-m", "underhood", *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_help_does_not_import_torch():
    """Building the parser (``underhood --help``) stays fast: option choices are static, checked against the
    registries by the families' CLI tests."""
    code = ("import sys\nfrom underhood.cli import build_parser\nbuild_parser().format_help()\n"
            "print(' '.join(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"building the parser imported: {proc.stdout.strip()}"


def test_models_lists_builtins(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "shapes" in out and "digits" in out and "missing" not in out


def test_layers_command(tmp_path, capsys):
    assert main(["layers", "shapes", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "classifier" in out and "parameters" in out
    rows = json.loads((tmp_path / "layers.json").read_text())
    assert rows[0]["name"] == "features.0" and rows[0]["rf"] == [3.0, 3.0]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["command"] == "layers" and manifest["manifest_version"] == 1


def test_predict_command(tmp_path, capsys):
    import underhood

    data = underhood.datasets.shapes(2, seed=5)
    paths = []
    for i, img in enumerate(data.images):
        p = tmp_path / f"{i}.png"
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    assert main(["predict", *paths, "--model", "shapes", "--out", str(tmp_path / "o"), "--top", "2"]) == 0
    result = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert len(result) == 2 and len(result[0]["top"]) == 2
    truth = [data.classes[i] for i in data.labels.tolist()]
    assert [r["top"][0]["class"] for r in result] == truth


@pytest.mark.parametrize("argv, pattern", [
    (["predict", "does-not-exist.png"], r"no such file"),
    (["layers", "no-such-model"], r"built-ins are"),
    (["predict", "{bad}", "--model", "shapes"], r"cannot read"),
    # no CUDA: "not available"; CUDA with fewer than 8 GPUs: "this machine has N CUDA device(s)" (both exit 2)
    (["layers", "shapes", "--device", "cuda:7"],
     r"device: 'cuda:7' asked for but (CUDA is not available here|this machine has \d+ CUDA devices? \(cuda:0)"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, argv, pattern):
    argv = [a.replace("{bad}", str(tmp_path / "bad.png")) for a in argv]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    proc = run(*argv, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]) and "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")  # fails while the command runs, not in the parser
    proc = run("predict", str(tmp_path / "bad.png"), "--debug", "--out", str(tmp_path / "out"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_demo_writes_a_self_contained_report(tmp_path):
    proc = run("demo", "--out", str(tmp_path), "--n", "16", "--no-progress", "--timings")
    assert proc.returncode == 0, proc.stderr
    assert "report written to" in proc.stdout
    timings = json.loads((tmp_path / "timings.json").read_text())  # one row per section, printed as a table too
    html_ids = re.findall(r'<section[^>]* id="([^"]+)"', (tmp_path / "report.html").read_text())
    assert {r["id"] for r in timings["sections"]} >= set(html_ids) - {""} and len(timings["sections"]) >= 10
    assert all(r["id"] in proc.stdout for r in timings["sections"]) and "whole command" in proc.stdout
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")]
    html = (tmp_path / "report.html").read_text()
    for anchor in ("model", "predictions", "filters", "feature-maps", "attribution", "attribution-trust",
                   "adversarial-examples", "adversarial-iterations", "adversarial-robustness", "adversarial-universal",
                   "adversarial-fooling"):
        assert f'id="{anchor}"' in html
    assert "receptive field" in html and "test accuracy" in html and "Grad-CAM" in html
    assert "sanity" in html.lower() and "shortcut" in html.lower()
    assert "shapes-robust (adversarially trained)" in html and "PGD (20 steps)" in html
    assert html.count("data:image/png;base64,") >= 3
    # nothing external: no src/href to another host, no scripts or stylesheets fetched
    assert not re.search(r'(src|href)="(https?:)?//', html)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "report.html" in manifest["files"] and (tmp_path / "figures" / "filters.png").is_file()

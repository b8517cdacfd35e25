"""underhood against Captum, side by side: same run, same model, same inputs, same targets.

For each model and method: Captum's time over ours (above 1: underhood is faster), each side's
median wall seconds of 3 timed runs after a warm-up (the two sides interleaved, so a burst of load
from other processes hits both; ``torch.cuda.synchronize`` around every timed region on a GPU),
the CPU seconds of those runs, and the Pearson correlation of the two maps (the comparison is
only fair if they compute the same thing; SmoothGrad draws different noise on each side, so its
correlation is below 1 by the noise alone).

Conventions matched: Captum's ``abs=False`` for saliency and SmoothGrad (ours is signed); its
Riemann-right rule for integrated gradients (ours: ``rule="right"``); ``relu_attributions=True``
and bilinear upsampling for Grad-CAM (ours applies the ReLU); occlusion with a zero baseline on all
channels at once (Captum's window spans the channels; it returns the map on every channel, ours
one channel: the first of Captum's is compared). Captum's batch options (``internal_batch_size``,
``nt_samples_batch_size``, ``perturbations_per_eval``) get the batch size underhood resolves,
so both run the same batches; SmoothGrad's noise is ``0.15 * (max - min)`` on our side, and
Captum's ``stdevs`` the same value for the batch (inputs in [0, 1]).

    python benchmarks/captum_compare.py                       # CPU: shapes model, ResNet-18-sized (random)
    python benchmarks/captum_compare.py --device cuda         # + torchvision resnet50 and vgg16 (weights=None)
    python benchmarks/captum_compare.py --quick --out x.json  # fewer steps; JSON to x.json

Needs the ``bench`` extra (``pip install underhood[bench]``: captum).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

import underhood  # noqa: E402
from underhood import attribution  # noqa: E402
from underhood.core import batching  # noqa: E402
from underhood.core.layers import resolve  # noqa: E402


@dataclass
class Row:
    model: str
    method: str
    ours_s: float           # median wall seconds
    captum_s: float
    ours_cpu_s: float       # CPU seconds of the same runs (median)
    captum_cpu_s: float
    ratio: float            # captum_s / ours_s: above 1, underhood is faster
    correlation: float      # Pearson correlation of the two maps (flattened batch)
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(fns: list[Callable[[], object]], device: torch.device, repeat: int = 3) -> list[tuple[float, float]]:
    """``(median wall, median cpu)`` seconds of each fn, after one warm-up each, rounds interleaved."""
    for fn in fns:
        fn()
    walls: list[list[float]] = [[] for _ in fns]
    cpus: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            walls[i].append(time.perf_counter() - t0)
            cpus[i].append(time.process_time() - c0)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten().cpu(), b.detach().double().flatten().cpu()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@dataclass
class Setting:
    label: str
    model: nn.Module
    x: torch.Tensor
    layer: str            # Grad-CAM layer (the same module on both sides)
    steps: int            # integrated gradients
    samples: int          # SmoothGrad
    window: int           # occlusion
    stride: int


def settings(device: torch.device, quick: bool) -> list[Setting]:
    from attribution import ResNet18

    torch.manual_seed(0)
    steps, samples = (16, 16) if quick else (50, 50)
    shapes = underhood.load_model("shapes", device=device)
    out = [Setting("shapes 8x64", shapes, underhood.datasets.shapes(8, seed=3).images.to(device),
                   "features.16", steps, samples, 16, 8)]
    if device.type == "cpu":
        resnet = underhood.load_model(ResNet18(), device=device)
        x = underhood.datasets.shapes(4, size=112, seed=3).images.to(device)
        out.append(Setting("resnet18-sized 4x112", resnet, x, "layer4", steps, samples, 16, 8))
        return out
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 (a broken install raises more than ImportError)
        print(f"torchvision not importable ({type(exc).__name__}); GPU lane uses the ResNet-18-sized model")
        resnet = underhood.load_model(ResNet18(), device=device)
        x = torch.rand(16, 3, 224, 224, device=device)
        return [*out, Setting("resnet18-sized 16x224", resnet, x, "layer4", steps, samples, 32, 16)]
    x = torch.rand(16, 3, 224, 224, device=device)
    for name, layer in (("resnet50", "layer4"), ("vgg16", "features.29")):
        net = getattr(torchvision.models, name)(weights=None)
        out.append(Setting(f"{name} 16x224", underhood.load_model(net, device=device), x, layer, steps, samples, 32,
                           16))
    return out


def pairs(s: Setting, targets: torch.Tensor) -> dict[str, tuple[Callable, Callable, Callable]]:
    """method -> (ours, captum, captum's map as ours' shape)."""
    from captum.attr import (
        Deconvolution,
        GuidedBackprop,
        InputXGradient,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )

    m, x, n = s.model, s.x, len(s.x)
    shape = tuple(x.shape[1:])
    grad_batch = batching.auto_batch_size(m, shape, grad=True)
    fwd_batch = batching.auto_batch_size(m, shape, grad=False)
    sigma = 0.15 * float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
    module = resolve(m, s.layer)
    same = lambda t: t
    c = x.shape[1]
    return {
        "saliency": (lambda: attribution.saliency(m, x, targets),
                     lambda: Saliency(m).attribute(x, target=targets, abs=False), same),
        "input_x_gradient": (lambda: attribution.input_x_gradient(m, x, targets),
                             lambda: InputXGradient(m).attribute(x, target=targets), same),
        f"integrated_gradients {s.steps}": (
            lambda: attribution.integrated_gradients(m, x, targets, steps=s.steps, batch_size=grad_batch),
            lambda: IntegratedGradients(m).attribute(x, baselines=0.0, target=targets, n_steps=s.steps,
                                                     method="riemann_right", internal_batch_size=grad_batch), same),
        f"smoothgrad {s.samples}": (
            lambda: attribution.smoothgrad(m, x, targets, n_samples=s.samples, batch_size=grad_batch),
            lambda: NoiseTunnel(Saliency(m)).attribute(x, nt_type="smoothgrad", nt_samples=s.samples, stdevs=sigma,
                                                       nt_samples_batch_size=max(1, grad_batch // n),
                                                       target=targets, abs=False), same),
        "gradcam": (lambda: attribution.gradcam(m, x, targets, layer=s.layer),
                    lambda: LayerAttribution.interpolate(
                        LayerGradCam(m, module).attribute(x, target=targets, relu_attributions=True),
                        tuple(x.shape[-2:]), "bilinear"), same),
        f"occlusion {s.window}/{s.stride}": (
            lambda: attribution.occlusion(m, x, targets, window=s.window, stride=s.stride, batch_size=fwd_batch),
            lambda: Occlusion(m).attribute(x, sliding_window_shapes=(c, s.window, s.window),
                                           strides=(c, s.stride, s.stride), baselines=0.0, target=targets,
                                           perturbations_per_eval=max(1, fwd_batch // n)),
            lambda t: t[:, :1]),
        "guided_backprop": (lambda: attribution.guided_backprop(m, x, targets),
                            lambda: GuidedBackprop(m).attribute(x, target=targets), same),
        "deconvnet": (lambda: attribution.deconvnet(m, x, targets),
                      lambda: Deconvolution(m).attribute(x, target=targets), same),
    }


def compare(s: Setting, device: torch.device) -> list[Row]:
    import warnings

    warnings.filterwarnings("ignore", module="captum")
    s.model.eval()
    with torch.no_grad():
        targets = s.model(s.x).argmax(1)
    rows = []
    for method, (ours, captum, view) in pairs(s, targets).items():
        try:
            corr = correlation(ours(), view(captum()))
            (ow, oc), (cw, cc) = median_times([ours, captum], device)
            note = ""
        except Exception as exc:  # noqa: BLE001 (a side that fails is a line in the table, not the end)
            ow = oc = cw = cc = corr = float("nan")
            note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
        row = Row(s.label, method, ow, cw, oc, cc, cw / ow if ow == ow else float("nan"), corr, note)
        rows.append(row)
        print(f"{row.model:22s} {row.method:26s} ours {ow:8.3f} s  captum {cw:8.3f} s  captum/ours {row.ratio:5.2f}x"
              f"  corr {corr:6.3f}  cpu s {oc:7.2f} / {cc:7.2f} {note}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    """Markdown: method x model, Captum time / ours."""
    models = list(dict.fromkeys(r.model for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    cell = {(r.model, r.method): r for r in rows}
    lines = ["| method | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for meth in methods:
        vals = []
        for mod in models:
            r = cell.get((mod, meth))
            vals.append("n/a" if r is None or r.ratio != r.ratio else f"{r.ratio:.2f}x")
        lines.append(f"| {meth} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--quick", action="store_true", help="16 steps/samples instead of 50")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/captum-compare-DEVICE.json)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    try:
        import captum
    except ImportError:
        raise SystemExit("captum is not importable; pip install underhood[bench]") from None
    from underhood.core.device import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(int(os.environ.get("UNDERHOOD_THREADS", "2")))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env = {"underhood": underhood.__version__, "torch": torch.__version__, "captum": captum.__version__,
           "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_1min": load}
    print(json.dumps(env))
    rows = []
    for s in settings(device, args.quick):
        rows += compare(s, device)
    print("\nCaptum time / ours (above 1: underhood is faster)\n" + table(rows))
    out = Path(args.out or Path(__file__).parent / f"captum-compare-{device.type}.json")
    out.write_text(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.modules.setdefault("run", __import__("run"))  # benchmarks/attribution.py imports `run`
    main(sys.argv[1:])

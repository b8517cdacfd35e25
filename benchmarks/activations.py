"""Dataset scans of the activations family against the raw batched forward pass of the same images.

``top_patches`` (the streaming top-k scan of every channel) and ``statistics`` over N images, at
the batch size they pick, against ``model(x)`` over the same N images at that batch size; target
<= 1.2x. Then the whole ``top_patches`` with patches and guided-backprop patterns of 32 channels x 9
images: the patterns cost one forward-to-the-layer and backward per unit whatever N is, so the
line gives that fixed part and the N from which the whole stays within the target. An early layer shows
what stopping the forward pass after the layer saves; the last stage is the honest case.

    python benchmarks/run.py activations
"""

from __future__ import annotations

import torch

import underhood
from run import DEVICE, report, timed
from underhood.activations import statistics, top_patches
from underhood.core import batching

TARGET = 1.2


def _raw(model: torch.nn.Module, images: torch.Tensor, b: int):
    def run() -> None:
        with torch.no_grad():
            for i in range(0, len(images), b):
                model(images[i:i + b])
    return run


def _case(name: str, model: torch.nn.Module, images: torch.Tensor, layers: list[str], repeat: int) -> None:
    b = batching.auto_batch_size(model, tuple(images.shape[1:]))
    ref, ref_cw = timed(_raw(model, images, b), repeat)
    n = len(images)
    report(f"raw forward, {name}", f"{ref:6.2f} s for {n} images at batch {b} (the reference)", ref_cw)
    per_image = ref / n
    for layer in layers:
        for label, fn in (("top_patches, scan", lambda at=layer: top_patches(model, images, at, k=9, crops=False,
                                                                             batch_size=b)),
                          ("statistics", lambda at=layer: statistics(model, images, at, batch_size=b))):
            seconds, cw = timed(fn, repeat)
            ratio = seconds / ref
            report(f"  {label} {layer}", f"{seconds:6.2f} s = {ratio:4.2f}x raw forward (<= {TARGET:.1f}x)"
                   f"{' MISS' if ratio > TARGET else ''}", cw)
            if label.startswith("top_patches"):
                scan_ratio = ratio
        # patches + guided-backprop patterns of 32 channels x 9 images: a cost that does not grow with N
        seconds, cw = timed(lambda at=layer: top_patches(model, images, at, k=9, channels=range(32), batch_size=b),
                            repeat)
        fixed = max(0.0, seconds - scan_ratio * ref)
        even = fixed / max(1e-9, (TARGET - scan_ratio) * per_image)
        report(f"  + patterns of 32 ch x 9 {layer}", f"{seconds:6.2f} s in all = {seconds / ref:4.2f}x; fixed part "
               f"{fixed:5.2f} s: <= {TARGET:.1f}x from N >= {even:,.0f}", cw)


def bench_activations() -> None:
    model = underhood.load_model("shapes", device=DEVICE)
    images = underhood.datasets.shapes(4096, seed=11).images
    _case("shapes 4096 x 64x64", model, images, ["features.6", "features.16"], repeat=3)
    from attribution import ResNet18

    torch.manual_seed(0)
    resnet = underhood.load_model(ResNet18(), device=DEVICE)
    big = underhood.datasets.shapes(384, size=224, seed=11).images
    _case("ResNet-18-sized 384 x 224x224", resnet, big, ["layer2", "layer4"], repeat=2)

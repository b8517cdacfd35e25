"""Dataset scans of the activations family against the raw batched forward pass of the same images.

``top_patches`` (the streaming top-k scan of every channel, then patches and guided-backprop
patterns of 64 of them; and the scan alone) and ``statistics`` over N images, each at the batch size it picks, against
``model(x)`` over the same N images at that batch size; target <= 1.2x. An early layer shows
what stopping the forward pass after the layer saves; the last stage is the honest case.

    python benchmarks/run.py activations
"""

from __future__ import annotations

import torch

import underhood
from run import report, timed
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
    for layer in layers:
        jobs = {"top_patches, 64 channels": lambda at=layer: top_patches(model, images, at, k=9, channels=range(64),
                                                                        batch_size=b),
                "top_patches, scan only": lambda at=layer: top_patches(model, images, at, k=9, crops=False,
                                                                      batch_size=b),
                "statistics": lambda at=layer: statistics(model, images, at, batch_size=b)}
        for label, fn in jobs.items():
            seconds, cw = timed(fn, repeat)
            ratio = seconds / ref
            report(f"  {label} {layer}", f"{seconds:6.2f} s = {ratio:4.2f}x raw forward (<= {TARGET:.1f}x)"
                   f"{' MISS' if ratio > TARGET else ''}", cw)


def bench_activations() -> None:
    model = underhood.load_model("shapes", device="cpu")
    images = underhood.datasets.shapes(4096, seed=11).images
    _case("shapes 4096 x 64x64", model, images, ["features.6", "features.16"], repeat=3)
    from attribution import ResNet18

    torch.manual_seed(0)
    resnet = underhood.load_model(ResNet18(), device="cpu")
    big = underhood.datasets.shapes(384, size=224, seed=11).images
    _case("ResNet-18-sized 384 x 224x224", resnet, big, ["layer2", "layer4"], repeat=2)

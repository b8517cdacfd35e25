"""A full linear probe of the shapes model against the raw forward pass of the same images.

``probe`` on 2,000 training + 1,000 held-out images (pixels, every stage, the random copy, the model's
own accuracy) against ``model(x)`` over the same 3,000 images at the batch size the probe picks; target
<= 30 s on 2 cores. The probe runs two networks (the model and its random copy) over the images, plus
one scoring pass of the test set, plus one L-BFGS fit per layer: about 2.3x the raw pass is its floor.

    python benchmarks/transfer_bench.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import underhood
from underhood.data import splits
from underhood.transfer import probe

TARGET = 30.0


def _timed(fn) -> tuple[float, float, object]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    torch.set_num_threads(2)
    model = underhood.load_model("shapes")
    train, test = underhood.datasets.shapes(2000, seed=1), splits.test_set("shapes", 1000)
    wall, cpu, result = _timed(lambda: probe(model, train, test))
    b = result.info["batch_size"]
    images = torch.cat([train.images, test.images])

    def raw() -> None:
        with torch.no_grad():
            for i in range(0, len(images), b):
                model(images[i:i + b])

    ref, ref_cpu, _ = _timed(raw)
    print(f"raw forward, 3000 images at batch {b}: {ref:6.2f} s wall, {ref_cpu:6.2f} s cpu (the reference)")
    print(f"probe, 2000 + 1000 images:          {wall:6.2f} s wall, {cpu:6.2f} s cpu, {wall / ref:4.1f}x raw, "
          f"cpu/wall {cpu / wall:4.2f}; target <= {TARGET:g} s: {'met' if wall <= TARGET else 'MISSED'}")
    print(result.summary())
    if len(sys.argv) > 1:
        from underhood.viz.render import save_figure

        print("figure:", save_figure(result.figure(), Path(sys.argv[1])))


if __name__ == "__main__":
    main()

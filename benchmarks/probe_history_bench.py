"""What probing over training costs: ``train`` with and without probes at every epoch's snapshot.

A short but realistic run (shapes, 3 epochs of 4,000 fresh images) twice with the same seed: plain, then
with ``checkpoint_every=1`` and :func:`underhood.transfer.probe_callback` on the default probe sets
(:func:`underhood.transfer.probe_sets`: 1,000 + 500 images), i.e. 4 snapshots (epochs 0-3) and 4 probe curves.
Target: probing adds <= 15% to the training time. Printed: wall and CPU seconds of both runs, their ratio,
and the time spent inside the probes and in the snapshots (measured directly, so less exposed to other
load on the machine than the difference of two runs). The final weights must be identical.

    python benchmarks/probe_history_bench.py [EPOCHS N_TRAIN] [figure.png]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from underhood.models.training import train
from underhood.transfer import probe_callback, probe_sets

TARGET = 0.15


def _timed(fn) -> tuple[float, float, object]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    torch.set_num_threads(2)
    numbers = [int(a) for a in sys.argv[1:] if a.isdigit()]
    epochs, n_train = (numbers + [3, 4000][len(numbers):])[:2]
    figure = next((a for a in sys.argv[1:] if a.endswith(".png")), None)
    probe_train, probe_test = probe_sets("shapes")
    inside = {"wall": 0.0, "cpu": 0.0, "n": 0}
    callback = probe_callback(probe_train, probe_test)

    def timed_callback(model, checkpoint):
        wall, cpu, out = _timed(lambda: callback(model, checkpoint))
        inside["wall"] += wall
        inside["cpu"] += cpu
        inside["n"] += 1
        return out

    train("shapes", epochs=1, n_train=256, progress=False)  # warm-up: imports, first kernels
    base_wall, base_cpu, base = _timed(lambda: train("shapes", epochs=epochs, n_train=n_train, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu, probed = _timed(lambda: train("shapes", epochs=epochs, n_train=n_train, progress=False,
                                                 checkpoint_every=1, checkpoints=Path(tmp) / "ckpt",
                                                 on_checkpoint=timed_callback))
    same = all(torch.equal(a, b) for a, b in zip(base.model.state_dict().values(), probed.model.state_dict().values()))
    print(f"shapes, {epochs} epochs x {n_train} images; probes on {len(probe_train)} + {len(probe_test)} images "
          f"at {inside['n']} snapshots")
    print(f"plain training:           {base_wall:7.1f} s wall, {base_cpu:7.1f} s cpu")
    print(f"with --probe-every 1:     {wall:7.1f} s wall, {cpu:7.1f} s cpu")
    print(f"overhead (whole runs):    {wall / base_wall - 1:+7.1%} wall, {cpu / base_cpu - 1:+7.1%} cpu")
    print(f"inside the probes:        {inside['wall']:7.1f} s wall, {inside['cpu']:7.1f} s cpu = "
          f"{inside['wall'] / base_wall:5.1%} wall, {inside['cpu'] / base_cpu:5.1%} cpu of plain training; "
          f"target <= {TARGET:.0%}: {'met' if inside['cpu'] / base_cpu <= TARGET else 'MISSED'} (cpu)")
    print(f"same final weights: {same}")
    print(callback.history.summary())
    if figure:
        from underhood.viz.render import save_figure

        print("figure:", save_figure(callback.history.figure(), Path(figure)))


if __name__ == "__main__":
    main()

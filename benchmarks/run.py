"""underhood benchmarks: every figure as a ratio against the model's raw throughput in the same run.

Each line shows the measured figure, its ratio to the reference, and the process's CPU time
over wall time (on a 2-core machine, cpu/wall well below 2 means the run was contended and
the figure is pessimistic).

    python benchmarks/run.py            # all
    python benchmarks/run.py data imports
    python benchmarks/run.py demo          # underhood demo --timings: seconds per section (benchmarks/demo.py)
    python benchmarks/run.py attribution   # methods vs raw passes (benchmarks/attribution.py; minutes)
    python benchmarks/run.py activations   # dataset scans vs raw forward (benchmarks/activations.py)
    python benchmarks/run.py embed         # t-SNE vs scikit-learn at 5,000 and 20,000 points
    python benchmarks/run.py synthesis     # render steps vs raw forward+backward; inversion quality
    python benchmarks/run.py adversarial   # pgd vs raw forward+backward; accuracy targets (standard, robust)
    python benchmarks/run.py --device cuda attribution   # every section that makes a model: on that device
    python benchmarks/captum_compare.py --device cuda    # side by side with Captum (its own script)

``--device cpu|cuda|auto`` (default cpu) puts the models and inputs of the model, attribution,
activations, synthesis and adversarial sections on that device; timings synchronise it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import underhood
from underhood.core import batching

RESULTS: list[tuple[str, str]] = []
DEVICE = torch.device("cpu")  # set by --device before any section is imported


def sync() -> None:
    """Wait for the device's queued work, so a timing covers it (nothing on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """Best wall seconds over ``repeat`` runs, and cpu/wall of that run."""
    best, ratio = float("inf"), 0.0
    for _ in range(repeat):
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, ratio = wall, cpu / wall
    return best, ratio


def report(name: str, text: str, cpu_wall: float) -> None:
    line = f"{name:38s} {text:58s} cpu/wall {cpu_wall:4.2f}"
    RESULTS.append((name, line))
    print(line, flush=True)


def raw_throughput(model: torch.nn.Module, shape: tuple[int, ...], n: int = 512) -> tuple[float, int, float]:
    """Images/s of plain batched forward passes at the best batch size (measured)."""
    b = batching.auto_batch_size(model, shape)
    x = torch.rand(n, *shape, device=DEVICE)

    def run() -> None:
        with torch.no_grad():
            for i in range(0, n, b):
                model(x[i:i + b])

    seconds, cw = timed(run)
    return n / seconds, b, cw


def bench_model() -> float:
    model = underhood.load_model("shapes", device=DEVICE)
    rate, b, cw = raw_throughput(model, (3, 64, 64))
    report("raw forward, shapes model", f"{rate:8.0f} img/s at batch {b} (the reference)", cw)
    for size in batching.CANDIDATES:
        x = torch.rand(size, 3, 64, 64, device=DEVICE)
        reps = max(1, 256 // size)

        def run(x=x, reps=reps) -> None:
            with torch.no_grad():
                for _ in range(reps):
                    model(x)

        seconds, cw = timed(run, 2)
        r = size * reps / seconds
        report(f"  forward at batch {size}", f"{r:8.0f} img/s = {r / rate:4.2f}x the chosen batch", cw)
    return rate


def bench_data(reference: float | None) -> None:
    underhood.datasets.shapes(256, seed=1)  # warm-up
    n = 4096
    seconds, cw = timed(lambda: underhood.datasets.shapes(n, seed=2))
    rate = n / seconds
    extra = f" = {rate / reference:4.2f}x raw forward" if reference else ""
    report("shapes generation 64x64", f"{rate:8.0f} img/s (target >= 2000){extra}", cw)


def bench_imports() -> None:
    def cold(stmt: str) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], check=True)
            best = min(best, time.perf_counter() - t0)
        return best

    base = cold("pass")
    t_torch = cold("import torch") - base
    t_uh = cold("import underhood") - base
    t_use = cold("import underhood; underhood.load_model; underhood.layers; underhood.datasets") - base
    report("import underhood (alone)", f"{t_uh:6.2f} s; import torch {t_torch:5.2f} s", 1.0)
    report("import underhood + its core and models", f"{t_use:6.2f} s = {t_use / t_torch:4.2f}x import torch "
           "(torch is most of it)", 1.0)


def bench_demo() -> None:
    from demo import bench_demo as run

    run(report)  # the per-section table too, kept in benchmarks/demo-timings.json


def parse_device(argv: list[str]) -> tuple[torch.device, list[str]]:
    """``--device cpu|cuda|auto`` (or ``--device=...``) taken out of ``argv``; CUDA asked for and absent
    exits with one line."""
    rest, value, it = [], "cpu", iter(argv)
    for arg in it:
        if arg == "--device":
            value = next(it, "")
        elif arg.startswith("--device="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if value not in ("cpu", "cuda", "auto") and not value.startswith("cuda:"):
        raise SystemExit(f"--device: expected cpu, cuda or auto, got {value!r}")
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {value}: CUDA is not available on this machine; use --device cpu")
    from underhood.core.device import resolve_device

    return resolve_device(value), rest


def main(argv: list[str]) -> None:
    global DEVICE
    torch.set_num_threads(int(os.environ.get("UNDERHOOD_THREADS", "2")))
    DEVICE, argv = parse_device(argv)
    wanted = set(argv) or {"model", "data", "imports", "demo", "attribution", "activations", "embed", "synthesis",
                            "adversarial"}
    print(f"underhood {underhood.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, device {DEVICE}"
          f"{f' ({torch.cuda.get_device_name(DEVICE)})' if DEVICE.type == 'cuda' else ''}")
    reference = bench_model() if "model" in wanted else None
    if "data" in wanted:
        bench_data(reference)
    if "imports" in wanted:
        bench_imports()
    if "demo" in wanted:
        bench_demo()
    if "attribution" in wanted:
        from attribution import bench_attribution

        bench_attribution()
    if "activations" in wanted:
        from activations import bench_activations

        bench_activations()
    if "embed" in wanted or "embedding" in wanted:
        from embedding import bench_embed

        bench_embed(report, timed)
    if "synthesis" in wanted:
        from synthesis import bench_synthesis

        bench_synthesis()
    if "adversarial" in wanted:
        from adversarial import bench_adversarial

        bench_adversarial()


if __name__ == "__main__":
    sys.modules.setdefault("run", sys.modules[__name__])  # `from run import report` in sections: this module
    main(sys.argv[1:])

"""``bench``: how fast is this model on this machine (the MAP583 CPU vs GPU table, measured)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..core.checks import positive_int
from ..core.device import resolve_device
from ..core.errors import InputError
from .environment import environment
from .measure import (
    AGREEMENT_BATCH,
    DEVICE_VARIANTS,
    VARIANTS,
    Job,
    Runner,
    Timer,
    agreement,
    compiled,
    flop_count,
    layer_times,
    peak_tflops,
    settings,
    sweep,
    time_jobs,
    timer,
)
from .result import BenchResult, findings


def devices_from(devices: str | Sequence[str] = "auto") -> list[torch.device]:
    """``"auto"`` (the CPU, and CUDA when present), a device, or a list of them (``"cpu,cuda"``), each checked."""
    names = devices.split(",") if isinstance(devices, str) else list(devices)
    out: list[torch.device] = []
    for name in (n.strip() for n in names if str(n).strip()):
        found = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []) \
            if name == "auto" else [resolve_device(name)]
        out += [d for d in found if d not in out]
    if not out:
        raise InputError("devices: name at least one device, e.g. devices='cpu,cuda'")
    return out


def _shape(model: nn.Module, size: int | Sequence[int] | None) -> tuple[int, ...]:
    known = getattr(model, "input_size", None)
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        for v in hw:
            positive_int("size", v)
        return ((known[0] if known else 3), *hw)
    if known:
        return tuple(known)
    raise InputError("size: the model has no input size; give size=224 (or --size 224) for the images to time")


def bench(model: nn.Module, *, devices: str | Sequence[str] = "auto", quick: bool = False, spec: str | None = None,
          size: int | Sequence[int] | None = None, max_batch: int | None = None, rounds: int | None = None,
          compile: bool | None = None, variants: Sequence[str] | None = None, jobs: Mapping[str, Job] | None = None,
          layers: bool = True, clock: Callable[[torch.device], Timer] = timer, seed: int = 0,
          log: Callable[[str], None] | None = None) -> BenchResult:
    """Measure how fast ``model`` runs here: the environment first, then per device forward and forward+backward
    throughput against batch size for each variant, agreement with fp32, FLOP/s, slowest layers, and the cost of
    ``jobs`` (underhood's heavy jobs; see :func:`underhood.report.sections.hardware.heavy_jobs`).

    Args:
        devices: ``"auto"`` (CPU, and CUDA when present), ``"cpu"``, ``"cuda"``, ``"cpu,cuda"`` or a list.
        quick: batches 1, 4, 16, 3 rounds, no torch.compile unless ``compile=True``, one image per job.
        size: image side (or ``(H, W)``) for a model without ``input_size``.
        max_batch, rounds, compile: override the settings (:func:`underhood.hardware.measure.settings`).
        variants: a subset of fp32, tf32, bf16, fp16, channels_last, compile (default: all the device has).
        layers: time the slowest layers (forward hooks).
        clock: ``device -> timer`` (tests give a fake one).

    Returns:
        a :class:`BenchResult` (``summary()``, ``save(dir)`` with ``bench.json``, ``figure()``).

    Example:
        >>> result = bench(load_model("shapes"), devices="cpu", quick=True)   # doctest: +SKIP
        >>> print(result.table())                                              # doctest: +SKIP
    """
    start, cpu = time.perf_counter(), time.process_time()
    say = log or (lambda _: None)
    env = environment()
    for w in env["warnings"]:
        say(f"warning: {w}")
    shape = _shape(model, size)
    if variants is not None:
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise InputError(f"variants: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(VARIANTS)}")
    out = {}
    for dev in devices_from(devices):
        s = settings(dev, quick=quick, max_batch=max_batch, rounds=rounds, compile=compile)
        names = [v for v in DEVICE_VARIANTS.get(dev.type, ("fp32",)) if (variants is None or v in variants)
                 and not (v == "1-thread" and torch.get_num_threads() == 1)]
        say(f"{dev}: batches {', '.join(map(str, s.batches))}, {s.rounds} interleaved rounds of "
            f"{', '.join(n for n in names if n != 'compile')}")
        out[str(dev)] = _device(model, dev, shape, s, names, jobs or {}, layers, clock(dev), seed, say)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    result = BenchResult(spec or type(model).__name__, list(shape), quick, env, out, [], 0.0, 0.0)
    result.warnings = env["warnings"] + findings(out, env)
    result.wall_s, result.cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return result


def _device(model: nn.Module, dev: torch.device, shape: tuple[int, ...], s, names: list[str],
            jobs: Mapping[str, Job], layers: bool, clock: Timer, seed: int, say: Callable[[str], None]) -> dict:
    runner = Runner(model, dev, shape, seed)
    eager = [n for n in names if n != "compile"]
    variants: dict[str, dict] = {n: {} for n in eager}
    for mode in ("forward", "backward"):
        say(f"{dev}: {'forward' if mode == 'forward' else 'forward+backward'}")
        curves = sweep(lambda name, b, mode=mode: runner.step(name, mode, b), eager, s.batches, rounds=s.rounds,
                       block_s=s.block_s, cap_s=s.cap_s, timer=clock, device=dev, log=say)
        for n in eager:
            variants[n][mode] = curves[n]
            variants[n]["skipped"] = variants[n].get("skipped") or curves[n]["skipped"]
    x = runner.inputs(AGREEMENT_BATCH)
    reference = runner.logits("fp32", x)
    for n in eager:
        try:
            variants[n]["agreement"] = agreement(reference, runner.logits(n, x))
        except Exception:  # the variant could not run (recorded as skipped by the sweep)
            variants[n]["agreement"] = None
    fp32 = variants.get("fp32", {}).get("forward", {})
    if "compile" in names:
        if s.compile:
            variants["compile"] = compiled(runner, fp32.get("batch_90") or 1, s, clock, say)
        else:
            variants["compile"] = {"skipped": "skipped by --quick (ask with --compile)"}
    flops = {"forward": flop_count(runner.base, runner.inputs(1)),
             "backward": flop_count(runner.base, runner.inputs(1), backward=True)}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ""
    peaks = {n: peak_tflops(name, VARIANTS[n].precision) for n in names} if name else {}
    slowest = []
    if layers:
        slowest = layer_times(runner.base, runner.inputs(min(fp32.get("batch_90") or 1, 32)))
    say(f"{dev}: timing underhood's jobs" if jobs else f"{dev}: done")
    costs = time_jobs(runner.base, jobs, runner.inputs(s.job_images), say) if jobs else {}
    return {"name": name or "cpu", "settings": {"batches": list(s.batches), "rounds": s.rounds,
                                               "block_s": s.block_s, "cap_s": s.cap_s, "compile": s.compile},
            "variants": variants, "flops_per_image": flops, "peak_tflops": peaks, "layers": slowest, "jobs": costs}

"""Timing a model on a device: throughput against batch size per numeric variant, in interleaved rounds.

The measurement, bottom up:

- a *timer* runs a step ``reps`` times and gives each call's seconds (``perf_counter`` on a CPU;
  CUDA events on a GPU, with one synchronisation per block, none inside it);
- :func:`sweep` runs every variant at each batch size (powers of two up to a cap): a warm-up
  call, a calibration call that sizes the block to ``block_s`` seconds, then ``rounds`` rounds
  interleaved over the variants (A, B, C, A, B, C, ...) so that a change of load hits them all
  alike. A batch that runs out of memory is retried once half-way between the last batch that
  fitted and it, then the variant stops; one call slower than ``cap_s`` stops it too;
- :func:`point` turns the rounds into a median throughput, its spread ``(p90 - p10) / median``
  over rounds, and p50/p90 latencies; :func:`summarise` finds the peak and the smallest batch
  that reaches 90% of it; a spread above :data:`SPREAD_FLAG` at the peak flags the variant.

Variants: ``fp32`` (TF32 off on a GPU, so it is true fp32), ``tf32`` and ``fp16`` (GPU only),
``bf16`` autocast, ``channels_last`` memory format, ``1-thread`` (CPU: one intra-op thread instead of
torch's default; on a busy machine threads that wait for each other can make it many times faster),
``torch.compile`` (forward, at one batch, with its compile time and break-even measured). The user's
model is never touched: every variant runs on a copy. Forward+backward is a training step's passes
(gradients of every weight, eval mode, no optimiser).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..core.device import threads
from ..core.errors import InputError
from ..core.hooks import hooked
from ..core.names import named_layers
from ..core.outputs import logits_of

SPREAD_FLAG = 0.15
"""A variant whose throughput spread over rounds, ``(p90 - p10) / median``, is above this is flagged."""

MAX_REPS = 1000
"""The most calls in one timed block (tiny models on a GPU)."""

AGREEMENT_BATCH = 32
"""Images of the fixed random batch on which each variant's top-1 is compared with fp32's."""

Step = Callable[[], object]
Timer = Callable[[Step, int, Any], list]


@dataclass(frozen=True)
class Variant:
    """A numeric variant of the forward: autocast dtype, memory format, TF32, compilation; and the peak it uses."""

    name: str
    autocast: torch.dtype | None = None
    channels_last: bool = False
    tf32: bool = False
    compile: bool = False
    precision: str = "fp32"
    threads: int | None = None


VARIANTS = {v.name: v for v in (
    Variant("fp32"), Variant("tf32", tf32=True, precision="tf32"),
    Variant("bf16", autocast=torch.bfloat16, precision="bf16"),
    Variant("fp16", autocast=torch.float16, precision="fp16"),
    Variant("channels_last", channels_last=True), Variant("compile", compile=True), Variant("1-thread", threads=1))}

DEVICE_VARIANTS = {"cpu": ("fp32", "bf16", "channels_last", "1-thread", "compile"),
                   "cuda": ("fp32", "tf32", "bf16", "fp16", "channels_last", "compile")}
"""The variants measured per device type (fp16 and TF32 are GPU features)."""

PEAK_TFLOPS = (  # dense peaks (no sparsity) of NVIDIA's data sheets: fp32, tf32, bf16, fp16 tensor-core TFLOP/s
    (r"H100.*PCIe", 51.0, 378.0, 756.0, 756.0), (r"\bH200\b", 67.0, 495.0, 989.0, 989.0),
    (r"\bH100\b", 67.0, 495.0, 989.0, 989.0), (r"\bA100\b", 19.5, 156.0, 312.0, 312.0),
    (r"\bA10\b", 31.2, 62.5, 125.0, 125.0), (r"\bL40S\b", 91.6, 183.0, 362.0, 362.0),
    (r"\bL40\b", 90.5, 90.5, 181.0, 181.0), (r"\bL4\b", 30.3, 60.0, 121.0, 121.0),
    (r"\bV100\b", 15.7, None, None, 125.0), (r"\bT4\b", 8.1, None, None, 65.0))
"""Known GPU peaks by name; a CPU's peak is not known (its achieved FLOP/s is still given)."""


def peak_tflops(name: str, precision: str) -> float | None:
    """The device's peak TFLOP/s at ``precision`` (fp32, tf32, bf16, fp16) when its name is known, else None."""
    column = {"fp32": 1, "tf32": 2, "bf16": 3, "fp16": 4}[precision]
    for row in PEAK_TFLOPS:
        if re.search(row[0], name):
            return row[column]
    return None


@dataclass(frozen=True)
class Settings:
    """How much to measure: batch sizes, rounds, block and cap seconds, compilation, job sizes."""

    batches: tuple[int, ...]
    rounds: int
    block_s: float
    cap_s: float
    compile: bool
    job_images: int
    quick: bool


def settings(device: torch.device, *, quick: bool = False, max_batch: int | None = None,
             rounds: int | None = None, compile: bool | None = None) -> Settings:
    """The default settings: ``quick`` (batches 1, 4, 16; 3 rounds; no compile) or full (powers of two up to
    256 on a CPU, 4096 on a GPU or out of memory; 5 rounds; compile)."""
    top = max_batch or (16 if quick else (256 if device.type == "cpu" else 4096))
    step = 4 if quick else 2
    batches = [1]
    while batches[-1] * step <= top:
        batches.append(batches[-1] * step)
    if batches[-1] < top and not quick:
        batches.append(top)
    return Settings(tuple(batches), rounds or (3 if quick else 5), 0.02 if quick else 0.1, 0.3 if quick else 2.0,
                    (not quick) if compile is None else compile, 1 if quick else 4, quick)


# ----------------------------------------------------------------------------- timing and statistics


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device: torch.device) -> Timer:
    """The default timer: each call's seconds, by ``perf_counter`` on a CPU and CUDA events on a GPU."""
    def cpu(fn: Step, reps: int, key: Any = None) -> list[float]:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times

    def cuda(fn: Step, reps: int, key: Any = None) -> list[float]:
        marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in marks:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)  # once per block
        return [start.elapsed_time(end) / 1e3 for start, end in marks]
    return cuda if device.type == "cuda" else cpu


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` with linear interpolation (as ``numpy.quantile``)."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def point(batch: int, rounds: Sequence[Sequence[float]], memory_mib: float | None = None) -> dict[str, Any]:
    """One batch size's figures from the per-call seconds of each round: median images/s over rounds, its
    spread ``(p90 - p10) / median``, p50/p90 latency (ms per call, every call of every round)."""
    throughputs = [batch * len(times) / sum(times) for times in rounds]
    median = quantile(throughputs, 0.5)
    calls = [t for times in rounds for t in times]
    return {"batch": batch, "throughput": median,
            "spread": (quantile(throughputs, 0.9) - quantile(throughputs, 0.1)) / median,
            "p50_ms": 1e3 * quantile(calls, 0.5), "p90_ms": 1e3 * quantile(calls, 0.9),
            "rounds": throughputs, "memory_mib": memory_mib}


def summarise(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Peak throughput, its batch, the smallest batch reaching 90% of it, the spread there and the flag."""
    if not points:
        return {"peak": None, "peak_batch": None, "batch_90": None, "spread": None, "flagged": False}
    best = max(points, key=lambda p: p["throughput"])
    b90 = min(p["batch"] for p in points if p["throughput"] >= 0.9 * best["throughput"])
    return {"peak": best["throughput"], "peak_batch": best["batch"], "batch_90": b90, "spread": best["spread"],
            "flagged": best["spread"] > SPREAD_FLAG}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def sweep(step: Callable[[str, int], Step], names: Sequence[str], batches: Sequence[int], *, rounds: int,
          block_s: float, cap_s: float, timer: Timer, device: torch.device | str = "cpu",
          log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Throughput against batch size of each variant in ``names``; ``step(name, batch)`` builds one call.

    Returns ``name -> {"points": [...], "stop": why the sweep ended, "oom_at": batch or None,
    "skipped": reason or None, **summarise(points)}``; points in increasing batch order.
    """
    device = torch.device(device)
    curves: dict[str, dict[str, Any]] = {n: {"points": [], "stop": "largest batch asked", "oom_at": None,
                                             "skipped": None} for n in names}
    stopped: set[str] = set()
    last_ok = dict.fromkeys(names, 0)
    tried: dict[str, set[int]] = {n: set() for n in names}
    queue: list[tuple[int, set[str] | None]] = [(b, None) for b in sorted(set(batches))]
    while queue:
        batch, only = queue.pop(0)
        ready: dict[str, tuple[Step, int, float | None]] = {}
        for name in names:
            if (name not in only) if only is not None else (name in stopped):
                continue
            if batch in tried[name]:
                continue
            tried[name].add(batch)
            try:
                fn = step(name, batch)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                fn()  # warm-up: allocations, kernel choice, autotuning
                sync(device)
                one = timer(fn, 1, (name, batch))[0]  # calibration: one call's seconds
                memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            except torch.OutOfMemoryError:
                fn = None
                _release(device)
                stopped.add(name)
                curves[name].update(stop="out of memory", oom_at=batch)
                half = (last_ok[name] + batch) // 2
                if only is None and half > last_ok[name] and half not in tried[name]:  # one retry, half-way
                    queue.append((half, {name}))
                    queue.sort(key=lambda e: e[0])
                continue
            except Exception as exc:  # a variant the device or the model cannot run: recorded, not fatal
                stopped.add(name)
                curves[name].update(stop="failed", skipped=_one_line(exc))
                continue
            ready[name] = (fn, max(1, min(MAX_REPS, round(block_s / max(one, 1e-9)))), memory)
            if one > cap_s:
                stopped.add(name)
                curves[name]["stop"] = f"one call took {one:.2g} s (time cap {cap_s:g} s)"
        times: dict[str, list[list[float]]] = {n: [] for n in ready}
        for _ in range(rounds):  # interleaved rounds: A, B, C, A, B, C, ...
            for name, (fn, reps, _) in ready.items():
                times[name].append(timer(fn, reps, (name, batch)))
        for name, (_, _, memory) in ready.items():
            curves[name]["points"].append(point(batch, times[name], memory))
            last_ok[name] = max(last_ok[name], batch)
        if log and ready:
            log(f"  batch {batch}: " + ", ".join(f"{n} {curves[n]['points'][-1]['throughput']:.4g}/s" for n in ready))
        ready.clear()
        if device.type == "cuda":
            _release(device)
    for curve in curves.values():
        curve["points"].sort(key=lambda p: p["batch"])
        curve.update(summarise(curve["points"]))
    return curves


# ----------------------------------------------------------------------------- the model's variants


@contextlib.contextmanager
def precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """On a GPU, TF32 on or off for matmuls and convolutions for the block (restored after); a no-op on a CPU."""
    if device.type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = conv.fp32_precision = "tf32" if tf32 else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


class Runner:
    """Copies of a model on one device, one per variant, and the steps that time them.

    The user's model is copied (and left as it was found): eval mode, every parameter requiring a
    gradient (for the forward+backward step); ``channels_last`` and ``compile`` get copies of their own.
    """

    def __init__(self, model: nn.Module, device: torch.device, shape: Sequence[int], seed: int = 0) -> None:
        try:
            base = copy.deepcopy(model)
        except Exception as exc:
            raise InputError(f"model: cannot be copied for the benchmark ({_one_line(exc)}); give a model that "
                             "copy.deepcopy accepts") from None
        self.device, self.shape, self.seed = device, tuple(shape), seed
        self.base = base.to(device).eval().requires_grad_(True)
        self.models: dict[str, nn.Module] = {"fp32": self.base}
        self.compile_error: str | None = None

    def model(self, name: str) -> nn.Module:
        v = VARIANTS[name]
        key = "channels_last" if v.channels_last else "compile" if v.compile else "fp32"
        if key not in self.models:
            m = copy.deepcopy(self.base)
            if v.channels_last:
                m = m.to(memory_format=torch.channels_last)
            self.models[key] = torch.compile(m, dynamic=False) if v.compile else m
        return self.models[key]

    def inputs(self, batch: int, name: str = "fp32") -> torch.Tensor:
        """A fixed random batch (seeded, the same for every variant) in [0, 1] on the device."""
        g = torch.Generator().manual_seed(self.seed)
        x = torch.rand(batch, *self.shape, generator=g).to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if VARIANTS[name].channels_last and x.ndim == 4 else x

    @contextlib.contextmanager
    def context(self, name: str) -> Iterator[None]:
        v = VARIANTS[name]
        with contextlib.ExitStack() as stack:
            if v.threads and self.device.type == "cpu":
                stack.enter_context(threads(v.threads))
            stack.enter_context(precision(self.device, v.tf32))
            stack.enter_context(torch.autocast(self.device.type, dtype=v.autocast or torch.float32,
                                               enabled=v.autocast is not None))
            yield

    def step(self, name: str, mode: str, batch: int) -> Step:
        """One call: ``mode`` "forward" (no autograd) or "backward" (forward, then backward to every weight)."""
        m, x = self.model(name), self.inputs(batch, name)
        if mode == "forward":
            def forward() -> object:
                with self.context(name), torch.no_grad():
                    return m(x)
            return forward

        def backward() -> object:
            with self.context(name):
                out = logits_of(m(x))
            out.float().sum().backward()
            m.zero_grad(set_to_none=True)
            return None
        return backward

    def logits(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if VARIANTS[name].channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.context(name), torch.no_grad():
            return logits_of(self.model(name)(x)).float()


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """The fraction of samples whose top-1 class in ``logits`` equals the one in ``reference`` (``[N, classes]``)."""
    return float((reference.argmax(1) == logits.argmax(1)).float().mean())


def flop_count(model: nn.Module, x: torch.Tensor, *, backward: bool = False) -> int | None:
    """FLOPs of one forward (and backward to the weights) on ``x``, by ``torch.utils.flop_counter``; None if
    it cannot count this model."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            if backward:
                logits_of(model(x)).float().sum().backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(x)
        return int(counter.get_total_flops())
    except Exception:
        return None


def layer_times(model: nn.Module, x: torch.Tensor, *, runs: int = 3, top: int = 8) -> list[dict[str, Any]]:
    """The ``top`` slowest leaf layers of one forward on ``x``: name, type, median ms over ``runs``, share of the
    forward's time. Timed by forward pre-hooks and hooks (CUDA events on a GPU); the hooks add a little to each."""
    device = x.device
    leaves = {n: m for n, m in named_layers(model).items() if next(m.children(), None) is None}
    cuda = device.type == "cuda"
    open_: dict[str, list] = {n: [] for n in leaves}
    spans: dict[str, list] = {n: [] for n in leaves}

    def mark() -> object:
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def pre(name: str):
        return lambda module, args: open_[name].append(mark())

    def post(name: str):
        return lambda module, args, output: spans[name].append((open_[name].pop(), mark()))

    totals, per_run = [], []
    with hooked(model, {m: post(n) for n, m in leaves.items()}, pre={m: pre(n) for n, m in leaves.items()}):
        for _ in range(runs):
            for s in spans.values():
                s.clear()
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            sync(device)
            totals.append(time.perf_counter() - start)
            per_run.append({n: sum(a.elapsed_time(b) / 1e3 if cuda else b - a for a, b in s)
                            for n, s in spans.items() if s})
    total = quantile(totals, 0.5)
    rows = []
    for name in per_run[0]:
        seconds = quantile([r.get(name, 0.0) for r in per_run], 0.5)
        rows.append({"name": name, "type": type(leaves[name]).__name__, "ms": 1e3 * seconds,
                     "share": seconds / total if total > 0 else None})
    return sorted(rows, key=lambda r: -r["ms"])[:top]


class Job(NamedTuple):
    """One of underhood's heavy jobs to time: its settings in words and ``fn(model, inputs)``."""

    settings: str
    fn: Callable[[nn.Module, torch.Tensor], object]


def time_jobs(model: nn.Module, jobs: Mapping[str, Job], x: torch.Tensor,
              log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Seconds per image (wall and CPU) of each job on the images ``x``; a job that fails is recorded as skipped."""
    out = {}
    for name, job in jobs.items():
        start, cpu = time.perf_counter(), time.process_time()
        try:
            job.fn(model, x)
            sync(x.device)
        except Exception as exc:
            out[name] = {"settings": job.settings, "skipped": _one_line(exc)}
            continue
        n = len(x)
        out[name] = {"settings": job.settings, "images": n, "s_per_image": (time.perf_counter() - start) / n,
                     "cpu_s_per_image": (time.process_time() - cpu) / n}
        if log:
            log(f"  {name} ({job.settings}): {out[name]['s_per_image']:.3g} s per image")
    return out


def compiled(runner: Runner, batch: int, s: Settings, clock: Timer, log: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """``torch.compile`` against eager fp32 at one batch (forward): compile seconds, both throughputs in
    interleaved rounds, the images after which compiling pays back, and top-1 agreement."""
    device = runner.device
    eager = runner.step("fp32", "forward", batch)
    try:
        eager()
        sync(device)
        eager_call = quantile(clock(eager, 3, ("fp32", batch)), 0.5)
        fn = runner.step("compile", "forward", batch)
        start = time.perf_counter()
        fn()  # compiles
        sync(device)
        first = time.perf_counter() - start
        agree = agreement(runner.logits("fp32", runner.inputs(batch)), runner.logits("compile", runner.inputs(batch)))
    except Exception as exc:  # no compiler, an unsupported model, a missing backend: skipped with the reason
        return {"skipped": f"torch.compile failed: {_one_line(exc)}", "batch": batch}
    steps = {"fp32": eager, "compile": fn}
    curves = sweep(lambda name, b: steps[name], ["fp32", "compile"], [batch], rounds=s.rounds, block_s=s.block_s,
                   cap_s=float("inf"), timer=clock, device=device)
    t_eager = batch / curves["fp32"]["peak"]
    t_compiled = batch / curves["compile"]["peak"]
    compile_s = max(0.0, first - eager_call)
    gain = t_eager - t_compiled
    result = {"batch": batch, "compile_s": compile_s, "forward": curves["compile"], "eager": curves["fp32"],
              "speedup": t_eager / t_compiled, "agreement": agree,
              "break_even_images": compile_s / gain if gain > 0 else float("inf"), "skipped": None}
    if log:
        log(f"  compile: {compile_s:.1f} s to compile, {result['speedup']:.2f}x eager at batch {batch}")
    return result

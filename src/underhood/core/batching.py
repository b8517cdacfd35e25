"""The shared batching helper: measured automatic batch sizes within a memory bound.

On CPUs bigger batches are not always faster, so the automatic batch size is *measured*:
a few sizes are timed once per (model, input shape, device, grad) and the fastest is
cached. On a GPU a bigger batch is never slower per image, so the largest candidate within
the memory bound is taken without timing. An explicit ``batch_size`` always wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from .device import model_device
from .errors import InputError
from .hooks import StopForward, capture, hooked
from .names import inner, resolve
from .outputs import logits_of
from .state import evaluating, preserved

CANDIDATES = (1, 4, 16, 64, 256)
GPU_CANDIDATES = (*CANDIDATES, 1024)  # on a GPU: the largest that fits the memory bound, untimed
SATURATED = 0.25  # seconds per call beyond which bigger batches are not tried
_CACHE: dict[tuple, int] = {}


def memory_bound(device: torch.device) -> int:
    """Bytes a batch's activations may take: a quarter of free GPU memory, or 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return 1 << 30


def _model_key(model: nn.Module) -> tuple:
    """What the speed depends on: the architecture (class, inner class, every parameter's shape),
    not the weights, so copies of a model (a re-initialised twin, a retrained one) share a measurement."""
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    return (type(model).__qualname__, type(inner(model)).__qualname__, hash(shapes))


def per_sample_bytes(model: nn.Module, shape: tuple[int, ...], device: torch.device, grad: bool,
                     dtype: torch.dtype = torch.float32) -> int:
    """Bytes of activations one sample of ``dtype`` produces (outputs of every leaf module), tripled with ``grad``."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    with hooked(model, dict.fromkeys(leaves, hook)), torch.no_grad():
        model(torch.zeros(1, *shape, device=device, dtype=dtype))
    x_bytes = int(torch.zeros(shape).numel()) * torch.empty((), dtype=dtype).element_size()
    return (total + x_bytes) * (3 if grad else 1)


def _time(fn: Callable[[torch.Tensor], object], x: torch.Tensor, device: torch.device,
          min_seconds: float = 0.1) -> float:
    """Seconds per call: after a warm-up, the best of two rounds, each repeated for ``min_seconds``.

    A call slower than ``4 * min_seconds`` is timed once more after the warm-up: per-call
    noise is small against it, and measuring must stay cheap next to the work it tunes.
    """
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def once() -> float:
        sync()
        start = time.perf_counter()
        fn(x)
        sync()
        return time.perf_counter() - start

    if once() > 4 * min_seconds:  # the warm-up doubles as a probe of the cost
        return once()
    best = float("inf")
    for _ in range(2):
        sync()
        start, calls = time.perf_counter(), 0
        while True:
            fn(x)
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return best


def auto_batch_size(model: nn.Module, shape: tuple[int, ...], *, device: torch.device | None = None,
                    grad: bool = False, candidates: tuple[int, ...] = CANDIDATES) -> int:
    """The fastest batch size among ``candidates`` for ``model`` on inputs of ``shape`` (C, H, W).

    Sizes whose activations exceed :func:`memory_bound` are skipped. On a GPU the largest
    remaining size is taken without timing (with the default candidates, up to 1024): a GPU fills
    up with work and waits on the host less per image as batches grow. Timing stops once a size
    is much slower (per image) than the best so far, or once one call takes more than
    :data:`SATURATED` seconds and the size gained less than 10% over the previous one. The choice is cached per model,
    shape, device and grad.
    """
    device = device or model_device(model)
    key = (_model_key(model), tuple(shape), str(device), grad)
    if key in _CACHE:
        return _CACHE[key]
    with preserved(model):
        model.eval()
        limit = max(1, memory_bound(device) // max(1, per_sample_bytes(model, shape, device, grad)))
        if device.type == "cuda" and candidates == CANDIDATES:
            candidates = GPU_CANDIDATES
        sizes = [b for b in candidates if b <= limit] or [1]
        if device.type == "cuda":
            _CACHE[key] = sizes[-1]
            return sizes[-1]

        def run(x: torch.Tensor) -> None:
            if grad:
                x = x.requires_grad_(True)
                model(x).sum().backward()
                return
            with torch.no_grad():
                model(x)

        best, best_rate, previous = sizes[0], 0.0, 0.0
        for b in sizes:
            seconds = _time(run, torch.rand(b, *shape, device=device), device)
            rate = b / max(seconds, 1e-9)
            if rate > best_rate:
                best, best_rate = b, rate
            elif rate < 0.6 * best_rate:
                break
            if seconds > SATURATED and rate < 1.1 * previous:  # long calls, and bigger stopped paying
                break
            previous = rate
        for p in model.parameters():
            p.grad = None
    _CACHE[key] = best
    return best


def resolve_batch_size(batch_size: int | str | None, model: nn.Module, shape: tuple[int, ...], *,
                       grad: bool = False) -> int:
    """An explicit positive int wins; ``None`` or ``"auto"`` measures (see :func:`auto_batch_size`)."""
    if batch_size is None or batch_size == "auto":
        return auto_batch_size(model, tuple(shape), grad=grad)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected a positive int or 'auto', got {batch_size!r}")
    return batch_size


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in chunks of ``batch_size``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def batched(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int, *,
            progress: bool = False, desc: str = "batches") -> torch.Tensor:
    """``fn`` applied to ``inputs`` in chunks, results concatenated along dim 0 (with a progress bar)."""
    from tqdm.auto import tqdm

    outs = [fn(inputs[s]) for s in tqdm(list(batches(len(inputs), batch_size)), desc=desc,
                                         disable=not progress, leave=False)]
    return torch.cat(outs) if outs else inputs.new_zeros((0,))


@torch.no_grad()
def logits(model: nn.Module, inputs: torch.Tensor, batch_size: int, *,
           transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``model(transform(inputs))`` in eval mode, ``batch_size`` inputs per forward pass, as float32 on the
    model's device: the one batched-logits helper (clean predictions of a dataset, scoring a population).

    Each batch moves to the model's device on its own, so ``inputs`` may stay on the CPU.
    """
    device = model_device(model)
    with evaluating(model):
        outs = [logits_of(model(x if transform is None else transform(x))).float()
                for x in (inputs[s].to(device) for s in batches(len(inputs), batch_size))]
    return torch.cat(outs) if outs else torch.empty(0, device=device)


def stream(model: nn.Module, layers: str | Sequence[str], images: torch.Tensor, batch_size: int, *,
           progress: bool = False, desc: str = "batches") -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """Run ``images`` through ``model`` in batches (eval mode, no gradients) and yield each batch's
    slice with the named layers' activations.

    The first batch runs the whole network and counts the calls of each layer; when every named
    layer runs exactly once, later batches stop the forward pass right after the last of them
    (nothing after it is computed), so a dataset scan at an early layer costs a fraction of a
    full forward pass. The model is left as it was found.
    """
    from tqdm.auto import tqdm

    names = [layers] if isinstance(layers, str) else list(layers)
    device = model_device(model)
    state = {"stop": False}
    seen: dict[str, int] = {}

    def counter(name: str):
        def hook(mod: nn.Module, inputs: object, output: object) -> None:
            seen[name] = seen.get(name, 0) + 1
            if state["stop"] and all(seen.get(n, 0) for n in names):
                raise StopForward
        return hook

    with capture(model, names, eval=True) as cap, hooked(model, {resolve(model, n): counter(n) for n in names}), \
            torch.no_grad():
        for i, part in enumerate(tqdm(list(batches(len(images), batch_size)), desc=desc,
                                      disable=not progress, leave=False)):
            cap.clear()
            seen.clear()
            try:
                model(images[part].to(device))
            except StopForward:
                pass
            missing = [n for n in names if n not in cap.activations]
            if missing:
                raise InputError(f"layer: {missing[0]!r} did not run in forward; pick a layer that does "
                                 "(see `underhood layers`)")
            if i == 0:
                state["stop"] = all(seen.get(n) == 1 for n in names)
            yield part, {n: cap.activations[n] for n in names}

"""Device selection: ``"auto"`` means CUDA when present, else CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import InputError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a device into a usable device."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device: cannot parse {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} asked for but CUDA is not available here; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None:
        count = torch.cuda.device_count()
        if dev.index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise InputError(f"device: {str(device)!r} asked for but this machine has {count} CUDA "
                             f"device{'s' if count != 1 else ''} ({have}); use 'cuda' or an index below {count}")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a stateless module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def home_device(model: torch.nn.Module, name: str = "model") -> torch.device:
    """The one device holding all of ``model``'s parameters and buffers, with one-line errors otherwise.

    Every method runs on its model's device; a model on the ``meta`` device (no weights) or split over
    several devices cannot be run here and is refused before any pass, not deep inside torch.
    """
    if isinstance(model, torch.jit.ScriptModule):
        devices = {t.device for t in (*model.parameters(), *model.buffers())}
    else:  # every call of every method comes here: one plain walk, without parameters()' generator machinery
        devices = {t.device for m in model.modules() for store in (m._parameters, m._buffers)
                   for t in store.values() if t is not None}
    if not devices:
        return torch.device("cpu")
    if any(d.type == "meta" for d in devices):
        raise InputError(f"{name}: its parameters are on meta (no weights); load real weights and move it to one "
                         "device with model.to(...)")
    if len(devices) > 1:
        found = ", ".join(sorted(str(d) for d in devices))
        raise InputError(f"{name}: its parameters are split over {found}; move it to one device with model.to(...)")
    return next(iter(devices))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads, restoring the count on exit.

    Tiny tensors (a 2-D toy network, one small image) gain nothing from threads and, on a busy
    machine, lose a lot waiting for them: one thread can be many times faster there.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

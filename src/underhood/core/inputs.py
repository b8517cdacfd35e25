"""The one input gate: every family's entry point checks its images here.

:func:`check_inputs` (a batch for one call) and :func:`dataset_images` (an ImageSet or a tensor
scanned in batches) refuse, with one-line :class:`InputError` messages that name the fix: a
non-tensor, a wrong shape or dtype, the wrong channel count, non-finite pixels or pixels
outside ``[0, 1]`` (:func:`underhood.core.checks.pixels`), and images smaller than the model's
:func:`minimum_size`.
"""

from __future__ import annotations

import weakref
from copy import deepcopy

import torch
from torch import nn

from .checks import pixels
from .device import home_device, model_device, threads
from .errors import InputError
from .hooks import evaluating
from .names import inner

PROBE_BELOW = 32  # sides below which a model without a declared input size is probed for its minimum
PROBE_UP_TO = 512  # largest side tried when the probe's first size does not run
_MINIMUM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> {channels: (H, W)}


def check_inputs(model: nn.Module, inputs: torch.Tensor, name: str = "inputs", *,
                 unbatched: bool = False) -> torch.Tensor:
    """``inputs`` as a float32 ``[N, C, H, W]`` tensor of ``[0, 1]`` pixels on the model's device, with clear errors.

    The channel count is checked against the model's first convolution (or its declared input
    size) so a grey image given to an RGB model fails here, not deep in ``forward``; pixels must
    be finite and in ``[0, 1]``; images must be at least :func:`minimum_size`. With ``unbatched``
    a ``[C, H, W]`` tensor is taken as one image.

    Devices: the model's device wins. Inputs elsewhere (CPU images, a CUDA model) are copied to it;
    the caller's tensor is never changed. A model on the ``meta`` device or split over several
    devices, and inputs on ``meta`` (no values), are one-line errors (:func:`home_device`).
    """
    if unbatched and isinstance(inputs, torch.Tensor) and inputs.ndim == 3:
        inputs = inputs[None]
    device = home_device(model)  # first: a meta or split model fails here, in one line, before any pass
    _check_batch(model, inputs, name)
    return pixels(inputs.detach().to(device, torch.float32), name)


def dataset_images(dataset: object, model: nn.Module | None = None, name: str = "dataset") -> torch.Tensor:
    """The ``[N, C, H, W]`` images of an ImageSet (its ``images``) or of a tensor, checked like
    :func:`check_inputs` (against ``model`` too when given) but left on their device: dataset jobs
    move one batch at a time."""
    images = getattr(dataset, "images", dataset)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise InputError(f"{name}: expected an ImageSet or a non-empty [N, C, H, W] tensor, got "
                         f"{getattr(images, 'shape', type(dataset).__name__)}")
    if model is not None:
        home_device(model)
    _check_batch(model, images, name)
    return pixels(images, name)


def _check_batch(model: nn.Module | None, inputs: object, name: str) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(inputs).__name__}; "
                         "load images with underhood.load_image")
    if inputs.ndim == 3:
        raise InputError(f"{name}: expected [N, C, H, W], got {tuple(inputs.shape)}; add a batch axis "
                         "with inputs[None]")
    if inputs.ndim != 4 or inputs.shape[0] == 0:
        raise InputError(f"{name}: expected a non-empty [N, C, H, W] tensor, got shape {tuple(inputs.shape)}")
    if inputs.device.type == "meta":
        raise InputError(f"{name}: the tensor is on the meta device (a shape without values); give real pixels, "
                         "e.g. load_image(path) or a tensor on the CPU or the model's device")
    if not inputs.is_floating_point():
        raise InputError(f"{name}: expected float pixels in [0, 1], got dtype {inputs.dtype}; "
                         "use inputs.float() / 255")
    if model is None:
        return
    expected = expected_channels(model)
    if expected is not None and inputs.shape[1] != expected:
        raise InputError(f"{name}: the model takes {expected}-channel images, got {inputs.shape[1]} channels; "
                         f"load them with load_image(path, channels={expected})")
    check_size(model, tuple(inputs.shape[-2:]), name, channels=inputs.shape[1])


def expected_channels(model: nn.Module) -> int | None:
    """Input channels the model expects: its declared input size, else its first Conv2d."""
    size = getattr(model, "input_size", None)
    if size:
        return int(size[0])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _declared(model: nn.Module) -> tuple[int, int] | None:
    size = getattr(model, "input_size", None)
    return (int(size[1]), int(size[2])) if size and len(size) == 3 else None


def check_size(model: nn.Module, size: tuple[int, int], name: str = "inputs", *, channels: int | None = None,
               hint: str | None = None) -> None:
    """Refuse images of ``size`` ``(H, W)`` smaller than :func:`minimum_size`, naming the minimum (and ``hint``,
    the fix; by default resizing with ``load_image``).

    Sizes at least the model's declared input size (or :data:`PROBE_BELOW` on each side) pass
    without a probe, so large inputs pay nothing.
    """
    h, w = int(size[0]), int(size[1])
    declared = _declared(model)
    limit = declared or (PROBE_BELOW, PROBE_BELOW)
    if h >= limit[0] and w >= limit[1]:
        return
    mh, mw = _minimum(model, channels)
    if h < mh or w < mw:
        side = declared[0] if declared and declared[0] == declared[1] else max(mh, mw, PROBE_BELOW)
        raise InputError(f"{name}: images of {h}x{w} are smaller than this model's minimum {mh}x{mw}; "
                         f"{hint or f'resize them (load_image(path, size={side}))'}")


def minimum_size(model: nn.Module) -> tuple[int, int]:
    """The smallest ``(H, W)`` for which a forward pass of ``model`` runs.

    Found once per network (cached) by no-grad, eval-mode forward passes of a one-sample zero tensor
    through a copy of the network that shares its weights (no hook of the caller runs, no attribute
    of the model changes): from the declared input size (else 32, doubled up to 512 until a pass
    runs), a bisection on the height at that width and on the width at that height. It assumes that a network that runs
    at a size runs at every larger one (true of convolution and pooling networks). A model that
    runs at no probed size gives ``(1, 1)``: nothing is refused then.

    Example:
        >>> minimum_size(underhood.load_model("shapes"))   # doctest: +SKIP
        (8, 8)
    """
    return _minimum(model, None)


def _minimum(model: nn.Module, channels: int | None) -> tuple[int, int]:
    net = inner(model)
    c = channels or expected_channels(model) or 3
    known = _MINIMUM.setdefault(net, {})
    if c not in known:
        known[c] = _probe(net, c, _declared(model))
    return known[c]


def _shadow(net: nn.Module) -> nn.Module:
    """A copy of ``net`` that shares its parameters and buffers (no memory) but not its hooks or other
    attributes, so probing runs none of the caller's hooks and changes nothing of the model (a call
    counter in ``forward`` included); the network itself where it cannot be copied (TorchScript)."""
    try:
        memo = {id(t): t for t in (*net.parameters(), *net.buffers())}
        copy = deepcopy(net, memo)
    except Exception:  # a module that does not deep-copy: probe the network itself
        return net
    for m in copy.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return copy


def _probe(net: nn.Module, c: int, declared: tuple[int, int] | None) -> tuple[int, int]:
    shadow, device = _shadow(net), model_device(net)

    def runs(h: int, w: int) -> bool:
        for _ in range(2):  # a size too small fails every time; a forward that failed once for another reason
            try:            # (a flaky model, a call counter) is given a second chance
                shadow(torch.zeros(1, c, h, w, device=device))
            except (RuntimeError, ValueError, IndexError):  # what torch raises for a map too small
                continue
            return True
        return False

    def smallest(ok, top: int) -> int:
        lo, hi = 0, top  # ok(hi) holds; ok(lo) is taken to fail
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    with evaluating(shadow), torch.no_grad(), threads(1):  # one small sample: threads only wait
        th, tw = declared or (PROBE_BELOW, PROBE_BELOW)
        while not runs(th, tw):
            if declared or th >= PROBE_UP_TO:
                return 1, 1
            th, tw = 2 * th, 2 * tw
        h = smallest(lambda s: runs(s, tw), th)
        w = smallest(lambda s: runs(th, s), tw)
    return h, w

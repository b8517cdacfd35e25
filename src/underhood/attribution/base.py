"""What every attribution method shares: eval mode for the call, input checks, fixed targets,
batched scoring of many perturbed copies of the inputs, and mixed precision (``amp``).

Mixed precision (``amp=True`` on the methods that take it):
    The forward (and backward) passes run under ``torch.autocast`` in float16, the precision
    whose maps agree with float32 (Spearman rank correlation >= 0.99 on the built-in model; bfloat16,
    with 8 bits of mantissa against float16's 11, measured 0.95-0.99 on saliency). Gradients
    flow back scaled by :data:`GRAD_SCALE` so that small ones do not underflow, and are unscaled,
    accumulated and returned in float32: maps are float32 either way. ``amp="bf16"`` asks for
    bfloat16 instead (no scaling; the fast choice on CPUs with AMX-BF16, less faithful).
    On a GPU this is the tensor-core path; on a CPU without native float16/bfloat16 arithmetic
    (AVX2 only) it is emulated and much slower than float32, so leave it off there. A map that
    overflows float16 (activations beyond 65504) is an error that says to use ``amp=False``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.device import model_device
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.outputs import logits_of
from ..core.targets import Target, fix, is_class_target, scores, select

AMP_DTYPES = {True: torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAD_SCALE = 1024.0  # float16 backward passes: the score is scaled up, the gradient down (in float32)


def deprecated(old: str, new: str, *, depth: int = 1) -> None:
    """Warn that the call form ``old`` is deprecated in favour of ``new``: a ``DeprecationWarning``
    pointing at the caller of the public function, ``depth`` frames above this call."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2 + depth)


def prepare(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Checked inputs on the model's device (see :func:`underhood.core.inputs.check_inputs`)."""
    return check_inputs(model, inputs)


def check_amp(amp: object) -> bool | str:
    """``amp`` if it is ``False``, ``True``, ``"fp16"`` or ``"bf16"`` (see the module's docstring)."""
    if isinstance(amp, (bool, str)) and (amp is False or amp in AMP_DTYPES):
        return amp
    raise InputError(f"amp: expected False, True (float16 autocast), 'fp16' or 'bf16', got {amp!r}")


def autocast(device: torch.device, amp: bool | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``amp``'s dtype for the block (nothing with ``amp=False``).

    The one switch of mixed precision: every method (the CAM family included) runs its passes
    inside it. Parameters stay float32; autocast casts them per op.
    """
    if check_amp(amp) is False:
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(device.type):
        raise InputError(f"amp: autocast is not available on {device.type}; use amp=False")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scale(amp: bool | str) -> float:
    """The factor a score is multiplied by before a backward pass under ``amp`` (1 without float16)."""
    return GRAD_SCALE if amp is not False and AMP_DTYPES[amp] == torch.float16 else 1.0


def scaled_grad(score: torch.Tensor, wrt: torch.Tensor, amp: bool | str, *,
                allow_unused: bool = False) -> torch.Tensor | None:
    """``d score.sum() / d wrt`` as float32 (``None`` when ``wrt`` is not in the graph and ``allow_unused``):
    under float16 the score is scaled by :data:`GRAD_SCALE` for the backward pass and the gradient
    unscaled in float32."""
    scale = grad_scale(amp)
    total = score.float().sum()
    (grad,) = torch.autograd.grad(total * scale if scale != 1 else total, wrt, allow_unused=allow_unused)
    if grad is None:
        return None
    return grad.float() / scale if scale != 1 else grad.float()


def finite(maps: torch.Tensor, amp: bool | str) -> torch.Tensor:
    """``maps`` as float32; under ``amp`` an overflow (inf or NaN) is an error that says to turn it off.

    The check reads one flag from the device, once per call, after all the work is queued.
    """
    maps = maps.float()
    if amp is not False and not bool(torch.isfinite(maps).all()):
        raise InputError("amp: the model overflowed in reduced precision (values beyond float16's 65504), so the "
                         "maps are not finite; call again with amp=False (or amp='bf16')")
    return maps


def batch_scores(model: nn.Module, copies: torch.Tensor, target: Target, *, kind: str = "logit") -> torch.Tensor:
    """Scores ``[B]`` of a batch for a target already fixed by :func:`fixed_target`, as float32.

    Fixed class targets are index tensors on the device, checked once on the clean inputs, so
    the class logit is gathered without checking them again: nothing in a loop of batches waits
    for the device (a check on device values would, once per batch).
    """
    if not isinstance(target, torch.Tensor):
        return scores(model, copies, target, kind=kind)[0].float()
    outputs = logits_of(model(copies)).float()
    values = outputs.softmax(1) if kind == "probability" else outputs
    return values.gather(1, target[:, None]).squeeze(1)


def input_gradient(model: nn.Module, inputs: torch.Tensor, target: Target, *, amp: bool | str = False,
                   fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d score / d inputs, scores)`` for a batch, both float32; the caller holds
    :func:`~underhood.core.hooks.frozen`. ``amp`` runs the passes in reduced precision (module docstring);
    ``fixed`` says ``target`` came from :func:`fixed_target` (it is not checked again)."""
    x = inputs.detach().requires_grad_(True)
    with autocast(x.device, amp):
        s = batch_scores(model, x, target) if fixed else scores(model, x, target)[0].float()
    return scaled_grad(s, x, amp), s.detach()


@torch.no_grad()
def fixed_target(model: nn.Module, inputs: torch.Tensor, target: Target, *,
                 amp: bool | str = False) -> tuple[Target, torch.Tensor]:
    """``(target fixed on the clean inputs, clean scores [N])``, from one forward pass.

    Class targets become per-sample indices (``None`` -> the clean prediction), so perturbed
    copies are scored for the class chosen on the clean image.
    """
    with autocast(inputs.device, amp):
        s, outputs = scores(model, inputs, target)
    return (fix(target, outputs) if is_class_target(target) else target), s.float()


def _parts(total: int, size: int, progress: bool, desc: str) -> list[slice]:
    """The batches of ``total`` copies, at most ``size`` each, of equal sizes (within one), with a progress bar.

    Equal sizes: 50 copies at batch 16 run as 13, 13, 12, 12 rather than 16, 16, 16, 2 (a last tiny
    batch costs nearly a full pass on a GPU, and a new shape can trigger a new kernel choice).
    """
    parts = list(batches(total, -(-total // max(1, -(-total // size))) if total else size))
    if not progress:
        return parts
    from tqdm.auto import tqdm

    return tqdm(parts, desc=desc, leave=False)


def score_copies(model: nn.Module, make: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], total: int,
                 target: Target, *, batch_size: int | str | None, shape: tuple[int, ...], kind: str = "logit",
                 grad: bool = False, progress: bool = False, desc: str = "perturbations",
                 amp: bool | str = False) -> torch.Tensor:
    """Scores ``[total]`` (float32) of perturbed copies built lazily, ``batch_size`` at a time.

    ``make(slice)`` returns ``(copies [B, C, H, W], sample index [B])`` for that range of the
    ``total`` copies, so no more than one batch of copies is ever held in memory. ``target``
    must be fixed (see :func:`fixed_target`). Nothing in the loop waits for the device.
    """
    size = resolve_batch_size(batch_size, model, shape, grad=grad)
    out = []
    with torch.no_grad(), autocast(model_device(model), amp):
        for part in _parts(total, size, progress, desc):
            copies, index = make(part)
            out.append(batch_scores(model, copies, select(target, index), kind=kind))
    return torch.cat(out) if out else torch.zeros(0)


def accumulate_gradients(model: nn.Module, make: Callable[[slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                         total: int, n: int, target: Target, *, shape: tuple[int, ...],
                         batch_size: int | str | None,
                         transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         progress: bool = False, desc: str = "gradients",
                         amp: bool | str = False) -> torch.Tensor:
    """Weighted sums of input gradients of ``total`` copies, per original sample ``[n, C, H, W]``.

    ``make(slice)`` returns ``(copies [B, C, H, W], sample index [B], weight [B])``; copy ``b``
    adds ``weight[b] * transform(d score / d copy)`` to sample ``index[b]``. Copies are built
    one batch at a time, and each batch costs one forward and one backward pass (in reduced
    precision with ``amp``; the sums are float32).
    """
    size = resolve_batch_size(batch_size, model, shape, grad=True)
    out = None
    for part in _parts(total, size, progress, desc):
        copies, index, weight = make(part)
        grad, _ = input_gradient(model, copies, select(target, index), amp=amp, fixed=True)
        if transform is not None:
            grad = transform(grad)
        out = grad.new_zeros((n, *shape)) if out is None else out
        out.index_add_(0, index, grad * weight.view(-1, 1, 1, 1))
    return out

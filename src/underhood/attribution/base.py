"""What every attribution method shares: eval mode for the call, input checks, fixed targets,
and batched scoring of many perturbed copies of the inputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.inputs import check_inputs
from ..core.targets import Target, fix, is_class_target, scores, select


def deprecated(old: str, new: str, *, depth: int = 1) -> None:
    """Warn that the call form ``old`` is deprecated in favour of ``new``: a ``DeprecationWarning``
    pointing at the caller of the public function, ``depth`` frames above this call."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2 + depth)


def prepare(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Checked inputs on the model's device (see :func:`underhood.core.inputs.check_inputs`)."""
    return check_inputs(model, inputs)


def input_gradient(model: nn.Module, inputs: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d score / d inputs, scores)`` for a batch; the caller holds :func:`~underhood.core.hooks.frozen`."""
    x = inputs.detach().requires_grad_(True)
    s, _ = scores(model, x, target)
    (grad,) = torch.autograd.grad(s.sum(), x)
    return grad, s.detach()


@torch.no_grad()
def fixed_target(model: nn.Module, inputs: torch.Tensor, target: Target) -> tuple[Target, torch.Tensor]:
    """``(target fixed on the clean inputs, clean scores [N])``, from one forward pass.

    Class targets become per-sample indices (``None`` -> the clean prediction), so perturbed
    copies are scored for the class chosen on the clean image.
    """
    s, outputs = scores(model, inputs, target)
    return (fix(target, outputs) if is_class_target(target) else target), s.float()


def score_copies(model: nn.Module, make: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], total: int,
                 target: Target, *, batch_size: int | str | None, shape: tuple[int, ...], kind: str = "logit",
                 grad: bool = False, progress: bool = False, desc: str = "perturbations") -> torch.Tensor:
    """Scores ``[total]`` of perturbed copies built lazily, ``batch_size`` at a time.

    ``make(slice)`` returns ``(copies [B, C, H, W], sample index [B])`` for that range of the
    ``total`` copies, so no more than one batch of copies is ever held in memory. ``target``
    must be fixed (see :func:`fixed_target`).
    """
    from tqdm.auto import tqdm

    size = resolve_batch_size(batch_size, model, shape, grad=grad)
    out = []
    with torch.no_grad():
        for part in tqdm(list(batches(total, size)), desc=desc, disable=not progress, leave=False):
            copies, index = make(part)
            s, _ = scores(model, copies, select(target, index), kind=kind)
            out.append(s.float())
    return torch.cat(out) if out else torch.zeros(0)


def accumulate_gradients(model: nn.Module, make: Callable[[slice], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                         total: int, n: int, target: Target, *, shape: tuple[int, ...],
                         batch_size: int | str | None,
                         transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         progress: bool = False, desc: str = "gradients") -> torch.Tensor:
    """Weighted sums of input gradients of ``total`` copies, per original sample ``[n, C, H, W]``.

    ``make(slice)`` returns ``(copies [B, C, H, W], sample index [B], weight [B])``; copy ``b``
    adds ``weight[b] * transform(d score / d copy)`` to sample ``index[b]``. Copies are built
    one batch at a time, and each batch costs one forward and one backward pass.
    """
    from tqdm.auto import tqdm

    size = resolve_batch_size(batch_size, model, shape, grad=True)
    out = None
    for part in tqdm(list(batches(total, size)), desc=desc, disable=not progress, leave=False):
        copies, index, weight = make(part)
        grad, _ = input_gradient(model, copies, select(target, index))
        if transform is not None:
            grad = transform(grad)
        out = grad.new_zeros((n, *shape)) if out is None else out
        out.index_add_(0, index, grad * weight.view(-1, 1, 1, 1))
    return out

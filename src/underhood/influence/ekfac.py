"""EKFAC: the curvature of Linear and Conv2d layers in a Kronecker-factored eigenbasis.

K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions) approximates the Fisher block of
one layer by a Kronecker product ``A ⊗ S``: ``A = E[a a^T]`` over the layer's inputs ``a`` (with a trailing
1 when the layer has a bias) and ``S = E[s s^T]`` over the gradients ``s`` of the per-example loss w.r.t. the
layer's output. EKFAC (George et al. 2018) keeps the eigenbases ``Q_A``, ``Q_S`` of the factors and refits
the eigenvalues to the per-example weight gradients ``G_n`` (``[out, in(+1)]``)::

    Lambda[o, i] = E_n[(Q_S^T G_n Q_A)[o, i]^2]        F_ekfac = (Q_S ⊗ Q_A) diag(Lambda) (Q_S ⊗ Q_A)^T

which is the best approximation of ``F = E_n[vec(G_n) vec(G_n)^T]`` (Frobenius) in that eigenbasis, and
the estimator of Grosse et al. (2023, sections 2-3) for influence functions. Layers are independent
(block-diagonal), so ``(F_ekfac + damping I)^-1 v`` is two rotations and a division per layer.

Scaling. ``s`` is the gradient of each example's own loss (the backward pass differentiates the SUM of
``problem.loss`` over a batch, so no ``1/N`` enters), and every expectation is a mean over the ``N``
examples fitted. Then ``E_n[vec(G_n) vec(G_n)^T]`` with labels drawn from the model's softmax
(``fisher="sampled"``, the true Fisher) is an unbiased estimate of the Gauss-Newton matrix of the MEAN
cross-entropy: the ``H`` of the influence contract (for a linear softmax model, its exact Hessian).
``fisher="empirical"`` uses the given labels instead (the empirical Fisher).

Convolutions (the KFC convention of Grosse & Martens 2016): ``a`` are the unfolded input patches
(``[in * kh * kw (+1)]``, in the order of ``weight.reshape(out, -1)``) and ``s`` the output gradients at
each of the ``T`` output positions; ``A = E_n[sum_t a_t a_t^T]`` (summed over positions) and
``S = E_n[(1/T) sum_t s_t s_t^T]`` (averaged), so that ``A ⊗ S`` is ``E_n[vec(G_n) vec(G_n)^T]`` when
positions are uncorrelated. A Linear layer applied to ``[N, ..., in]`` treats the middle dimensions as
positions the same way (``T = 1`` for ``[N, in]``). Only the product ``A ⊗ S`` has a meaning; the
eigenvalue correction ``Lambda`` does not depend on how it is split.

Damping 0: the pseudo-inverse, as the ``exact`` estimator's (:class:`underhood.influence.solvers.Eigen`).
Corrected eigenvalues at most ``RELATIVE_FLOOR`` (1e-10) times their layer's largest are numerically zero
(float32 gradients carry ~1e-7 relative error, ~1e-14 once squared); with ``damping=0`` their coordinates
are dropped rather than divided by noise. The layer whose output is a softmax's logits always has such
directions: cross-entropy ignores adding one vector to every class row, and every gradient is orthogonal
to them, so dropping them is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import batches
from ..core.checks import choice, number, positive_int
from ..core.device import threads
from ..core.errors import InputError
from ..core.hooks import frozen, layer_io

__all__ = ["EKFAC", "Factors", "FISHERS", "RELATIVE_FLOOR"]

FISHERS = ("sampled", "empirical")
RELATIVE_FLOOR = 1e-10
"""Corrected eigenvalues at most this times their layer's largest count as zero (the pseudo-inverse drops them)."""
_CHUNK = 1 << 24
"""Elements of rotated per-example conv gradients ``[b, out, in]`` held at once (64 MB in float32)."""
_KEYS = ("a_eigenvalues", "a_eigenvectors", "s_eigenvalues", "s_eigenvectors", "lambda")


@dataclass(frozen=True)
class _Layer:
    """One chosen Linear or Conv2d layer: its module and the names of its chosen weight and bias."""

    name: str
    module: nn.Module
    weight: str
    bias: str | None

    @property
    def dims(self) -> tuple[int, int]:
        """(out, in(+1)): the shape of its gradient matrix ``G``."""
        w = self.module.weight
        return w.shape[0], w[0].numel() + (self.bias is not None)


@dataclass
class Factors:
    """A layer's fitted factors, all float64: eigen-decompositions of ``A`` ``[in(+1)]^2`` and ``S`` ``[out]^2``
    (ascending eigenvalues, eigenvectors in columns) and the corrected eigenvalues ``Lambda`` ``[out, in(+1)]``."""

    a_eigenvalues: torch.Tensor
    a_eigenvectors: torch.Tensor
    s_eigenvalues: torch.Tensor
    s_eigenvectors: torch.Tensor
    lam: torch.Tensor


def _layers(problem) -> list[_Layer]:
    """The chosen layers of ``problem``; an :class:`InputError` naming ``params`` for anything ekfac cannot factor."""
    chosen = set(problem.names)
    layers = []
    for name, module in problem.modules().items():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            own = ", ".join(n for n in problem.names if "." not in n)[:80]
            what = f"{name!r} is a {type(module).__name__}" if name else \
                f"{own} belong to the {type(module).__name__} itself"
            raise InputError(f"params: ekfac needs Linear or Conv2d layers; {what} — choose other params (e.g. the "
                             "Linear layers) or method='cg'")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise InputError(f"params: ekfac needs Conv2d layers with groups=1; {name!r} has groups={module.groups}"
                             " — choose other params or method='cg'")
        prefix = f"{name}." if name else ""
        if prefix + "weight" not in chosen:
            raise InputError(f"params: ekfac needs the weight of {name!r} (a bias alone has no Kronecker factors);"
                             f" choose {name or 'the layer'!r} whole or method='cg'")
        layers.append(_Layer(name, module, prefix + "weight", prefix + "bias" if prefix + "bias" in chosen else None))
    covered = {n for layer in layers for n in (layer.weight, layer.bias)}
    other = [n for n in problem.names if n not in covered]
    if other:
        raise InputError(f"params: ekfac needs Linear or Conv2d layers; {other[0]!r} is not the weight or bias of"
                         " one — choose other params or method='cg'")
    if not layers:
        raise InputError("params: ekfac got no parameters; choose Linear or Conv2d layers")
    return layers


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) equal to the convolution's own padding."""
    if isinstance(conv.padding, str):  # 'valid' or 'same' (torch puts the odd pixel on the right / bottom)
        totals = [0, 0] if conv.padding == "valid" else [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2
    ph, pw = conv.padding
    return pw, pw, ph, ph


def _activations(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as ``[N, T, in(+1)]``: unfolded patches of a convolution, a trailing 1 with a bias."""
    m, bias = layer.module, layer.bias is not None
    if not isinstance(m, nn.Conv2d):
        a = x.reshape(x.shape[0], -1, x.shape[-1])
        return torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2) if bias else a
    # patches as a strided view, copied once: what F.unfold gives (same order: channel, row, column), but
    # without its threaded im2col, many times slower on a busy 2-core machine
    x = F.pad(x, _padding(m), mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    view = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    n, c, ho, wo = view.shape[:4]
    a = x.new_empty(n, ho * wo, c * kh * kw + bias)
    a[..., :c * kh * kw].view(n, ho, wo, c, kh, kw).copy_(view.permute(0, 2, 3, 1, 4, 5))
    if bias:
        a[..., -1] = 1
    return a


def _output_grads(layer: _Layer, g: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. the layer's output as ``[N, T, out]``."""
    if isinstance(layer.module, nn.Conv2d):
        return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


@contextlib.contextmanager
def _recording(problem, layers: list[_Layer]) -> Iterator[Callable]:
    """Yield ``step(x, targets) -> {layer: (a [b, T, in(+1)], s [b, T, out])}``: one forward and backward pass of
    the summed per-example loss in eval mode (BatchNorm statistics fixed), recording each layer's input and
    output gradient. ``targets(logits)`` gives the labels. The model is left as it was found."""
    model = problem.model
    params = [p for layer in layers for p in (layer.module.weight, layer.module.bias if layer.bias else None)
              if p is not None]
    with frozen(model), layer_io(model, {layer.name: layer.module for layer in layers}) as io:
        for p in params:  # restored by `frozen` on exit; autograd.grad leaves every .grad untouched
            p.requires_grad_(True)

        def step(x: torch.Tensor, targets: Callable[[torch.Tensor], torch.Tensor]) -> dict:
            io.clear()
            with torch.enable_grad():
                logits = model(x)
                loss = problem.loss(logits, targets(logits)).sum()  # a sum: each s is its own example's gradient
                torch.autograd.grad(loss, params, allow_unused=True)
            out = {}
            for layer in layers:
                inputs, grads = io.inputs.get(layer.name, []), io.gradients.get(layer.name, [])
                if len(inputs) != 1:
                    raise InputError(f"params: ekfac needs each chosen layer to run once per forward pass;"
                                     f" {layer.name!r} ran {len(inputs)} times — choose other params or method='cg'")
                if grads[0] is None:
                    raise InputError(f"params: the loss has no gradient w.r.t. the output of {layer.name!r};"
                                     " choose layers that the logits depend on")
                out[layer.name] = (_activations(layer, inputs[0]), _output_grads(layer, grads[0]))
            return out

        yield step


class EKFAC:
    """Kronecker-factored eigenbasis curvature of a problem's Linear and Conv2d layers (George et al. 2018).

    Fit with :meth:`fit`; :meth:`solve` applies ``(F_ekfac + damping I)^-1`` and :meth:`self_scores` gives
    ``g^T (F_ekfac + damping I)^-1 g``, both on flat gradients ``[k, P]`` in the order of ``problem.names``.
    ``F_ekfac`` approximates the Hessian ``H`` of the mean training loss (module docstring: scaling).

    Attributes:
        problem: the influence problem (model, chosen parameters, loss).
        factors: layer name -> :class:`Factors`.
        n_examples: how many training examples the factors were fitted on.

    Example:
        >>> ekfac = EKFAC.fit(problem, inputs, labels)          # doctest: +SKIP
        >>> ihvp = ekfac.solve(query_grads, damping=1e-3)      # doctest: +SKIP
    """

    def __init__(self, problem, factors: dict[str, Factors], n_examples: int) -> None:
        self.problem = problem
        self.layers = _layers(problem)
        self.factors = factors
        self.n_examples = n_examples
        self._cast: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._lam = {name: torch.where(f.lam <= RELATIVE_FLOOR * f.lam.max(), 0.0, f.lam)  # numerically zero: 0
                     for name, f in factors.items()}

    def __repr__(self) -> str:
        return f"EKFAC({len(self.layers)} layers, {self.problem.n_params} params, {self.n_examples} examples)"

    @classmethod
    def fit(cls, problem, inputs: torch.Tensor, labels: torch.Tensor | None, *, batch_size: int = 64,
            fisher: str = "sampled", seed: int = 0, progress: bool = False) -> EKFAC:
        """Fit the factors on ``inputs`` ``[n, ...]`` (two passes: ``A`` and ``S``, then ``Lambda``).

        Args:
            problem: the influence problem (:class:`underhood.influence.problem.Problem`).
            inputs: training inputs on the model's device; labels: ``[n]`` class indices (needed for
                ``fisher="empirical"``; ``"sampled"`` ignores them).
            batch_size: examples per forward/backward pass; bounds the memory.
            fisher: ``"sampled"`` (labels drawn from the model's softmax, one draw per example from a
                generator seeded with ``seed``: the true Fisher) or ``"empirical"`` (the given labels).
        """
        layers = _layers(problem)
        batch_size = positive_int("batch_size", batch_size)
        fisher = choice("fisher", fisher, FISHERS)
        n = len(inputs)
        if n == 0:
            raise InputError("inputs: no training examples; give at least one")
        if fisher == "empirical" and (labels is None or len(labels) != n):
            raise InputError(f"labels: fisher='empirical' needs one label per input ({n}); give them or use "
                             "fisher='sampled'")
        from tqdm.auto import tqdm

        parts = list(batches(n, batch_size))
        if fisher == "sampled":  # inverse-CDF draws from one uniform per example: independent of batch_size
            uniform = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            uniform, y = uniform.to(inputs.device), torch.zeros(n, dtype=torch.long, device=inputs.device)
        else:
            y = labels.to(inputs.device)

        def targets(part: slice, draw: bool) -> Callable[[torch.Tensor], torch.Tensor]:
            def given(logits: torch.Tensor) -> torch.Tensor:
                if draw:  # the first pass draws, the second reuses its labels
                    y[part] = _sample(logits, uniform[part])
                return y[part]
            return given

        with _recording(problem, layers) as step:
            A, S = {}, {}
            for part in tqdm(parts, desc="ekfac factors", disable=not progress, leave=False):
                for name, (a, s) in step(inputs[part], targets(part, fisher == "sampled")).items():
                    a2, s2 = a.reshape(-1, a.shape[-1]), s.reshape(-1, s.shape[-1])
                    _add(A, name, (a2.T @ a2).double())
                    _add(S, name, (s2.T @ s2).double() / s.shape[1])  # KFC: sum over positions in A, mean in S
            with threads(1) if inputs.device.type == "cpu" else contextlib.nullcontext():  # threaded eigh stalls
                eig = {name: (torch.linalg.eigh(A[name] / n), torch.linalg.eigh(S[name] / n)) for name in A}
            lam = {}
            for part in tqdm(parts, desc="ekfac eigenvalues", disable=not progress, leave=False):
                for name, (a, s) in step(inputs[part], targets(part, False)).items():
                    (_, qa), (_, qs) = eig[name]
                    _add(lam, name, _rotated_squares(a, s, qa.to(a.dtype), qs.to(s.dtype)).double())
        factors = {name: Factors(ea.eigenvalues, ea.eigenvectors.contiguous(), es.eigenvalues,
                                 es.eigenvectors.contiguous(), lam[name] / n) for name, (ea, es) in eig.items()}
        return cls(problem, factors, n)

    def solve(self, G: torch.Tensor, damping: float) -> torch.Tensor:
        """``(F_ekfac + damping I)^-1 G^T`` for flat gradients ``G`` ``[k, P]``, as ``[k, P]`` (in G's dtype).

        Per layer, in the eigenbasis: ``Q_S [(Q_S^T V Q_A) / (Lambda + damping)] Q_A^T`` with ``V`` the
        ``[out, in(+1)]`` gradient matrix of each row; with ``damping=0``, the pseudo-inverse (module docstring).
        """
        damping = number("damping", damping)
        parts = self._rotated(G)
        out = {}
        for layer in self.layers:
            qs, qa = self._bases(layer.name, G.dtype)
            V = qs @ (parts[layer.name] * self._inverse(layer.name, damping).to(G.dtype)) @ qa.mT
            out.update(self._unmatrix(layer, V.to(G.dtype)))
        return self.problem.join(out)

    def self_scores(self, G: torch.Tensor, damping: float) -> torch.Tensor:
        """``g^T (F_ekfac + damping I)^-1 g`` for each row ``g`` of ``G`` ``[k, P]``: ``[k]`` (sums of squared rotated
        coordinates over ``Lambda + damping``, one rotation per layer)."""
        damping = number("damping", damping)
        parts = self._rotated(G)
        total = G.new_zeros(len(G), dtype=torch.float64)
        for layer in self.layers:
            terms = parts[layer.name].square() * self._inverse(layer.name, damping).to(G.dtype)
            total = total + terms.sum((1, 2), dtype=torch.float64)
        return total.to(G.dtype)

    def top_eigenvalue(self) -> float:
        """The largest eigenvalue of ``F_ekfac`` (the largest corrected eigenvalue of any layer)."""
        return max(f.lam.max().item() for f in self.factors.values())

    def state(self) -> dict[str, torch.Tensor]:
        """Every fitted tensor, keyed ``"{layer}/{what}"`` (plus ``"n_examples"``), for a safetensors cache."""
        state = {f"{name}/{key}": t for name, f in self.factors.items() for key, t in zip(_KEYS, _fields(f))}
        state["n_examples"] = torch.tensor([self.n_examples])
        return state

    @classmethod
    def from_state(cls, problem, state: dict[str, torch.Tensor]) -> EKFAC:
        """The :class:`EKFAC` that :meth:`state` saved, for the same ``problem`` (checked: layers and shapes)."""
        factors = {}
        for layer in _layers(problem):
            out, inp = layer.dims
            shapes = [(inp,), (inp, inp), (out,), (out, out), (out, inp)]
            keys = [f"{layer.name}/{key}" for key in _KEYS]
            if any(k not in state or tuple(state[k].shape) != s for k, s in zip(keys, shapes)):
                raise InputError(f"state: no EKFAC factors of shape {(out, inp)} for layer {layer.name!r};"
                                 " the cache was made for other params — fit again")
            factors[layer.name] = Factors(*(state[k].to(layer.module.weight.device, torch.float64) for k in keys))
        if "n_examples" not in state:
            raise InputError("state: 'n_examples' missing; not an EKFAC state — fit again")
        return cls(problem, factors, int(state["n_examples"]))

    def _inverse(self, name: str, damping: float) -> torch.Tensor:
        """``1 / (Lambda + damping)`` ``[out, in(+1)]``, 0 where that is 0 (the pseudo-inverse)."""
        shifted = self._lam[name] + damping
        return torch.where(shifted > 0, 1.0 / torch.where(shifted > 0, shifted, 1.0), 0.0)

    def _rotated(self, G: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each layer's rows of ``G`` as ``Q_S^T V Q_A`` ``[k, out, in(+1)]`` (in G's dtype)."""
        if G.ndim != 2 or G.shape[1] != self.problem.n_params:
            raise InputError(f"G: expected flat gradients [k, {self.problem.n_params}], got {tuple(G.shape)}")
        parts = self.problem.split(G)
        rotated = {}
        for layer in self.layers:
            V = parts[layer.weight].reshape(len(G), layer.dims[0], -1)
            if layer.bias is not None:
                V = torch.cat([V, parts[layer.bias].unsqueeze(-1)], dim=-1)
            qs, qa = self._bases(layer.name, V.dtype)
            rotated[layer.name] = qs.mT @ V @ qa    # in G's dtype: float32 gradients rotate at float32 speed
        return rotated

    def _bases(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's eigenbases ``(Q_S, Q_A)`` in ``dtype`` (converted once per dtype)."""
        key = (name, dtype)
        if key not in self._cast:
            f = self.factors[name]
            self._cast[key] = (f.s_eigenvectors.to(dtype), f.a_eigenvectors.to(dtype))
        return self._cast[key]

    def _unmatrix(self, layer: _Layer, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradient matrices ``[k, out, in(+1)]`` back to ``{param name: [k, *shape]}``."""
        w = layer.module.weight
        out = {layer.weight: V[..., :w[0].numel()].reshape(len(V), *w.shape)}
        if layer.bias is not None:
            out[layer.bias] = V[..., -1]
        return out


def _add(sums: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    sums[name] = value if name not in sums else sums[name] + value


def _sample(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One label per row drawn from ``softmax(logits)`` by inverting its CDF at ``uniform`` ``[b]``."""
    cdf = torch.softmax(logits.detach().double(), dim=-1).cumsum(-1)
    return torch.searchsorted(cdf, uniform[:, None]).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def _fields(f: Factors) -> tuple[torch.Tensor, ...]:
    return f.a_eigenvalues, f.a_eigenvectors, f.s_eigenvalues, f.s_eigenvectors, f.lam


def _rotated_squares(a: torch.Tensor, s: torch.Tensor, qa: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """``sum_n (Q_S^T G_n Q_A)^2`` ``[out, in(+1)]`` for ``G_n = sum_t s_nt a_nt^T``, batched.

    With one position ``G_n`` is an outer product and so is its rotation: the sum is one matrix product of
    squares. With several, the rotated ``G_n`` are formed by a batched product, ``_CHUNK`` elements at a time.
    """
    a, s = a @ qa, s @ qs
    if a.shape[1] == 1:
        return s[:, 0].square().T @ a[:, 0].square()
    step = max(1, _CHUNK // (s.shape[2] * a.shape[2]))
    total = None
    for i in range(0, len(a), step):
        part = torch.bmm(s[i:i + step].transpose(1, 2), a[i:i + step]).square().sum(0)
        total = part if total is None else total + part
    return total

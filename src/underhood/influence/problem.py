"""The influence problem: a model, the parameters influence is measured over, a per-example loss.

Everything the estimators need is here, in flat coordinates (the chosen parameters, each flattened
row-major, concatenated in :attr:`Problem.names` order):

- per-example gradients ``g_i`` of the loss, with ``torch.func`` (``vmap(grad(...))``), chunked under
  a memory bound;
- Hessian-vector products of the *mean* training loss (forward-over-reverse, ``k`` vectors at once);
- the explicit Hessian for small parameter sets.

When the chosen parameters are exactly one ``nn.Linear`` whose output is the model's logits (the usual
"head"), the network runs once: :meth:`Problem.prepare` keeps the head's input features and every later
pass runs the head alone, which gives the same numbers (checked on the data) at a tiny cost.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..core.batching import batches, memory_bound, per_sample_bytes
from ..core.device import home_device
from ..core.errors import InputError
from ..core.hooks import hooked, preserved
from ..core.names import inner, named_layers
from ..core.outputs import logits_of

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MAX_CHUNK = {"cpu": 32, "cuda": 512}  # examples per vmap call (measured: bigger is slower on a CPU)
EXACT_LIMIT = 6000   # parameters beyond which an explicit Hessian is refused
DENSE_LIMIT = 1024   # parameters up to which Hessian-vector products multiply an explicit Hessian


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default per-example loss: cross-entropy of the logits, ``[N, K], [N] -> [N]``."""
    return F.cross_entropy(logits, labels, reduction="none")


def select_params(model: nn.Module, params: str | Sequence[str] | None) -> list[str]:
    """Names of the chosen parameters, in the model's order, relative to the network inside any wrapper.

    ``params``: ``None`` (every parameter with ``requires_grad``), a module name (all its parameters,
    e.g. ``"fc"`` or ``"layer4"``), a parameter name (``"fc.weight"``), or a list of these.
    """
    named = dict(inner(model).named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise InputError("params: the model has no trainable parameter; name the ones to use, e.g. params='fc'")
        return names
    items = [params] if isinstance(params, str) else params
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) for i in items):
        raise InputError(f"params: expected None, a module or parameter name, or a list of names; got {params!r}")
    layers = named_layers(model)
    chosen: set[str] = set()
    for item in items:
        if item in named:
            chosen.add(item)
        elif item in layers:
            own = [f"{item}.{n}" for n, _ in layers[item].named_parameters()]
            if not own:
                raise InputError(f"params: {item!r} ({type(layers[item]).__name__}) has no parameters; "
                                 "name a layer that has weights")
            chosen.update(own)
        else:
            close = difflib.get_close_matches(item, list(layers) + list(named), n=4, cutoff=0.5)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else \
                f"e.g. {', '.join(map(repr, list(layers)[-3:]))}"
            raise InputError(f"params: no module or parameter named {item!r}; {hint}")
    return [n for n in named if n in chosen]


def head_layer(model: nn.Module, example: torch.Tensor | None = None) -> str | None:
    """The model's head: the last ``nn.Linear`` a forward pass of ``example`` runs (the last in module order without
    an example, or when none runs); ``None`` when the model has no ``nn.Linear``."""
    linear = {name: m for name, m in named_layers(model).items() if isinstance(m, nn.Linear)}
    if not linear or example is None:
        return list(linear)[-1] if linear else None
    ran: list[str] = []

    def note(name: str):
        return lambda module, inputs, output: ran.append(name)

    with hooked(model, {m: note(n) for n, m in linear.items()}), preserved(model), torch.no_grad():
        model.eval()
        model(example)
    return ran[-1] if ran else list(linear)[-1]


def as_data(data: object, name: str, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` on ``device`` from an ImageSet, an ``(inputs, labels)`` pair, a Dataset of pairs, or
    a tensor of inputs alone (then labelled by the model's predictions)."""
    if isinstance(data, torch.Tensor):
        x = data.to(device)
        if len(x) == 0:
            raise InputError(f"{name}: it is empty; give at least one example")
        with preserved(model), torch.no_grad():
            model.eval()
            y = torch.cat([logits_of(model(x[s])).argmax(1) for s in batches(len(x), 256)])
        return x, y
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise InputError(f"{name}: the dataset is empty; give at least one example")
        pairs = [data[i] for i in range(len(data))]
        if not all(isinstance(p, (tuple, list)) and len(p) >= 2 for p in pairs[:1]):
            raise InputError(f"{name}: a Dataset must give (input, label) pairs; got {type(pairs[0]).__name__}")
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    else:
        raise InputError(f"{name}: expected an ImageSet, an (inputs, labels) pair of tensors, a Dataset of "
                         f"(input, label) pairs or a tensor of inputs; got {type(data).__name__}")
    if len(x) == 0:
        raise InputError(f"{name}: it is empty; give at least one example")
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(f"{name}: labels must be one integer per input ([{len(x)}]); got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{name}: labels must be integer class indices, got {y.dtype}")
    return x.to(device), y.to(device=device, dtype=torch.long)


class Problem:
    """Per-example gradients and Hessian-vector products of ``loss`` over the chosen parameters.

    Args:
        model: the user's model; it is run in eval mode by the caller (BatchNorm uses running statistics).
        params: see :func:`select_params`.
        loss: per-example loss ``(logits [N, K], labels [N]) -> [N]``; default :func:`cross_entropy`.
        batch_size: examples per vectorised call; ``None`` chooses one under the memory bound.
    """

    def __init__(self, model: nn.Module, params: str | Sequence[str] | None = None, loss: Loss | None = None,
                 *, batch_size: int | None = None) -> None:
        if loss is not None and not callable(loss):
            raise InputError(f"loss: expected a callable (logits, labels) -> per-example losses, got {loss!r}")
        self.network = model
        self.names = select_params(model, params)
        named = dict(inner(model).named_parameters())
        tensors = [named[n] for n in self.names]
        full = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self._keys = [full[id(t)] for t in tensors]       # names inside ``self.model`` for functional_call
        self.shapes = [tuple(t.shape) for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        self.n_params = sum(self.sizes)
        self.theta = torch.cat([t.detach().reshape(-1) for t in tensors])
        self.device, self.dtype = self.theta.device, self.theta.dtype
        self.loss: Loss = loss or cross_entropy
        self.model: nn.Module = model
        self.head: str | None = None
        self._batch_size = batch_size
        self._bytes: dict[tuple, int] = {}

    def __repr__(self) -> str:
        where = f", head {self.head!r} on cached features" if self.head else ""
        return f"Problem({len(self.names)} tensors, {self.n_params:,} parameters{where})"

    # ------------------------------------------------------------------ coordinates

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[k, P]`` -> ``{name: [k, *shape]}``."""
        parts = torch.split(flat, self.sizes, dim=-1)
        return {n: p.reshape(*flat.shape[:-1], *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{name: [k, *shape]}`` -> ``[k, P]``."""
        return torch.cat([parts[n].reshape(parts[n].shape[0], -1) for n in self.names], dim=-1)

    def _unflat(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: t.view(s) for k, t, s in zip(self._keys, torch.split(theta, self.sizes), self.shapes)}

    def modules(self) -> dict[str, nn.Module]:
        """Module name -> module, for each module owning chosen parameters (names relative to the network)."""
        layers = named_layers(self.network)
        owners = dict.fromkeys(n.rpartition(".")[0] for n in self.names)
        return {o: (layers[o] if o else inner(self.network)) for o in owners}

    # ------------------------------------------------------------------ the head shortcut

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """The inputs every later call takes: ``inputs`` themselves, or the head's input features.

        The first call decides: when the chosen parameters are one ``nn.Linear`` and the model's logits equal
        that layer applied to its recorded inputs, later passes run the layer alone.
        """
        if self.head is not None:
            return self._features(inputs)
        if self.model is not self.network:
            return inputs
        owners = self.modules()
        if len(owners) != 1:
            return inputs
        (name, module), = owners.items()
        if not name or not isinstance(module, nn.Linear) or len(self.names) != len(list(module.parameters())):
            return inputs
        self.head, self._head_module = name, module
        probe = inputs[: min(len(inputs), 16)]
        feats, logits = self._features(probe, with_logits=True)
        if feats is None or feats.ndim != 2 or logits.shape != (len(probe), module.out_features) or \
                not torch.allclose(module(feats), logits, rtol=1e-4, atol=1e-5):
            self.head = None
            return inputs
        self.model = module
        self._keys = [n.rpartition(".")[2] for n in self.names]
        return self._features(inputs)

    def _features(self, inputs: torch.Tensor, with_logits: bool = False):
        seen: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple) -> None:
            seen.append(args[0].detach())

        feats, outs = [], []
        with hooked(self.network, pre={self._head_module: keep}), preserved(self.network), torch.no_grad():
            self.network.eval()
            for s in batches(len(inputs), 256):
                seen.clear()
                outs.append(logits_of(self.network(inputs[s])))
                if not seen:        # the layer is not called: no shortcut
                    return None, None
                feats.append(seen[-1])
        return (torch.cat(feats), torch.cat(outs)) if with_logits else torch.cat(feats)

    # ------------------------------------------------------------------ losses and gradients

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of the (prepared) inputs with the model's own parameters."""
        return logits_of(self.model(inputs))

    def _batch_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = logits_of(functional_call(self.model, self._unflat(theta), (x,)))
        return self.loss(out, y).sum()

    def _one_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._batch_loss(theta, x.unsqueeze(0), y.unsqueeze(0))

    def chunk(self, inputs: torch.Tensor, vectors: int = 1, cap: int | None = None) -> int:
        """Examples per vectorised call: the user's ``batch_size``, else what fits the memory bound (at most
        ``cap``; by default :data:`MAX_CHUNK`, the per-example vmap's best size)."""
        if self._batch_size:
            return max(1, self._batch_size // max(1, vectors)) if vectors > 1 else self._batch_size
        key = (id(self.model), tuple(inputs.shape[1:]), inputs.dtype)
        if key not in self._bytes:
            with preserved(self.model):
                self.model.eval()
                self._bytes[key] = per_sample_bytes(self.model, tuple(inputs.shape[1:]), inputs.device, grad=True,
                                                    dtype=inputs.dtype)
        per = self._bytes[key] * max(1, vectors) + 3 * self.n_params * self.theta.element_size()
        cap = MAX_CHUNK.get(inputs.device.type, 32) if cap is None else cap
        return int(max(1, min(cap, memory_bound(inputs.device) // per)))

    def check(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """One small pass: the loss gives per-example values and reaches every chosen parameter."""
        x, y = inputs[:2], labels[:2]
        with torch.no_grad():
            logits = self.forward(x)
        if logits.ndim != 2:
            raise InputError(f"model: influence needs [N, classes] logits, got shape {tuple(logits.shape)}")
        if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
            raise InputError(f"labels: class index {int(y.max())} outside the model's {logits.shape[1]} classes")
        values = self.loss(logits, y)
        if not isinstance(values, torch.Tensor) or values.shape != (len(x),):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise InputError(f"loss: must return one loss per example ([{len(x)}]), got {shape}; "
                             "use reduction='none'")
        leaves = {k: t.detach().clone().requires_grad_(True) for k, t in self._unflat(self.theta).items()}
        with torch.enable_grad():
            total = self.loss(logits_of(functional_call(self.model, leaves, (x,))), y).sum()
            reached = torch.autograd.grad(total, list(leaves.values()), allow_unused=True) \
                if total.requires_grad else [None] * len(leaves)
        if all(g is None for g in reached):
            raise InputError(f"params: the loss has no gradient for {', '.join(self.names[:3])}; choose parameters "
                             "the model's output depends on")

    def losses(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example losses ``[n]``."""
        with torch.no_grad():
            return torch.cat([self.loss(self.forward(inputs[s]), labels[s]) for s in batches(len(inputs), 256)])

    def iter_grads(self, inputs: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(slice, [b, P])`` chunks of per-example gradients."""
        per_example = vmap(grad(self._one_loss), in_dims=(None, 0, 0))
        size = self.chunk(inputs)
        for s in batches(len(inputs), size):
            with sdpa_kernel([SDPBackend.MATH]):   # vmap has batching rules for attention's math form only
                g = per_example(self.theta, inputs[s], labels[s]).detach()
            yield s, g

    def grads(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example gradients ``[n, P]``."""
        return torch.cat([g for _, g in self.iter_grads(inputs, labels)])

    # ------------------------------------------------------------------ curvature

    def hvp(self, inputs: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``V [k, P] -> H V`` with ``H`` the Hessian of the mean loss over ``(inputs, labels)``.

        Up to :data:`DENSE_LIMIT` parameters the Hessian is built once (``P`` products, vectorised) on the first
        call and later products are matmuls: an iterative solver's many small products would otherwise pay
        ``torch.func``'s per-call overhead each time.
        """
        if self.n_params > DENSE_LIMIT:
            return self._hvp(inputs, labels)
        dense: list[torch.Tensor] = []

        def apply(vectors: torch.Tensor) -> torch.Tensor:
            if not dense:
                dense.append(self.hessian(inputs, labels))
            return vectors.to(self.dtype) @ dense[0]

        return apply

    def _hvp(self, inputs: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        n = len(inputs)
        g = grad(self._batch_loss)
        theta = self.theta

        def one(v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return jvp(lambda t: g(t, x, y), (theta,), (v,))[1]

        def apply(vectors: torch.Tensor) -> torch.Tensor:
            squeeze = vectors.ndim == 1
            V = vectors.reshape(-1, self.n_params).to(theta.dtype)
            out = torch.zeros_like(V)
            rows = max(1, min(len(V), 64))
            size = self.chunk(inputs, vectors=rows, cap=4096)   # whole batches: no per-example vmap here
            many = vmap(one, in_dims=(0, None, None))
            # forward-mode AD has no rule for the fused attention kernels: attention runs on its math backend here
            # (the same function, composed of differentiable ops); it loads decompositions with torch.jit.script once
            with warnings.catch_warnings(), sdpa_kernel([SDPBackend.MATH]):
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
                for r in batches(len(V), rows):
                    for s in batches(n, size):
                        out[r] += many(V[r], inputs[s], labels[s]).detach()
            out /= n
            return out[0] if squeeze else out

        return apply

    def hessian(self, inputs: torch.Tensor, labels: torch.Tensor, *, theta: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The explicit ``[P, P]`` Hessian of the mean loss over ``(inputs, labels)`` (symmetrised), at the model's
        parameters or at ``theta`` (flat, as :attr:`theta`)."""
        if self.n_params > EXACT_LIMIT:
            raise InputError(f"params: method='exact' builds a {self.n_params:,} x {self.n_params:,} Hessian; choose "
                             f"at most {EXACT_LIMIT:,} parameters (e.g. the head) or method='cg'")
        point = self.theta if theta is None else theta.detach()
        eye = torch.eye(self.n_params, device=point.device, dtype=point.dtype)
        H = torch.zeros_like(eye)
        g = grad(self._batch_loss)
        rows = min(self.n_params, 256)
        size = self.chunk(inputs, vectors=rows, cap=4096)
        for s in batches(len(inputs), size):
            # reverse over reverse: the vector-Jacobian product of the gradient is H v (H is symmetric); it needs
            # no forward-mode AD, whose first use costs seconds of set-up (attention: its math form, which has a
            # double backward and batching rules)
            with sdpa_kernel([SDPBackend.MATH]):
                _, pullback = vjp(lambda t, s=s: g(t, inputs[s], labels[s]), point)
                for r in batches(self.n_params, rows):
                    H[r] += vmap(pullback)(eye[r])[0].detach()
        H /= len(inputs)
        return (H + H.T) / 2

    # ------------------------------------------------------------------ other weights

    def at(self, state: dict[str, torch.Tensor]) -> Problem:
        """The same problem on a copy of the model holding ``state`` (a checkpoint's state dict)."""
        twin = copy.deepcopy(self.network)
        target = inner(twin)
        try:
            target.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise InputError(f"checkpoints: a state dict does not fit the model ({first})") from None
        for p in twin.parameters():
            p.requires_grad_(False)
        return Problem(twin, self.names, self.loss, batch_size=self._batch_size)


def device_of(model: nn.Module) -> torch.device:
    """The device the model's parameters live on (one device; see core.device.home_device)."""
    return home_device(model)


def finite_or_raise(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` when every value is finite, else an InputError naming ``what``."""
    if not torch.isfinite(t).all():
        raise InputError(f"{what}: non-finite values (NaN or inf); check the model's loss on these examples")
    return t


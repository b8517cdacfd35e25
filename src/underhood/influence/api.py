"""``influence`` and ``self_influence``: the estimators behind one convention.

score[q, i] = predicted change of query q's loss if training point i were removed
            = (1/n) g_q^T (H + damping I)^-1 g_i          (Koh & Liang 2017, removal = upweighting by -1/n)

with g the gradient of the per-example loss over the chosen parameters and H the Hessian of the mean
training loss. Positive = helpful. The estimators differ only in how they apply (H + damping I)^-1
(:meth:`Influence.solve`), so adding one is a few lines there.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.batching import batches
from ..core.checks import choice, number, positive_int
from ..core.device import home_device
from ..core.errors import InputError
from ..core.hooks import evaluating
from ..core.names import inner
from .errors import InfluenceError, InfluenceWarning
from .problem import EXACT_LIMIT, Loss, Problem, as_data
from .result import InfluenceResult, SelfInfluenceResult
from .solvers import Eigen, arnoldi, arnoldi_solve, cg, eigen, lissa, top_eigenvalue

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin", "grad_dot", "grad_cos", "relatif")
HESSIAN = ("exact", "cg", "lissa", "arnoldi", "ekfac")
FACTORED = ("exact", "arnoldi", "ekfac")   # an inverse that costs a matmul once fitted
TOP = 10                                   # the top-k of the fragility and dominance checks
LISSA_BATCH = 1024                         # LiSSA's Hessian mini-batch beyond this many training points
FIT_SIZE = 1000                            # training points EKFAC's factors are averaged over (seeded subset)
CACHE_VERSION = 1


@dataclass
class Queries:
    """Prepared queries: per checkpoint the vectors ``v`` with ``score = v . g_i`` (the first one also holding the
    fragility rows), the queries' labels, losses and predicted classes, and the fragility dampings."""

    vectors: list[torch.Tensor]
    labels: torch.Tensor
    losses: torch.Tensor
    predictions: torch.Tensor
    dampings: dict[str, float]


def _checkpoints(checkpoints: object) -> list[tuple[dict[str, torch.Tensor] | None, float]]:
    """``[(state_dict or None for the model's own weights, learning rate)]``."""
    if checkpoints is None:
        return [(None, 1.0)]
    if not isinstance(checkpoints, (list, tuple)) or not checkpoints:
        raise InputError("checkpoints: expected a non-empty list of state dicts or (state_dict, learning_rate) pairs")
    out = []
    for c in checkpoints:
        state, lr = (c if isinstance(c, (tuple, list)) and len(c) == 2 else (c, 1.0))
        if not isinstance(state, dict):
            raise InputError(f"checkpoints: expected state dicts or (state_dict, learning_rate) pairs, got "
                             f"{type(state).__name__}")
        out.append((state, number("checkpoints learning rate", lr, strict=True)))
    return out


def _digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(p, (nn.Module, dict)):
            items = p.state_dict() if isinstance(p, nn.Module) else p
            for name, t in sorted(items.items()):
                h.update(str(name).encode())
                h.update(_digest(t).encode())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


class Influence:
    """An influence estimator fitted on a training set: the state every query reuses.

    ``influence(model, train, queries, ...)`` is ``Influence(model, train, ...).scores(queries)``; keep the object
    (or pass ``cache=DIR``) to score new queries without refitting. Arguments: see :func:`influence`.
    """

    def __init__(self, model: nn.Module, train: Any, *, method: str = "cg", params: str | Sequence[str] | None = None,
                 damping: float = 0.0, loss: Loss | None = None, batch_size: int | None = None, seed: int = 0,
                 progress: bool = True, checkpoints: Sequence[Any] | None = None,
                 cache: str | Path | None = None, projection: int | None = None, rank: int = 50,
                 fit_size: int | None = FIT_SIZE) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.method = choice("method", method, METHODS)
        self.damping = number("damping", damping)
        self.seed = int(seed)
        self.progress = bool(progress)
        self.rank = positive_int("rank", rank)
        self.fit_size = None if fit_size is None else positive_int("fit_size", fit_size)
        self.projection = None if projection is None else positive_int("projection", projection)
        if batch_size is not None:
            positive_int("batch_size", batch_size)
        if checkpoints is not None and self.method != "tracin":
            raise InputError("checkpoints: only method='tracin' uses checkpoints; drop them or choose tracin")
        self.model = model
        self.info: dict[str, Any] = {}
        self.notes: list[str] = []
        self.device = home_device(model)
        self.cache = None if cache is None else Path(cache)
        with evaluating(model):
            self.problem = Problem(model, params, loss, batch_size=batch_size)
            raw_x, self.labels = as_data(train, "train", model, self.device)
            # the data's fingerprint keys the disk cache (hashing 10,000 images takes a second: only with a cache)
            self._raw_digest = _digest(raw_x, self.labels) if self.cache is not None else None
            self.inputs = self._prepared(raw_x)
            self.problem.check(self.inputs, self.labels)
        self.n = len(self.labels)
        self._raw = raw_x if self.method == "tracin" and checkpoints is not None else None
        self._relatif_base: str | None = None
        self._query_grads: torch.Tensor | None = None
        self._ckpts = _checkpoints(checkpoints)
        self._fitted = False
        self._extra: dict[str, Any] = {}
        self._state: dict[str, Any] = {}
        self._train_cache: torch.Tensor | None = None
        self._projector: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"Influence(method={self.method!r}, {self.n} training points, {self.problem.n_params:,} parameters, "
                f"damping={self.damping:g})")

    # ------------------------------------------------------------------ the estimator's state

    @property
    def inner_method(self) -> str:
        """The Hessian estimator RelatIF uses: exact on small parameter sets, else EKFAC where it applies, else
        Arnoldi."""
        if self.method != "relatif":
            return self.method
        if self._relatif_base is not None:
            return self._relatif_base
        if self.problem.n_params <= 2000:
            return "exact"
        if all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in self.problem.modules().values()):
            return "ekfac"
        return "arnoldi"

    def _prepared(self, raw: torch.Tensor) -> torch.Tensor:
        """The training inputs as the problem takes them; a head's features come from the disk cache when there."""
        from safetensors.torch import load_file

        from ..core.io import write_tensors

        if self.cache is None:
            return self.problem.prepare(raw)
        self.problem.prepare(raw[:16])            # decides the head shortcut on a few images
        if self.problem.head is None:
            return raw
        key = _digest(CACHE_VERSION, self._raw_digest, inner(self.model), self.problem.head)
        path = self.cache / f"features-{key}.safetensors"
        if path.exists():
            self.info["cached_features"] = True
            return load_file(str(path))["features"].to(self.device)
        feats = self.problem.prepare(raw)
        write_tensors(path, {"features": feats})
        return feats

    def _subset(self, limit: int | None) -> torch.Tensor | None:
        """Seeded indices of at most ``limit`` training points (``None``: use them all)."""
        if limit is None or self.n <= limit:
            return None
        gen = torch.Generator().manual_seed(self.seed + 1)
        return torch.randperm(self.n, generator=gen)[:limit].to(self.device)

    def _power(self) -> float:
        """The top Hessian eigenvalue by power iteration, on at most LISSA_BATCH seeded points when there are more
        (an estimate of the scale, which is all the fragility check and LiSSA's scale need)."""
        like, idx = self.problem.theta, self._subset(LISSA_BATCH)
        hvp = self._hvp() if idx is None else self.problem.hvp(self.inputs[idx], self.labels[idx])
        return top_eigenvalue(hvp, self.problem.n_params, seed=self.seed, device=like.device, dtype=like.dtype)

    def _key(self, what: str) -> str:
        loss = self.problem.loss
        # RelatIF's training side is normalised with the damped inverse: its gradients depend on the damping
        damping = self.damping if self.method == "relatif" and what.startswith("train") else None
        return _digest(CACHE_VERSION, what, damping, self.inner_method, self.problem.names, self.rank, self.seed,
                       self.fit_size, getattr(loss, "__qualname__", repr(loss)), self._raw_digest, inner(self.model),
                       [(_digest(s) if s is not None else None, lr) for s, lr in self._ckpts], self.projection)

    def _cache_file(self, what: str) -> Path | None:
        return None if self.cache is None else self.cache / f"{what}-{self._key(what)}.safetensors"

    def _hvp(self):
        """Hessian-vector products of the mean training loss (one closure: a small Hessian is built once)."""
        if "hvp" not in self._extra:
            self._extra["hvp"] = self.problem.hvp(self.inputs, self.labels)
        return self._extra["hvp"]

    def fit(self) -> Influence:
        """Fit the estimator (Hessian eigendecomposition, Arnoldi eigenpairs, EKFAC factors, LiSSA scale); cached
        on disk under ``cache`` when given."""
        if self._fitted:
            return self
        from safetensors.torch import load_file

        method = self.inner_method
        path = self._cache_file("state")
        if path is not None and path.exists():
            self._state = {k: v.to(self.device) for k, v in load_file(str(path)).items()}
            self.info["cached_state"] = True
        else:
            with evaluating(self.model):
                self._state = self._fit_state(method)
            if path is not None and self._state:
                from ..core.io import write_tensors

                write_tensors(path, self._state)
        if method == "ekfac":
            from .ekfac import EKFAC

            self._ekfac = EKFAC.from_state(self.problem, self._state)
        self._fitted = True
        return self

    def _fit_state(self, method: str) -> dict[str, torch.Tensor]:
        P, like = self.problem.n_params, self.problem.theta
        if method == "exact":
            H = self.problem.hessian(self.inputs, self.labels)
            e = eigen(H)
            return {"eigenvalues": e.values, "eigenvectors": e.vectors,
                    "rtol": torch.tensor([e.rtol], dtype=torch.float64)}
        if method == "arnoldi":
            vals, vecs = arnoldi(self._hvp(), P, rank=min(self.rank, P), seed=self.seed, device=like.device,
                                         dtype=like.dtype)
            return {"eigenvalues": vals, "eigenvectors": vecs}
        if method == "ekfac":
            from .ekfac import EKFAC

            idx = self._subset(self.fit_size)   # the factors are averages: a seeded subset estimates them
            x, y = (self.inputs, self.labels) if idx is None else (self.inputs[idx], self.labels[idx])
            return EKFAC.fit(self.problem, x, y, seed=self.seed, progress=self.progress).state()
        if method == "lissa":
            return {"top": torch.tensor([self._power()], dtype=torch.float64)}
        return {}

    def top_eigenvalue(self) -> float:
        """The largest Hessian eigenvalue the estimator knows (for the fragility check's reference damping)."""
        self.fit()
        if "top" not in self._state and "eigenvalues" in self._state:
            return float(self._state["eigenvalues"].max())
        if "top" not in self._state and self.inner_method == "ekfac":
            return float(self._ekfac.top_eigenvalue())
        if "top" not in self._state:
            with evaluating(self.model):
                top = self._power()
            self._state["top"] = torch.tensor([top], dtype=torch.float64)
        return float(self._state["top"][0])

    def solve(self, G: torch.Tensor, damping: float | None = None) -> torch.Tensor:
        """``(H + damping I)^-1 G`` for rows ``G [k, P]`` with this estimator."""
        self.fit()
        d = self.damping if damping is None else damping
        method = self.inner_method
        if method in ("exact", "arnoldi") and "eigenvectors" in self._state:
            vals, vecs = self._state["eigenvalues"], self._state["eigenvectors"]
            if method == "exact":
                return Eigen(vals, vecs, float(self._state["rtol"][0])).solve(G, d).to(G.dtype)
            return arnoldi_solve(vals, vecs, G, d).to(G.dtype)
        if method == "ekfac":
            return self._ekfac.solve(G, d)
        with evaluating(self.model):
            if method == "cg":
                X, info = cg(self._hvp(), G, damping=d)
                self.info["cg_iterations"] = max(self.info.get("cg_iterations", 0), info.iterations)
                return X
            if method == "lissa":
                stochastic = self.n > LISSA_BATCH   # mini-batch products: the change stalls at their noise level
                X, info = lissa(self._lissa_hvp(), G, damping=d, top=float(self._state["top"][0]), seed=self.seed,
                                **({"tol": 1e-3, "depth": 1000} if stochastic else {}))
                self.info["lissa_steps"] = max(self.info.get("lissa_steps", 0), info.iterations)
                self.info["lissa_scale"] = info.scale
                return X
        raise InputError(f"method: {method!r} has no inverse Hessian")

    def _lissa_hvp(self):
        """LiSSA's Hessian-vector products: full-batch up to LISSA_BATCH points, else a seeded mini-batch per step."""
        if self.n <= LISSA_BATCH:
            full = self._hvp()
            return lambda V, step: full(V)
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.n, generator=gen).to(self.device)

        def apply(V: torch.Tensor, step: int) -> torch.Tensor:
            start = (step * LISSA_BATCH) % self.n
            idx = order[start:start + LISSA_BATCH]
            return self.problem.hvp(self.inputs[idx], self.labels[idx])(V)
        return apply

    # ------------------------------------------------------------------ gradients of queries and training points

    def _problems(self) -> list[tuple[Problem, float, torch.Tensor | None]]:
        """``(problem, learning rate, prepared training inputs or None for the main ones)`` per checkpoint."""
        if "problems" not in self._extra:
            out = []
            for state, lr in self._ckpts:
                if state is None:
                    out.append((self.problem, lr, None))
                else:
                    out.append((self.problem.at(state), lr, "prepare"))
            self._extra["problems"] = out
        return self._extra["problems"]

    def _grads_at(self, problem: Problem, raw_or_prepared: torch.Tensor, labels: torch.Tensor,
                  main: bool) -> torch.Tensor:
        with evaluating(problem.network):
            x = raw_or_prepared if main else problem.prepare(raw_or_prepared)
            return problem.grads(x, labels)

    def query_vectors(self, queries: Any) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per checkpoint, the vectors ``v_q`` with ``score[q, i] = v_q . g_i``; and the queries' labels and losses.

        Hessian methods: ``v_q = (H + damping I)^-1 g_q / n``; grad_dot and tracin: ``lr g_q / n``;
        grad_cos: ``g_q / |g_q|``; relatif: as the Hessian methods (the training side is normalised).
        """
        with evaluating(self.model):
            raw, labels = as_data(queries, "queries", self.model, self.device)
            x = self.problem.prepare(raw)
            losses = self.problem.losses(x, labels)
            with torch.no_grad():
                self._query_predictions = torch.cat([self.problem.forward(x[s]).argmax(1)
                                                     for s in batches(len(x), 256)])
        vectors = []
        for problem, lr, how in self._problems():
            g = self._grads_at(problem, x if how is None else raw, labels, how is None)
            if how is None:
                self._query_grads = g
            if self.method in HESSIAN or self.method == "relatif":
                vectors.append(self.solve(g) / self.n)
            elif self.method == "grad_cos":
                vectors.append(g / g.norm(dim=1, keepdim=True).clamp_min(1e-30))
            else:
                vectors.append(lr * g / self.n)
        return vectors, labels, losses

    def _train_side(self, G: torch.Tensor) -> torch.Tensor:
        """Training gradients as the scores need them: normalised for grad_cos and relatif."""
        if self.method == "grad_cos":
            return G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)
        if self.method == "relatif":
            quad = (G * self.solve(G)).sum(1).clamp_min(1e-30)
            return G / quad.sqrt().unsqueeze(1)
        return G

    def _project(self, G: torch.Tensor) -> torch.Tensor:
        """A seeded Rademacher projection to ``projection`` dimensions (Johnson-Lindenstrauss), or ``G``."""
        if self.projection is None:
            return G
        if self._projector is None:
            gen = torch.Generator().manual_seed(self.seed + 7919)
            signs = torch.randint(0, 2, (G.shape[1], self.projection), generator=gen, dtype=torch.int8)
            self._projector = (signs.to(G.dtype) * 2 - 1).to(G.device) / math.sqrt(self.projection)
        return G @ self._projector

    def train_chunks(self, start: int = 0, stop: int | None = None):
        """``(slice, [b, P or projection])`` per checkpoint: the training side of the scores over ``start:stop``."""
        stop = self.n if stop is None else stop
        # a shard computes its own gradients unless the whole set is cached already (or asked for whole)
        cached = self._cached_train(build=start == 0 and stop == self.n)
        raw = None
        for c, (problem, _, how) in enumerate(self._problems()):
            if cached is not None and c == 0 and how is None:
                for s in batches(stop - start, 4096):
                    yield c, slice(start + s.start, start + s.stop), cached[start + s.start:start + s.stop]
                continue
            with evaluating(problem.network):
                if how is None:
                    x = self.inputs[start:stop]
                else:
                    raw = raw if raw is not None else self._raw_train()
                    x = problem.prepare(raw[start:stop])
                for s, g in problem.iter_grads(x, self.labels[start:stop]):
                    yield c, slice(start + s.start, start + s.stop), self._project(self._train_side(g))

    def _raw_train(self) -> torch.Tensor:
        assert self._raw is not None, "raw training inputs are kept for tracin over checkpoints"
        return self._raw

    def _cached_train(self, build: bool = True) -> torch.Tensor | None:
        """The training side of the scores for the model's own weights, from the disk cache or computed once."""
        if self._train_cache is not None:
            return self._train_cache
        path = self._cache_file(f"train-{self.method}")
        if path is None:
            return None
        if path.exists():
            from safetensors.torch import load_file

            self._train_cache = load_file(str(path))["train"].to(self.device)
            self.info["cached_train"] = True
            return self._train_cache
        if not build:
            return None
        width = self.projection or self.problem.n_params
        if self.n * width * 4 > (1 << 30):
            self.notes.append(f"the training gradients ({self.n} x {width:,}) are too big to cache; pass projection="
                              "to cache projected ones")
            return None
        parts = []
        with evaluating(self.model):
            for _, g in self.problem.iter_grads(self.inputs, self.labels):
                parts.append(self._project(self._train_side(g)))
        self._train_cache = torch.cat(parts)
        from ..core.io import write_tensors

        write_tensors(path, {"train": self._train_cache})
        return self._train_cache

    # ------------------------------------------------------------------ scores

    def score_part(self, vectors: list[torch.Tensor], start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[Q, stop - start]`` of training points ``start:stop`` (a shard of a sharded run)."""
        from tqdm.auto import tqdm

        stop = self.n if stop is None else stop
        proj = [self._project(v) for v in vectors]
        out = torch.zeros(len(vectors[0]), stop - start, dtype=vectors[0].dtype, device=self.device)
        total = (stop - start) * len(proj)
        with tqdm(total=total, desc=f"influence ({self.method})", disable=not self.progress, leave=False) as bar:
            for c, s, g in self.train_chunks(start, stop):
                out[:, s.start - start:s.stop - start] += proj[c] @ g.T
                bar.update(s.stop - s.start)
        return out

    def prepare_queries(self, queries: Any, *, fragility: bool = True) -> Queries:
        """The queries' side of the scores, ready for :meth:`score_part` (per shard) and :meth:`result`.

        With ``fragility`` (Hessian methods) the first checkpoint's vectors also hold the queries solved at
        damping x0.1 and x10 (rows ``Q:2Q`` and ``2Q:3Q``), so one pass over the training set scores all three.
        """
        self.fit()
        vectors, labels, losses = self.query_vectors(queries)
        dampings: dict[str, float] = {}
        if fragility and self.method in HESSIAN:
            base = self.damping if self.damping > 0 else 1e-3 * abs(self.top_eigenvalue())
            scaled = []
            for f in (0.1, 10.0):
                try:
                    scaled.append(self.solve(self._query_grads, base * f) / self.n)
                except InfluenceError as exc:   # a smaller damping may not cover negative curvature
                    self.notes.append(f"fragility at damping {base * f:.3g}: {exc}")
                    scaled.append(torch.full_like(vectors[0], math.nan))
            dampings = {"damping_0.1x": base * 0.1, "damping_10x": base * 10.0}
            vectors = [torch.cat([vectors[0], *scaled]), *vectors[1:]]
        return Queries(vectors, labels, losses, self._query_predictions, dampings)

    def result(self, prepared: Queries, scores: torch.Tensor, queries: Any = None) -> InfluenceResult:
        """The result from the scores of :meth:`score_part` over the whole training set (all shards joined):
        the fragility overlaps, and the dominance check (with RelatIF scores beside when ``queries`` are given)."""
        Q = len(prepared.labels)
        main = scores[:Q]
        frag: dict[str, float] = {}
        warn: list[str] = list(dict.fromkeys(self.notes))
        if prepared.dampings:
            k = min(TOP, self.n)
            for j, name in enumerate(("0.1x", "10x")):
                other = scores[Q * (j + 1):Q * (j + 2)]
                frag[f"overlap_{name}"] = _overlap(main, other, k) if torch.isfinite(other).all() else math.nan
            frag.update(prepared.dampings)
            if min(frag["overlap_0.1x"], frag["overlap_10x"]) < 0.5:   # False when one is NaN
                warn.append(f"fragile: the top-{k} helpful points change with damping (overlap "
                            f"{frag['overlap_0.1x']:.0%} at 0.1x, {frag['overlap_10x']:.0%} at 10x; Basu et al. 2021)")
        relatif = None
        if self.method not in ("relatif", "grad_cos") and Q >= 3 and _dominated(main, min(TOP, self.n)):
            warn.append(f"dominated: more than half of the top-{TOP} helpful points are shared by most queries "
                        "(global, high-gradient points); see the RelatIF scores beside them")
            relatif = None if queries is None else self._relatif(queries)
        for w in warn:
            warnings.warn(w, InfluenceWarning, stacklevel=3)
        return InfluenceResult(scores=main.detach(), method=self.method, params=list(self.problem.names),
                               damping=self.damping, query_labels=prepared.labels, train_labels=self.labels,
                               query_losses=prepared.losses, query_predictions=prepared.predictions,
                               fragility=frag, relatif=relatif, warnings=warn, settings=self.settings())

    def scores(self, queries: Any, *, fragility: bool = True) -> InfluenceResult:
        """Scores of every training point for every query (see :func:`influence`)."""
        prepared = self.prepare_queries(queries, fragility=fragility)
        return self.result(prepared, self.score_part(prepared.vectors), queries)

    def _relatif(self, queries: Any) -> torch.Tensor | None:
        if self.problem.n_params > EXACT_LIMIT and self.method not in FACTORED:
            self.notes.append("RelatIF needs the training points' self-influence; not computed for this method at "
                              "this parameter count")
            return None
        twin = Influence.__new__(Influence)
        twin.__dict__.update(self.__dict__)
        twin.method, twin._train_cache, twin._extra, twin.cache, twin.progress = "relatif", None, {}, None, False
        if self.method in FACTORED:
            twin._relatif_base = self.method      # the same fitted estimator
        else:
            twin._fitted, twin._state = False, {}
        vectors, _, _ = twin.query_vectors(queries)
        return twin.score_part(vectors).detach()

    def self_scores(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Self-influence ``[stop - start]`` of training points ``start:stop``."""
        from tqdm.auto import tqdm

        if self.method == "grad_cos":
            raise InputError("method: grad_cos gives every point a self-influence of 1; use grad_dot, tracin or a "
                             "Hessian method (exact, cg, lissa, arnoldi, ekfac)")
        self.fit()
        stop = self.n if stop is None else stop
        out = torch.zeros(stop - start, dtype=self.problem.dtype, device=self.device)
        with tqdm(total=(stop - start) * len(self._ckpts), desc=f"self-influence ({self.method})",
                  disable=not self.progress, leave=False) as bar:
            for problem, lr, how in self._problems():
                with evaluating(problem.network):
                    x = self.inputs[start:stop] if how is None else problem.prepare(self._raw_train()[start:stop])
                    for s, g in problem.iter_grads(x, self.labels[start:stop]):
                        out[s] += self._self(g, lr)
                        bar.update(s.stop - s.start)
        return out

    def _self(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        if self.method in HESSIAN:
            if self.inner_method == "ekfac" and hasattr(self._ekfac, "self_scores"):
                return self._ekfac.self_scores(g, self.damping) / self.n
            return (g * self.solve(g)).sum(1) / self.n
        if self.method == "relatif":
            return (g * self.solve(g)).sum(1).clamp_min(0).sqrt() / self.n
        return lr * (g * g).sum(1) / self.n

    def settings(self) -> dict[str, Any]:
        return {"rank": self.rank if self.inner_method == "arnoldi" else None, "projection": self.projection,
                "seed": self.seed, "n_params": self.problem.n_params, "head": self.problem.head,
                "checkpoints": len(self._ckpts) if self.method == "tracin" else None,
                "inner_method": self.inner_method if self.method == "relatif" else None,
                **{k: v for k, v in self.info.items()}}


def _overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean share of each row's top-k indices that ``a`` and ``b`` have in common."""
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    same = (ta.unsqueeze(2) == tb.unsqueeze(1)).any(2).float().mean(1)
    return float(same.mean())


def _dominated(scores: torch.Tensor, k: int) -> bool:
    """More than half of the top-k helpful points of most queries are in the top-k of most queries."""
    top = scores.topk(k, dim=1).indices
    counts = torch.bincount(top.reshape(-1), minlength=scores.shape[1])
    shared = counts > scores.shape[0] / 2
    share = shared[top].float().mean(1)
    return bool((share > 0.5).float().mean() > 0.5)


def influence(model: nn.Module, train: Any, queries: Any, *, method: str = "cg",
              params: str | Sequence[str] | None = None, damping: float = 0.0, loss: Loss | None = None,
              batch_size: int | None = None, seed: int = 0, progress: bool = True,
              checkpoints: Sequence[Any] | None = None, cache: str | Path | None = None,
              projection: int | None = None, rank: int = 50, fit_size: int | None = FIT_SIZE,
              fragility: bool = True) -> InfluenceResult:
    """Influence of each training point on each query's loss (Koh & Liang 2017).

    ``score[q, i]`` = the predicted change of query ``q``'s loss if training point ``i`` were removed:

        score[q, i] = (1/n) g_q^T (H + damping I)^-1 g_i

    with ``g`` the gradient of the per-example loss over ``params`` and ``H`` the Hessian of the mean training
    loss. Positive = helpful (removing the point would raise the query's loss); negative = harmful. With an
    L2-regularised objective ``mean loss + (lam/2)|theta|^2``, ``damping=lam`` is its exact Hessian.

    Methods (how ``(H + damping I)^-1`` is applied): ``exact`` (explicit Hessian, eigendecomposed; at most a few
    thousand parameters, e.g. the head), ``cg`` (conjugate gradient on Hessian-vector products), ``lissa``
    (Agarwal et al. 2017, scale from the top eigenvalue), ``arnoldi`` (Schioppa et al. 2022, top-``rank``
    eigenspace), ``ekfac`` (George et al. 2018; Linear and Conv2d layers). Without a Hessian: ``tracin``
    (Pruthi et al. 2020: ``(1/n) sum_c lr_c g_q(theta_c) . g_i(theta_c)`` over ``checkpoints``, else the final
    weights), ``grad_dot`` (``(1/n) g_q . g_i``, i.e. H = I), ``grad_cos`` (cosine of the two gradients) and
    ``relatif`` (Barshan et al. 2020: the score divided by ``sqrt(g_i^T H^-1 g_i)``, so that points with huge
    gradients do not dominate every query).

    Args:
        model: any classifier (logits out); run in eval mode (BatchNorm statistics fixed), left as found.
        train, queries: an ImageSet, an ``(inputs, labels)`` pair of tensors (any input shape), a Dataset of
            ``(input, label)`` pairs; queries may also be a tensor of inputs (labelled by the model's prediction).
        params: ``None`` (all trainable parameters), a module name (``"fc"``, ``"layer4"``), a parameter name, or
            a list of names.
        damping: added to the Hessian's diagonal (>= 0).
        loss: per-example loss ``(logits, labels) -> [N]``; default cross-entropy.
        checkpoints: for ``tracin``: state dicts or ``(state_dict, learning_rate)`` pairs.
        cache: a folder where the fitted estimator and the training gradients are kept between calls, keyed by
            a hash of the weights, the data and the settings.
        projection: project training gradients to this many dimensions (Johnson-Lindenstrauss) before the dot
            products; needed to cache large gradient sets.
        rank: Arnoldi's number of eigenpairs.
        fit_size: EKFAC's factors are averaged over this many seeded training points (``None``: all of them).
        fragility: also score at damping x0.1 and x10 and report the top-10 overlap (Hessian methods).

    Returns:
        :class:`InfluenceResult` (``scores [Q, N]``, ``helpful(q, k)``, ``harmful(q, k)``).

    Example:
        >>> r = influence(model, train, queries, params="classifier", method="exact")   # doctest: +SKIP
        >>> r.helpful(0, k=8)                                                          # doctest: +SKIP
    """
    est = Influence(model, train, method=method, params=params, damping=damping, loss=loss, batch_size=batch_size,
                    seed=seed, progress=progress, checkpoints=checkpoints, cache=cache, projection=projection,
                    rank=rank, fit_size=fit_size)
    return est.scores(queries, fragility=fragility)


def self_influence(model: nn.Module, train: Any, *, method: str = "cg", params: str | Sequence[str] | None = None,
                   damping: float = 0.0, loss: Loss | None = None, batch_size: int | None = None, seed: int = 0,
                   progress: bool = True, checkpoints: Sequence[Any] | None = None, cache: str | Path | None = None,
                   rank: int = 50, fit_size: int | None = FIT_SIZE) -> SelfInfluenceResult:
    """Each training point's influence on its own loss, ``(1/n) g_i^T (H + damping I)^-1 g_i`` (or the method's
    analogue): the mislabel finder's ranking (Koh & Liang 2017, section 5.4). ``grad_cos`` is refused (its
    self-score is 1 for every point). Arguments as :func:`influence`.
    """
    est = Influence(model, train, method=method, params=params, damping=damping, loss=loss, batch_size=batch_size,
                    seed=seed, progress=progress, checkpoints=checkpoints, cache=cache, rank=rank, fit_size=fit_size)
    scores = est.self_scores()
    with evaluating(model):
        losses = est.problem.losses(est.inputs, est.labels)
    return SelfInfluenceResult(scores=scores.detach(), losses=losses, labels=est.labels, method=est.method,
                               params=list(est.problem.names), damping=est.damping, settings=est.settings())

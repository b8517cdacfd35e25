"""underhood.influence against issue 16's speed targets, each as wall seconds, CPU seconds and a ratio.

The reference is the model's own raw batched forward+backward (cross-entropy summed over the batch, one
``backward``) over the same images at the same batch size, measured in the same run. Sections:

- ``grads``: per-example gradients (``Problem.grads``, ``vmap(grad)``, all parameters) against the raw pass at
  the batch size the Problem chooses and others (target <= 1.3x); also a hook-based per-example gradient
  (input activations and output gradients of each Conv2d/Linear, one ``bmm`` per layer) over the Conv2d+Linear
  parameters, the path that would replace ``vmap`` for those layers, checked against ``vmap`` on a few images.
- ``self``: self-influence over ``--n`` training images, ``ekfac`` (Conv2d+Linear parameters) and ``tracin``
  (target <= 60 s on 2 cores).
- ``influence``: ``--queries`` queries x ``--n`` training images: ``ekfac``, ``tracin`` with ``projection=512``,
  ``cg`` and ``exact`` over the head (``params="classifier"``) (target <= 60 s).
- ``cache``: a new query against a warm ``cache=DIR`` (the second call, other queries) (target <= 2 s).
- ``pairwise`` (``--device cuda``; skipped on a CPU unless ``--pairwise N Q`` is given): ``N`` x ``Q`` ekfac
  scores (Kronfluence: 50,000 x 2,000 in 106 s on an A100).

Every row records cpu/wall: on the shared 2-core machine, well below the thread count means other processes
took the cores and the wall time is pessimistic; ``cpu_s / 2`` estimates the wall time on 2 free cores (the
targets' machine; perfect scaling assumed). On a loaded machine run with ``UNDERHOOD_THREADS=1``: CPU seconds
of 2 threads that fight other processes include OpenMP's spin-waiting, those of 1 thread do not.

    python benchmarks/influence_bench.py --quick                 # 1,000 images, 20 queries (smoke run)
    python benchmarks/influence_bench.py                         # 10,000 x 100; writes influence-cpu.json
    python benchmarks/influence_bench.py --sections grads self   # some sections
    python benchmarks/influence_bench.py --device cuda           # + 50,000 x 2,000 pairwise; influence-cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import underhood
from underhood import influence as inf
from underhood.core.hooks import evaluating, layer_io
from underhood.influence.problem import Problem

SECTIONS = ("grads", "self", "influence", "cache", "pairwise")
TARGET_CORES = 2   # the targets are for 2 cores: cpu s / 2 estimates that wall time (perfect scaling)
TARGETS = {"grads": 1.3, "self": 60.0, "influence": 60.0, "cache": 2.0}  # ratio; seconds; seconds; seconds


@dataclass
class Row:
    section: str
    name: str
    wall_s: float
    cpu_s: float
    n: int                        # training images (or images of the gradient pass)
    ratio: float | None = None    # cpu s / the raw forward+backward's cpu s over the same images
    target: str = ""
    met: bool | None = None       # by cpu_s / TARGET_CORES for seconds, by the cpu-s ratio for grads
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cpu_wall(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else float("nan")


ROWS: list[Row] = []
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def measure(fn: Callable[[], object]) -> tuple[float, float, object]:
    """``(wall s, cpu s, result)`` of one call."""
    sync()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0, out


def interleaved(fns: list[Callable[[], object]], repeat: int) -> list[tuple[float, float]]:
    """Median ``(wall, cpu)`` of each fn after a warm-up each, rounds interleaved so load bursts hit all
    (captum_compare's timer, on this run's device)."""
    from captum_compare import median_times  # captum itself is imported only by its own sections

    return median_times(fns, DEVICE, repeat)


def add(row: Row) -> Row:
    ROWS.append(row)
    ratio = f"{row.ratio:6.2f}x" if row.ratio is not None else "       "
    met = {True: "met", False: "MISSED", None: ""}[row.met]
    print(f"{row.section:9s} {row.name:44s} wall {row.wall_s:8.2f} s  cpu {row.cpu_s:8.2f} s  cpu/wall "
          f"{row.cpu_wall:4.2f}  {ratio}  {row.target:10s} {met:6s} {row.note}", flush=True)
    return row


# ---------------------------------------------------------------------- the reference and the gradient paths

def raw_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    """The reference: batched forward + backward of the summed cross-entropy, parameter gradients discarded."""
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(0, len(x), batch):
        loss = F.cross_entropy(model(x[i:i + batch]), y[i:i + batch], reduction="sum")
        torch.autograd.grad(loss, params)


def hook_grads(problem: Problem, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """Per-example gradients ``[n, P]`` of Conv2d/Linear parameters from one batched backward per chunk.

    Each layer's input ``a`` and output gradient ``s`` are recorded; the per-example weight gradient is
    ``s_n a_n^T`` (a ``bmm`` over the unfolded patches for a convolution: Opacus' rule), the bias gradient
    ``s_n`` summed over positions. The backward asks for the first layer's weight only, so no batched weight
    gradient is computed for the others.
    """
    modules = problem.modules()
    first = next(iter(modules.values())).weight
    out = torch.empty(len(x), problem.n_params, device=x.device, dtype=problem.dtype)
    for i in range(0, len(x), batch):
        with layer_io(problem.network, modules) as io:
            loss = F.cross_entropy(problem.forward(x[i:i + batch]), y[i:i + batch], reduction="sum")
            torch.autograd.grad(loss, [first])
        parts = {}
        for name, m in modules.items():
            a, s = io.inputs[name][0], io.gradients[name][0]
            if isinstance(m, nn.Conv2d):
                a = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)      # [b, in*kh*kw, T]
                s = s.flatten(2)                                                       # [b, out, T]
                parts[f"{name}.weight"] = torch.bmm(s, a.transpose(1, 2))
                parts[f"{name}.bias"] = s.sum(2)
            else:
                parts[f"{name}.weight"] = s.unsqueeze(2) * a.unsqueeze(1)
                parts[f"{name}.bias"] = s
        out[i:i + batch] = problem.join(parts)
    return out


def conv_linear(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear parameters (the ones ekfac supports)."""
    from underhood.core.names import named_layers

    layers = [n for n, m in named_layers(model).items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return inf.select_params(model, layers)


def bench_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeat: int) -> float:
    """Per-example gradients vs the raw pass; returns the raw pass's best CPU seconds per image."""
    with evaluating(model):
        problem = Problem(model, None)
        chosen = problem.chunk(x)
        sizes = sorted({chosen, 8, 16, 32, 64, 128} - {0})
        best_raw = float("inf")
        results = {}
        for b in sizes:
            problem._batch_size = b
            (rw, rc), (gw, gc) = interleaved([lambda b=b: raw_pass(model, x, y, b), lambda: problem.grads(x, y)],
                                             repeat)
            best_raw = min(best_raw, rc / len(x))
            results[b] = (gw, gc)
            add(Row("grads", f"raw fwd+bwd, batch {b}", rw, rc, len(x), note="reference"))
            add(Row("grads", f"per-example vmap, all params, batch {b}{' (chosen)' if b == chosen else ''}", gw, gc,
                    len(x), ratio=gc / rc, target="<= 1.3x", met=gc / rc <= TARGETS["grads"],
                    note=f"ratio of cpu s; wall ratio {gw / rw:.2f}x"))
        fastest = min(results, key=lambda b: results[b][1])
        print(f"fastest per-example batch size (cpu s): {fastest}; the Problem chooses {chosen}", flush=True)

        names = conv_linear(model)
        lin = Problem(model, names)
        ref = lin.grads(x[:4], y[:4])
        err = float((hook_grads(lin, x[:4], y[:4], 4) - ref).abs().max() / ref.abs().max())
        for b in sorted({chosen, fastest, 64}):
            lin._batch_size = b
            (rw, rc), (vw, vc), (hw, hc) = interleaved(
                [lambda b=b: raw_pass(model, x, y, b), lambda: lin.grads(x, y), lambda b=b: hook_grads(lin, x, y, b)],
                repeat)
            add(Row("grads", f"per-example vmap, conv+linear, batch {b}", vw, vc, len(x), ratio=vc / rc,
                    target="<= 1.3x", met=vc / rc <= TARGETS["grads"], note=f"raw cpu {rc:.2f} s"))
            add(Row("grads", f"per-example hooks+bmm, conv+linear, batch {b}", hw, hc, len(x), ratio=hc / rc,
                    target="<= 1.3x", met=hc / rc <= TARGETS["grads"],
                    note=f"max rel. error vs vmap {err:.1e}"))
        problem._batch_size = None
    return best_raw


# ---------------------------------------------------------------------- the API's targets

def seconds_row(section: str, name: str, wall: float, cpu: float, n: int, raw_per_image: float, threads: int,
                note: str = "", **extra: object) -> Row:
    target = TARGETS[section]
    est = cpu / TARGET_CORES
    return add(Row(section, name, wall, cpu, n, ratio=cpu / (raw_per_image * n) if raw_per_image else None,
                   target=f"<= {target:g} s", met=est <= target,
                   note=f"~{est:.1f} s on 2 free cores (cpu/2); {note}".rstrip("; "), extra=dict(extra)))


def bench_self(model, train, names, raw_per_image, threads) -> None:
    n = len(train.labels)
    for method, params in (("ekfac", names), ("tracin", None)):
        w, c, r = measure(lambda m=method, p=params: inf.self_influence(model, train, method=m, params=p,
                                                                        progress=False))
        note = "projection= is not an argument of self_influence" if method == "tracin" else ""
        seconds_row("self", f"self_influence {method} ({len(r.params)} tensors)", w, c, n, raw_per_image, threads,
                    note, settings={k: v for k, v in r.settings.items() if isinstance(v, (int, float, str, bool))})


def bench_influence(model, train, queries, names, raw_per_image, threads, cache: Path | None, quick: bool,
                    skip: list[str]) -> None:
    n, q = len(train.labels), len(queries.labels)
    runs = [("ekfac", dict(method="ekfac", params=names)),
            ("tracin projection=512", dict(method="tracin", projection=512, cache=cache and cache / "tracin")),
            ("cg head", dict(method="cg", params="classifier", cache=cache and cache / "cg")),
            ("exact head", dict(method="exact", params="classifier", cache=cache and cache / "exact"))]
    for label, kw in [r for r in runs if not any(w in r[0].split() for w in skip)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, c, r = measure(lambda kw=kw: inf.influence(model, train, queries, progress=False, fragility=False, **kw))
        seconds_row("influence", f"{q} x {n} {label}", w, c, n, raw_per_image, threads, "fragility=False")
    if quick:  # the default fragility check costs the top Hessian eigenvalue when damping=0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, c, _ = measure(lambda: inf.influence(model, train, queries, method="ekfac", params=names,
                                                    progress=False))
        seconds_row("influence", f"{q} x {n} ekfac, fragility=True damping=0", w, c, n, raw_per_image, threads)


def bench_cache(model, train, queries2, names, raw_per_image, threads, cache: Path, quick: bool,
                skip: list[str]) -> None:
    """The second call against a cache the influence section filled (other queries)."""
    n = len(train.labels)
    runs = [("tracin projection=512", dict(method="tracin", projection=512, cache=cache / "tracin")),
            ("cg head", dict(method="cg", params="classifier", cache=cache / "cg")),
            ("exact head", dict(method="exact", params="classifier", cache=cache / "exact"))]
    if quick:
        runs.append(("ekfac", dict(method="ekfac", params=names, cache=cache / "ekfac")))
        inf.influence(model, train, queries2, progress=False, fragility=False, **runs[-1][1])  # fill it
    for label, kw in [r for r in runs if not any(w in r[0].split() for w in skip)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w, c, r = measure(lambda kw=kw: inf.influence(model, train, queries2, progress=False, fragility=False,
                                                          **kw))
        seconds_row("cache", f"new query, warm cache, {label}", w, c, n, raw_per_image, threads,
                    f"{len(queries2.labels)} queries", cached={k: v for k, v in r.settings.items()
                                                               if k.startswith("cached")})
    # where a warm call's time goes, outside the estimator: hashing the training set, the data, the head features
    from underhood.influence.api import _digest

    w, c, _ = measure(lambda: _digest(train.images, train.labels))
    add(Row("cache", "  of which: hash of the training set (_digest)", w, c, n, note="every call, also warm"))
    with evaluating(model):
        head = Problem(model, "classifier")
        w, c, _ = measure(lambda: head.prepare(train.images))
    add(Row("cache", "  of which: head features (Problem.prepare)", w, c, n, note="every call, head methods"))


def bench_pairwise(model, n: int, q: int, names, threads) -> None:
    data = underhood.datasets.shapes(n, seed=0)
    queries = underhood.datasets.shapes(q, seed=1)
    train = (data.images.to(DEVICE), data.labels.to(DEVICE))
    qs = (queries.images.to(DEVICE), queries.labels.to(DEVICE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w, c, r = measure(lambda: inf.influence(model, train, qs, method="ekfac", params=names, progress=False,
                                                fragility=False))
    add(Row("pairwise", f"{n} x {q} ekfac pairwise scores ({DEVICE})", w, c, n,
            note="Kronfluence: 50,000 x 2,000 in 106 s on an A100 (its model, not ours)",
            extra={"scores_shape": list(r.scores.shape)}))


def main(argv: list[str]) -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--quick", action="store_true", help="1,000 images, 20 queries, fewer repeats")
    parser.add_argument("--n", type=int, default=None, help="training images (default 10,000; quick 1,000)")
    parser.add_argument("--queries", type=int, default=None, help="queries (default 100; quick 20)")
    parser.add_argument("--sections", nargs="*", default=None, choices=SECTIONS)
    parser.add_argument("--pairwise", nargs=2, type=int, default=None, metavar=("N", "Q"),
                        help="pairwise section's sizes (default 50000 2000, on cuda only)")
    parser.add_argument("--skip", nargs="*", default=[], help="skip the influence/cache runs whose label has "
                                                                 "one of these words (e.g. cg: 1,000 CG steps)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/influence-DEVICE.json; "
                                                    "quick runs write none unless given)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    from underhood.core.device import resolve_device

    DEVICE = resolve_device(args.device)
    torch.set_num_threads(int(os.environ.get("UNDERHOOD_THREADS", "2")))
    threads = torch.get_num_threads()
    n = args.n or (1000 if args.quick else 10000)
    q = args.queries or (20 if args.quick else 100)
    sections = args.sections or [s for s in SECTIONS if s != "pairwise" or DEVICE.type == "cuda" or args.pairwise]
    env = {"underhood": underhood.__version__, "torch": torch.__version__, "device": str(DEVICE),
           "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None, "threads": threads,
           "cpus": os.cpu_count(), "load_average_1min_start": os.getloadavg()[0], "n": n, "queries": q,
           "quick": args.quick}
    print(json.dumps(env), flush=True)

    model = underhood.load_model("shapes", device=DEVICE)
    names = conv_linear(model)
    t0 = time.perf_counter()
    data = underhood.datasets.shapes(n, seed=0)
    train = (data.images.to(DEVICE), data.labels.to(DEVICE))
    qa, qb = underhood.datasets.shapes(q, seed=1), underhood.datasets.shapes(q, seed=2)
    queries, queries2 = (qa.images.to(DEVICE), qa.labels.to(DEVICE)), (qb.images.to(DEVICE), qb.labels.to(DEVICE))
    print(f"data: {time.perf_counter() - t0:.1f} s", flush=True)

    class Set:  # the benches read .images/.labels
        def __init__(self, pair):
            self.images, self.labels = pair

    train_s, q_s, q2_s = Set(train), Set(queries), Set(queries2)
    grad_n = 128
    raw_per_image = None
    if "grads" in sections or {"self", "influence", "cache"} & set(sections):
        if "grads" in sections:
            raw_per_image = bench_grads(model, train[0][:grad_n], train[1][:grad_n], 2 if args.quick else 3)
        else:
            _, c = interleaved([lambda: raw_pass(model, train[0][:grad_n], train[1][:grad_n], 32)], 2)[0]
            raw_per_image = c / grad_n
        add(Row("grads", "raw fwd+bwd per image (best batch, cpu s)", float("nan"), raw_per_image, 1,
                note=f"x {n} images = {raw_per_image * n:.1f} s, the reference of the rows below"))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        if "self" in sections:
            bench_self(model, train_s, names, raw_per_image, threads)
        if "influence" in sections or "cache" in sections:
            bench_influence(model, train_s, q_s, names, raw_per_image, threads, cache, args.quick, args.skip)
        if "cache" in sections:
            bench_cache(model, train_s, q2_s, names, raw_per_image, threads, cache, args.quick, args.skip)
    if "pairwise" in sections:
        pn, pq = args.pairwise or (50000, 2000)
        bench_pairwise(model, pn, pq, names, threads)
    env["load_average_1min_end"] = os.getloadavg()[0]
    out = args.out or (None if args.quick else str(Path(__file__).parent / f"influence-{DEVICE.type}.json"))
    if out:
        rows = [{**asdict(r), "cpu_wall": r.cpu_wall} for r in ROWS]
        Path(out).write_text(json.dumps({"environment": env, "rows": rows}, indent=1, default=str) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

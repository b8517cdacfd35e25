"""The ``influence`` command: which training images made a prediction (Koh & Liang 2017).

Three modes:

- ``underhood influence IMAGE...``: for each query image, its most helpful and most harmful training
  images (the lecture figure), the loss change measured by retraining without the top few, a CSV of the
  top ones, and every score through the result's ``save()``;
- ``underhood influence --self``: the mislabel finder on the training set (self-influence ranking beside
  the training-loss ranking, a figure and a CSV);
- ``underhood influence --validate``: the estimators against retraining
  (:func:`underhood.influence.validation.validate`): its summary table and figures.

A score is the predicted change of the query's loss if that training image were removed: positive =
helpful. The training-gradient pass shards over ``torchrun`` processes and resumes like ``dissect``
(:mod:`underhood.core.distributed`); the fitted estimator and the training gradients are cached (default
``<out>/shards/cache``), so a new query on the same training set costs a fraction of the first.
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from .common import (
    Add,
    class_names,
    final_dir,
    load_images,
    model_from,
    out_dir,
    parse_classes,
    resolved_device,
    run_shards,
    save_result,
)
from .options import count, data_spec, image_file, names, natural, one_of, weight

__all__ = ["EXAMPLES", "METHODS", "register"]

EXAMPLES = {
    "influence": "underhood influence samples/star.png --model shapes --train shapes:5000   # helpful and harmful\n"
                 "  underhood influence samples/star.png samples/ring.png --method exact --damping 0.01 --retrain 3\n"
                 "  underhood influence --self --train shapes:2000 --k 16        # the mislabel finder\n"
                 "  underhood influence --validate --tier 1 2                     # the estimators against retraining\n"
                 "  torchrun --nproc-per-node 2 -m underhood influence samples/star.png --train shapes:20000\n"
                 "  (images: underhood samples --out samples)",
}

# underhood.influence.METHODS (importing it would load torch when the parser is built); a test checks they agree
METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin", "grad_dot", "grad_cos", "relatif")
HESSIAN = ("exact", "cg", "lissa", "arnoldi", "ekfac")
AUTO_EXACT = 2000        # --method auto: exact up to this many parameters, else cg
DEFAULT_TRAIN = 5000     # built-in shapes training images when --train is not given
MIN_VALIDATE = 20        # --validate --n-train: fewest training images a tier can run on


# ----------------------------------------------------------------------------- checks before any work


def _mode(args: argparse.Namespace) -> str:
    return "validate" if args.validate else "self" if args.self_influence else "queries"


def check_influence(args: argparse.Namespace) -> None:
    """Before any work: exactly one mode, and the options that belong to it."""
    modes = [m for m, on in (("IMAGE", bool(args.images)), ("--self", args.self_influence),
                             ("--validate", args.validate)) if on]
    if not modes:
        raise InputError("images: give query image files, --self (the mislabel finder on --train) or --validate")
    if len(modes) > 1:
        raise InputError(f"{modes[1] if modes[0] == 'IMAGE' else modes[0]}: choose one of query images, --self and "
                         f"--validate (got {' and '.join(modes)})")
    mode = _mode(args)
    if mode != "validate":
        for option, value in (("--tier", args.tier), ("--n-train", args.n_train)):
            if value is not None:
                raise InputError(f"{option}: only --validate takes it; drop it or add --validate")
    if mode == "validate":
        if args.n_train is not None and args.n_train < MIN_VALIDATE:
            raise InputError(f"--n-train: the validation needs at least {MIN_VALIDATE} training images per tier, got "
                             f"{args.n_train}")
        for option, value in (("--train", args.train), ("--params", args.params), ("--label", args.label),
                              ("--retrain", args.retrain), ("--cache", args.cache), ("--projection", args.projection)):
            if value is not None:
                raise InputError(f"{option}: --validate runs its own fixed experiments; drop {option}")
    if mode == "self":
        for option, value in (("--label", args.label), ("--retrain", args.retrain)):
            if value is not None:
                raise InputError(f"{option}: only query images take it; drop it with --self")
        if args.method == "grad_cos":
            raise InputError("--method: grad_cos gives every image a self-influence of 1; use exact, cg, lissa, "
                             "arnoldi, ekfac, tracin or grad_dot with --self")
    if args.cache is not None and args.no_cache:
        raise InputError("--cache: --no-cache turns the cache off; give one of them")
    if args.cache is not None and Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise InputError(f"--cache: {args.cache!r} is a file; give a folder")
    if args.projection is not None and args.method == "exact":
        raise InputError("--projection: projects the training gradients of cg, lissa, arnoldi, ekfac, tracin and "
                         "the similarity methods; exact keeps them whole")


# ----------------------------------------------------------------------------- the pieces


def default_train(model) -> str:
    """The model's own training data: ``digits:train`` for the digits model, else built-in shapes."""
    meta = getattr(model, "meta", {}) or {}
    return "digits:train" if meta.get("dataset") == "digits" else f"shapes:{DEFAULT_TRAIN}"


def training_set(args: argparse.Namespace, model):
    """``--train`` at the model's input size: built-in shapes from the training seed 0 (the images the built-in
    models train on first), digits' training split, or a folder with one sub-folder per class."""
    from ..data import from_spec

    spec = args.train or default_train(model)
    size = getattr(model, "input_size", None)
    shapes = spec.partition(":")[0] in ("shapes", "shapes-spurious")
    data = from_spec(spec, size=tuple(size[1:]) if size else None, channels=size[0] if size else None,
                     seed=0 if shapes else None)
    if len(data) == 0:
        raise InputError(f"--train: {spec!r} has no images; give a dataset with at least one labelled image")
    if not data.info.get("labelled", True):
        raise InputError(f"--train: {spec!r} holds images without labels; influence needs labels: one sub-folder "
                         "per class")
    return data, spec


def head_name(model, example=None) -> str:
    """The model's head (the default ``--params``): the last ``nn.Linear`` the forward pass of ``example`` (one input)
    runs, or the last in module order without one."""
    from ..influence.problem import head_layer

    name = head_layer(model, example)
    if name is None:
        raise InputError("--params: the model has no nn.Linear head to default to; name the parameters, e.g. "
                         "--params layer4 or --params all")
    return name


def chosen_params(args: argparse.Namespace, model, example=None) -> tuple[str | list[str] | None, list[str], int]:
    """``(params for the library, parameter names, parameter count)`` of ``--params`` (default: the head)."""
    from ..core.names import inner
    from ..influence import select_params

    given = [n.strip() for n in args.params.split(",") if n.strip()] if args.params else [head_name(model, example)]
    params: str | list[str] | None = None if given == ["all"] else given[0] if len(given) == 1 else given
    try:
        selected = select_params(model, params)
    except InputError as exc:
        text = str(exc)
        raise InputError("--params" + text[len("params"):] if text.startswith("params") else text) from None
    sizes = dict(inner(model).named_parameters())
    return params, selected, sum(sizes[n].numel() for n in selected)


def method_for(args: argparse.Namespace, n_params: int) -> str:
    if args.method != "auto":
        return args.method
    return "exact" if n_params <= AUTO_EXACT and args.projection is None else "cg"


def cache_dir(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    return Path(args.cache) if args.cache else final_dir(args, "influence") / "shards" / "cache"


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _job(args: argparse.Namespace, name: str, model, n: int, config: dict[str, Any]):
    from ..core.distributed import ShardedJob, model_digest

    # in the result folder itself (not the temporary one): an interrupted run leaves them for the next
    return ShardedJob(final_dir(args, "influence"), name, {"model": args.model, "weights": model_digest(model),
                                                           **config}, n, args.shard_size, fresh=args.fresh)


def _caught(run: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``run()`` and the library's warnings it raised, as one-line texts (printed by the command)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        value = run()
    out = [" ".join(str(w.message).split()) for w in seen if not issubclass(w.category, DeprecationWarning)]
    return value, list(dict.fromkeys(out))


def _name(classes: list[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else str(k)


def _estimator(args: argparse.Namespace, model, train, world):
    from ..influence import Influence

    device = next(iter(model.parameters())).device
    params, selected, n_params = chosen_params(args, model, train.images[:1].to(device))
    method = method_for(args, n_params)
    est = Influence(model, train, method=method, params=params, damping=args.damping, seed=args.seed,
                    progress=not args.no_progress and world.main, cache=cache_dir(args), projection=args.projection)
    return est, params, selected


# ----------------------------------------------------------------------------- the modes


def cmd_influence(args: argparse.Namespace) -> None:
    {"queries": _queries, "self": _self, "validate": _validate}[_mode(args)](args)


def _queries(args: argparse.Namespace) -> None:
    import torch

    from ..core.distributed import session
    from ..core.hooks import evaluating
    from ..influence.retrain import NEWTON_LIMIT

    with session(resolved_device(args)) as world:
        model = model_from(args)
        device = next(iter(model.parameters())).device
        train, spec = training_set(args, model)
        classes = class_names(model) or list(train.classes)
        images = load_images(args.images, model).to(device)
        with evaluating(model), torch.no_grad():
            predicted = model(images).argmax(1)
        labels = predicted.clone()
        if args.label is not None:
            ids = parse_classes(args.label, model, "--label")
            if len(ids) not in (1, len(images)):
                raise InputError(f"--label: {len(ids)} labels for {len(images)} images; give one, or one per image")
            labels = torch.tensor(ids * len(images) if len(ids) == 1 else ids, device=device)
        (est, params, selected), notes = _caught(lambda: _estimator(args, model, train, world))
        prepared, more = _caught(lambda: est.prepare_queries((images, labels)))
        notes += more
        config = {"train": spec, "n": est.n, "method": est.method, "params": selected, "damping": args.damping,
                  "projection": args.projection, "seed": args.seed, "queries": _digest(images, labels)}
        job = _job(args, "influence", model, est.n, config)
        parts = run_shards(job, lambda part: {"scores": est.score_part(prepared.vectors, part.start, part.stop)},
                           world, args)
        if parts is None:
            return
        every = torch.cat([p["scores"] for p in parts], 1).to(device)
        result, more = _caught(lambda: est.result(prepared, every, (images, labels)))
        notes += more
    k = min(args.k or 8, est.n)
    actual = _retrain(args, model, train, images, labels, result, params, est.problem.n_params, NEWTON_LIMIT, notes)
    _write_queries(args, result, train, images, classes, k, actual, spec, world.size, job)
    for note in result.warnings + [n for n in notes if n not in result.warnings]:
        print(f"warning: {note}")


def _retrain(args, model, train, images, labels, result, params, n_params: int, limit: int,
             notes: list[str]) -> dict[int, dict[int, float]]:
    """``{query: {position among its helpful images: actual loss change}}`` for the top ``--retrain``."""
    import torch

    from ..influence.retrain import loo_change

    r = 3 if args.retrain is None else args.retrain
    if r == 0:
        return {}
    if args.retrain is None and n_params > limit:
        notes.append(f"no retraining: {n_params:,} parameters; single-point leave-one-out on a deep network is "
                     "dominated by retraining noise (pass --retrain K to run it anyway)")
        return {}
    r = min(r, result.n_train)
    tops = [result.helpful(q, r).tolist() for q in range(len(result.scores))]
    drop = sorted({i for top in tops for i in top})
    change, more = _caught(lambda: loo_change(model, train, (images, labels), torch.tensor(drop), params=params,
                                              damping=args.damping, progress=not args.no_progress))
    notes += more
    row = {i: n for n, i in enumerate(drop)}
    return {q: {p: float(change[row[i], q]) for p, i in enumerate(top)} for q, top in enumerate(tops)}


def _write_queries(args, result, train, images, classes, k, actual, spec, processes, job) -> None:
    import csv
    import io

    from ..core.io import write_text
    from ..influence.plots import influence_plot
    from ..viz import save_figure

    out = out_dir(args, "influence")
    files = []
    preds = result.query_predictions.tolist()
    rows = []
    for q, path in enumerate(args.images):
        name = f"influence-{q:03d}.png"
        fig = influence_plot(result, train, (images.cpu(), result.query_labels.cpu()), q=q, k=k,
                             actual=actual.get(q), predicted=preds[q], classes=classes,
                             title=f"{Path(path).name}: which training images made this prediction ({result.method})")
        save_figure(fig, out / name, dpi=110)
        files.append(name)
        for kind, idx in (("helpful", result.helpful(q, k)), ("harmful", result.harmful(q, k))):
            for rank, i in enumerate(idx.tolist()):
                measured = actual.get(q, {}).get(rank) if kind == "helpful" else None
                rows.append([str(path), kind, rank + 1, i, _name(classes, int(result.train_labels[i])),
                             f"{float(result.scores[q, i]):.6g}", "" if measured is None else f"{measured:.6g}"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["query", "kind", "rank", "train_index", "train_label", "score", "actual_loss_change"])
    writer.writerows(rows)
    write_text(out / "top.csv", buf.getvalue())
    files.append("top.csv")
    save_result(result, out, "influence", files, model=args.model, train=spec, images=[str(p) for p in args.images],
                method=result.method, params=result.params, damping=result.damping, seed=args.seed, k=k,
                retrain=args.retrain, processes=processes, shards=len(job.slices), resumed_shards=job.resumed,
                actual={str(q): {str(p): v for p, v in a.items()} for q, a in actual.items()})
    for q, path in enumerate(args.images):
        label, pred = _name(classes, int(result.query_labels[q])), _name(classes, preds[q])
        best = result.helpful(q, 1).tolist()[0]
        worst = result.harmful(q, 1).tolist()[0]
        measured = actual.get(q, {}).get(0)
        print(f"{path}: label {label}, predicted {pred}; most helpful: training image {best} "
              f"({_name(classes, int(result.train_labels[best]))}, score {float(result.scores[q, best]):+.3g}"
              + ("" if measured is None else f", actual {measured:+.3g}")
              + f"); most harmful: {worst} ({_name(classes, int(result.train_labels[worst]))}, "
              f"score {float(result.scores[q, worst]):+.3g})")
    over = ", ".join(result.params) if len(result.params) <= 4 else \
        f"{len(result.params)} parameter tensors ({result.settings.get('n_params', 0):,} parameters)"
    print(f"{result.method} over {over} on {result.n_train} training images ({spec}); "
          f"written to {final_dir(args, 'influence').resolve()}")


def _self(args: argparse.Namespace) -> None:
    import csv
    import io

    import torch

    from ..core.distributed import session
    from ..core.hooks import evaluating
    from ..core.io import write_text
    from ..influence import SelfInfluenceResult
    from ..influence.plots import self_influence_plot
    from ..viz import save_figure

    with session(resolved_device(args)) as world:
        model = model_from(args)
        train, spec = training_set(args, model)
        classes = class_names(model) or list(train.classes)
        (est, _, selected), notes = _caught(lambda: _estimator(args, model, train, world))
        config = {"train": spec, "n": est.n, "method": est.method, "params": selected, "damping": args.damping,
                  "seed": args.seed}
        job = _job(args, "self-influence", model, est.n, config)
        parts, more = _caught(lambda: run_shards(job, lambda part: {"scores": est.self_scores(part.start, part.stop)},
                                                 world, args))
        notes += more
        if parts is None:
            return
        with evaluating(model), torch.no_grad():
            losses = est.problem.losses(est.inputs, est.labels)
            predicted = torch.cat([est.problem.forward(est.inputs[s:s + 1024]).argmax(1)
                                   for s in range(0, est.n, 1024)])
    scores = torch.cat([p["scores"] for p in parts]).to(losses.device)
    result = SelfInfluenceResult(scores=scores, losses=losses, labels=est.labels, method=est.method,
                                 params=list(est.problem.names), damping=est.damping, settings=est.settings())
    k = min(args.k or 16, est.n)
    out = out_dir(args, "influence")
    save_figure(self_influence_plot(result, train, k=k, predicted=predicted, classes=classes),
                out / "self_influence.png", dpi=110)
    order = scores.argsort(descending=True).tolist()
    loss_rank = {i: r + 1 for r, i in enumerate(losses.argsort(descending=True).tolist())}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "train_index", "label", "predicted", "self_influence", "loss", "loss_rank"])
    for r, i in enumerate(order):
        writer.writerow([r + 1, i, _name(classes, int(est.labels[i])), _name(classes, int(predicted[i])),
                         f"{float(scores[i]):.6g}", f"{float(losses[i]):.6g}", loss_rank[i]])
    write_text(out / "self_influence.csv", buf.getvalue())
    disagree = int((predicted != est.labels).sum())
    top_k = order[:k]
    save_result(result, out, "influence", ["self_influence.png", "self_influence.csv"], model=args.model, train=spec,
                mode="self", method=result.method, params=result.params, damping=result.damping, seed=args.seed, k=k,
                processes=world.size, shards=len(job.slices), resumed_shards=job.resumed)
    for note in list(dict.fromkeys(notes + est.notes)):
        print(f"warning: {note}")
    print(f"self-influence ({result.method}) of {est.n} training images ({spec}): the model disagrees with "
          f"{disagree} training labels, {sum(int(predicted[i] != est.labels[i]) for i in top_k)} of them among the "
          f"{k} highest; ranking written to {(final_dir(args, 'influence') / 'self_influence.csv').resolve()}")


def _validate(args: argparse.Namespace) -> None:
    from ..core.io import write_text
    from ..influence.validation import validate
    from ..viz import save_figure

    tiers = args.tier or [1, 2]
    options: dict[str, dict[str, Any]] = {}
    if args.n_train is not None:
        options = {"convex_loo": {"n_train": args.n_train, "n_extreme": min(20, args.n_train // 2)},
                   "dog_fish": {"n_train": args.n_train}, "lds": {"n_train": args.n_train},
                   "mislabel": {"n_train": args.n_train}}
        options = {k: v for k, v in options.items() if k == "mislabel" or k in [_TIERS[t] for t in tiers]}
    result, notes = _caught(lambda: validate(tiers, mislabels=True, seed=args.seed, progress=not args.no_progress,
                                             **options))
    out = out_dir(args, "influence")
    files = []
    for name in result.items:
        save_figure(result.figure(name), out / f"{name}.png", dpi=110)
        files.append(f"{name}.png")
    table = result.table()
    write_text(out / "validation.md", table + "\n")
    save_result(result, out, "influence", [*files, "validation.md"], mode="validate", tiers=sorted(set(tiers)),
                n_train=args.n_train, seed=args.seed)
    for note in notes:
        print(f"warning: {note}")
    print(table)
    print(f"written to {final_dir(args, 'influence').resolve()}")


_TIERS = {1: "convex_loo", 2: "dog_fish", 3: "lds"}


# ----------------------------------------------------------------------------- the parser


def register(add: Add) -> None:
    """Add the command to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("influence", cmd_influence, "which training images made a prediction: helpful and harmful ones, the "
                                        "mislabel finder, and the validation against retraining",
            check=check_influence)
    p.add_argument("images", nargs="*", type=image_file, help="query image files")
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--train", type=data_spec,
                   help=f"training images: shapes:N (built-in, training seed 0), digits:train or a folder with one "
                        f"sub-folder per class (default: digits:train for the digits model, else "
                        f"shapes:{DEFAULT_TRAIN})")
    p.add_argument("--self", dest="self_influence", action="store_true",
                   help="rank the training images by self-influence (the mislabel finder), beside their loss")
    p.add_argument("--validate", action="store_true",
                   help="check the estimators against retraining (tiers 1-3) and the mislabel finder")
    p.add_argument("--method", default="auto", type=one_of(("auto",) + METHODS, "influence method", single=True),
                   help=f"auto (exact up to {AUTO_EXACT:,} parameters without --projection, else cg), "
                        f"{', '.join(METHODS)}")
    p.add_argument("--params", type=names,
                   help="parameters influence is measured over: module or parameter names, comma-separated, or all "
                        "(default: the model's head: the last nn.Linear its forward pass runs)")
    p.add_argument("--damping", type=weight(), default=0.0,
                   help="added to the Hessian's diagonal (default 0; raise it when the scores are fragile)")
    p.add_argument("--k", type=count(), help="training images shown per group (default 8; 16 with --self)")
    p.add_argument("--label", help="the queries' classes (index or name; one, or one per image); default: the "
                                   "model's predictions (explaining the decision)")
    p.add_argument("--retrain", type=natural(),
                   help="measure the actual loss change of the top K helpful images by retraining the parameters "
                        "without each (default 3 for a head, 0 beyond 2,000 parameters)")
    p.add_argument("--projection", type=count(), help="project training gradients to D dimensions (cg, ekfac, tracin)")
    p.add_argument("--cache", help="folder for the fitted estimator and the training gradients (default "
                                   "<out>/shards/cache)")
    p.add_argument("--no-cache", action="store_true", help="keep nothing between runs")
    p.add_argument("--tier", type=int, nargs="+", choices=[1, 2, 3],
                   help="with --validate: 1 convex leave-one-out, 2 dog-vs-fish, 3 LDS (slow); default 1 2")
    p.add_argument("--n-train", type=count(), help="with --validate: training images per tier (default: each tier's)")
    p.add_argument("--seed", type=natural(), default=0)
    p.add_argument("--shard-size", type=count(), default=1024,
                   help="training images per shard: the unit of work of each process and of resuming (default 1024)")
    p.add_argument("--fresh", action="store_true", help="discard finished shards of an earlier run in --out")
    p.add_argument("--no-progress", action="store_true")

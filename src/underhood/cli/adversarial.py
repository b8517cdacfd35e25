"""Commands of the adversarial family: ``attack`` and ``robustness`` (``train --adversarial`` is in
:mod:`underhood.cli.models`).

Each writes one figure, a JSON summary and, through the result's ``save()``, ``result.safetensors``
and ``manifest.json`` under ``--out``. Which attacks take a budget, a target or a norm is read from
the family's registry (:mod:`underhood.adversarial.registry`), never from their names.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from typing import TYPE_CHECKING

from ..core.errors import InputError
from .common import (
    Add,
    class_names,
    dataset_from,
    final_dir,
    load_images,
    model_from,
    out_dir,
    parse_classes,
    save_images,
    save_result,
)
from .options import budget, budgets, count, data_spec, eps_grid, eps_value, image_file, natural, one_of, size

if TYPE_CHECKING:
    from ..adversarial.registry import Attack

__all__ = ["EXAMPLES", "PER_IMAGE", "SWEEPABLE", "eps_grid", "register"]

EXAMPLES = {
    "attack": "underhood attack samples/star.png --model shapes --method pgd --eps 8/255   # the three-panel figure\n"
              "  underhood attack samples/star.png --method fgsm --eps 4/255 --target circle\n"
              "  underhood attack samples/star.png samples/ring.png --method cw   # minimal perturbations: no --eps\n"
              "  underhood attack samples/star.png --method one_pixel --pixels 3   # black-box\n"
              "  (images: underhood samples --out samples)",
    "robustness": "underhood robustness --model shapes --attack pgd --eps 0:16/255:9\n"
                  "  underhood robustness --model shapes,shapes-robust --eps 0:16/255:9 --n 500\n"
                  "  underhood robustness --model shapes --attack deepfool    # minimal norms: the whole curve",
}

# The registry's names, for --help and the choices (importing the registry would load torch); a test checks that
# they equal names(per_image=True) and names(sweepable=True).
PER_IMAGE = ("gradient_ascent", "fgsm", "pgd", "noise", "deepfool", "cw", "lbfgs", "one_pixel")
SWEEPABLE = ("fgsm", "pgd", "noise", "deepfool", "cw", "lbfgs")


def _per_image(value: str | None, model, n: int, option: str, what: str) -> list[int] | None:
    """One class (index or name) for all ``n`` images, or one per image; None when not given."""
    if value is None:
        return None
    ids = parse_classes(value, model, option)
    if len(ids) not in (1, n):
        raise InputError(f"{option}: {len(ids)} {what} for {n} images; give one, or one per image")
    return ids * n if len(ids) == 1 else ids


def _options(attack: Attack, args: argparse.Namespace) -> dict:
    """The command-line options the attack takes: those its function accepts, and ``--norm`` when it has a choice
    of norms."""
    accepted = inspect.signature(attack.fn).parameters
    wanted = {"steps": args.steps, "restarts": getattr(args, "restarts", None),
              "pixels": getattr(args, "pixels", None), "iterations": args.steps}  # one_pixel's generations
    options = {k: v for k, v in wanted.items() if v is not None and k in accepted}
    if args.norm is not None and attack.norm_option:
        options["norm"] = args.norm
    return options


def _or(names: tuple[str, ...]) -> str:
    """``"a, b or c"``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


def check_attack(args: argparse.Namespace) -> None:
    """Before any work: the options the attack takes (a budget, a norm, a target) and the budget's ceiling."""
    from ..adversarial.registry import entry, names

    e = entry(args.method)
    norm = args.norm or e.default_norm
    if args.norm is not None and e.norms is not None and args.norm not in e.norms:
        works = f"works in the {' or '.join(e.norms)} norm only" if e.norms else "bounds no norm"
        choices = _or(names(per_image=True, norm_option=True))
        raise InputError(f"--norm: {args.method} {works}; drop --norm or use {choices}")
    if not e.budget and args.eps is not None:
        why = "it finds minimal perturbations" if e.minimal else "its steps or pixels limit it"
        raise InputError(f"--eps: {args.method} takes no budget ({why}); drop --eps")
    if args.target is not None and not e.targeted:
        raise InputError(f"--target: {args.method} is untargeted; drop --target or use "
                         f"{_or(names(per_image=True, targeted=True))}")
    if e.budget:
        eps_value(args.eps or "8/255", norm)


def cmd_attack(args: argparse.Namespace) -> None:
    import torch

    from ..adversarial.registry import entry
    from ..core.device import model_device
    from ..core.io import write_text
    from ..viz import save_figure
    from ..viz.adversarial import attack_figure

    e = entry(args.method)
    norm = args.norm or e.default_norm
    model = model_from(args)
    images = load_images(args.images, model, args.size, need_size=True).to(model_device(model))
    classes = class_names(model)
    labels = _per_image(args.label, model, len(images), "--label", "labels")
    target = _per_image(args.target, model, len(images), "--target", "targets")
    options = _options(e, args)
    if e.budget:
        options["eps"] = eps_value(args.eps or "8/255", norm)
    if target is not None:
        options["target"] = target
    with torch.no_grad():
        clean_probs = model(images).float().softmax(1)
    if target is not None:
        reference = clean_probs.argmax(1).tolist() if labels is None else labels
        for path, t, ref in zip(args.images, target, reference):
            if t == ref:
                what = "true class (--label)" if labels is not None else "model's prediction"
                raise InputError(f"--target: {_name(classes, t)!r} is already the {what} for {path}; a targeted "
                                 "attack needs another class")
    result = e.fn(model, images, labels, seed=args.seed, **options)
    out = out_dir(args, "attack")
    files = save_images(out, result.adversarial, "adversarial")
    budget = f", ε = {options['eps'] * 255:.3g}/255" if "eps" in options and norm == "linf" else (
        f", ε = {options['eps']:.3g} (L2)" if "eps" in options else "")
    title = f"{args.method}{budget}: {int(result.success.sum())} of {len(result)} fooled"
    save_figure(attack_figure(images, result, classes=classes or None, clean_probs=clean_probs,
                              max_rows=len(images), title=title), out / "attack.png", dpi=120)
    rows = []
    for i, path in enumerate(args.images):
        rows.append({"image": str(path), "label": _name(classes, int(result.labels[i])),
                     "predicted": _name(classes, int(result.predicted[i])),
                     "confidence": float(result.confidence[i]), "success": bool(result.success[i]),
                     "linf": float(result.norms["linf"][i]), "l2": float(result.norms["l2"][i])})
    summary = {**result.scalars(), "images": rows,
               "info": {k: v for k, v in result.info.items() if isinstance(v, (int, float, str, bool))}}
    write_text(out / "attack.json", json.dumps(summary, indent=2) + "\n")
    save_result(result, out, "attack", ["attack.png", "attack.json", *files], model=args.model, method=args.method,
                images=[str(p) for p in args.images], seed=args.seed,
                **{k: v for k, v in options.items() if k != "target"},
                target=None if target is None else [_name(classes, t) for t in target])
    for row in rows:
        print(f"{row['image']}: {row['label']} -> {row['predicted']} ({row['confidence']:.0%})"
              f"{'  fooled' if row['success'] else '  not fooled'}, L-inf {row['linf'] * 255:.1f}/255, "
              f"L2 {row['l2']:.3f}")
    print(f"{title}; written to {final_dir(args, 'attack').resolve()}")


def _name(classes: list[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else str(k)


def check_robustness(args: argparse.Namespace) -> None:
    """Before any work: the models named, and the budgets within the norm's ceiling."""
    from ..adversarial.registry import entry

    if not [s for s in args.model.split(",") if s.strip()]:
        raise InputError("--model: name at least one model, e.g. --model shapes,shapes-robust")
    attack = entry(args.attack)
    if args.eps is not None or not attack.minimal:
        eps_grid(args.eps or "0:16/255:9", args.norm or attack.default_norm)


def cmd_robustness(args: argparse.Namespace) -> None:
    from ..adversarial import robustness_curve
    from ..adversarial.registry import entry
    from ..core.io import write_text
    from ..core.results import Collection
    from ..models.loading import load_model
    from ..viz import save_figure
    from ..viz.adversarial import norms_figure, robustness_figure

    attack = entry(args.attack)
    minimal = attack.minimal
    norm = args.norm or attack.default_norm
    grid = None if args.eps is None and minimal else eps_grid(args.eps or "0:16/255:9", norm)
    specs = [s.strip() for s in args.model.split(",") if s.strip()]
    if not specs:
        raise InputError("--model: name at least one model, e.g. --model shapes,shapes-robust")
    models = {spec: load_model(spec, device=args.device, trust=args.trust) for spec in specs}
    first = next(iter(models.values()))
    data = dataset_from(args, first, n=args.n)  # only the images used are made
    takes_steps = "steps" in inspect.signature(attack.fn).parameters  # noise has none
    options = {"steps": args.steps} if args.steps is not None and takes_steps else {}
    curves = {spec: robustness_curve(model, data, attack, grid, norm=norm, seed=args.seed,
                                     progress=not args.no_progress, **options) for spec, model in models.items()}
    out = out_dir(args, "robustness")
    classes = len(class_names(first)) or None
    title = f"{args.attack} on {len(data)} images"
    files = ["robustness.png", "robustness.json"]
    save_figure(robustness_figure(curves, title=title, chance=1 / classes if classes else None),
                out / "robustness.png", dpi=120)
    if minimal:
        save_figure(norms_figure({k: c.norms for k, c in curves.items()}, norm=norm, title=title),
                    out / "norms.png", dpi=120)
        files.append("norms.png")
    summary = {spec: {"attack": c.attack, "norm": c.norm, "clean_accuracy": c.clean_accuracy,
                      "eps": c.eps.tolist(), "accuracy": c.accuracy.tolist(),
                      **({} if math.isnan(c.median_norm()) else {"median_norm": c.median_norm()})}
               for spec, c in curves.items()}
    write_text(out / "robustness.json", json.dumps(summary, indent=2) + "\n")
    result = Collection(curves)  # keyed by model spec, one model or several: load() gives one type
    save_result(result, out, "robustness", files, model=args.model, attack=args.attack, norm=norm, n=len(data),
                data=args.data, seed=args.seed, eps=grid)
    scale, unit = (255, "/255") if norm == "linf" else (1, "")
    for spec, c in curves.items():
        if grid is not None:
            points = ", ".join(f"{e * scale:.3g}{unit}: {a:.1%}" for e, a in zip(c.eps.tolist(), c.accuracy.tolist()))
        else:
            points = f"median minimal {norm} {c.median_norm():.3f}"
        print(f"{spec}: clean {c.clean_accuracy:.1%}; {points}")
    print(f"written to {final_dir(args, 'robustness').resolve()}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("attack", cmd_attack, "adversarial examples for images: original, perturbation, adversarial",
            check=check_attack)
    p.add_argument("images", nargs="+", type=image_file, help="image files")
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--method", default="pgd", type=one_of(PER_IMAGE, "per-image attack", single=True),
                   help=f"attack: {', '.join(PER_IMAGE)} (default pgd)")
    p.add_argument("--eps", type=budget,
                   help="budget for fgsm, pgd and noise, e.g. 8/255 (default; L-inf) or 0.5 with --norm l2")
    p.add_argument("--norm", choices=["linf", "l2"], help="norm of the budget (default linf)")
    p.add_argument("--steps", type=count(), help="iterations, or one_pixel's generations (default: the attack's own)")
    p.add_argument("--restarts", type=count(), help="PGD random restarts")
    p.add_argument("--pixels", type=count(), help="pixels one_pixel may change (default 1)")
    p.add_argument("--target", help="target class (index or name) for a targeted attack")
    p.add_argument("--label", help="true class (index or name; one, or one per image); default: the prediction")
    p.add_argument("--size", type=size(), help="image side in pixels (default: the model's input size)")
    p.add_argument("--seed", type=natural(), default=0)

    p = add("robustness", cmd_robustness, "accuracy under attack against the budget (robustness curve)",
            model=False, check=check_robustness)
    p.add_argument("--model", default="shapes", help="model spec, or several comma-separated (one curve each)")
    p.add_argument("--attack", default="pgd", choices=SWEEPABLE)
    p.add_argument("--eps", type=budgets, help="budgets: start:stop:count or a list (default 0:16/255:9; "
                                               "minimal-norm attacks default to every sample's norm)")
    p.add_argument("--norm", choices=["linf", "l2"], help="norm of the budgets (default linf; l2 for minimal ones)")
    p.add_argument("--data", type=data_spec, help="data spec (default: the model's held-out images)")
    p.add_argument("--n", type=count(), default=256, help="images (default 256)")
    p.add_argument("--steps", type=count(), help="attack iterations (default: the attack's own)")
    p.add_argument("--seed", type=natural(), default=0)
    p.add_argument("--trust", action="store_true", help="allow pickled checkpoints (runs their code)")
    p.add_argument("--no-progress", action="store_true")

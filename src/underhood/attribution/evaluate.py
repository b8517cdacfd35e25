"""The method x metric table: which attribution maps to trust, on data with ground truth.

Used by ``underhood evaluate`` and the report. Columns (arrows: which way is better):

- ``pointing`` (up): pointing-game hit rate against the object masks;
- ``energy`` (up): share of the map's positive energy inside the object mask;
- ``deletion`` (down) / ``insertion`` (up): AUC of the class probability as the most
  important pixels are removed / restored (Petsiuk et al. 2018);
- ``model_rand`` (down): Spearman rank correlation between the maps of the trained model and of
  a fully re-initialised copy (Adebayo et al. 2018); a method that does not change is not
  explaining the model;
- ``model_ssim`` (down): the structural similarity (SSIM) of the same two maps;
- ``data_rand`` / ``data_ssim`` (down): the same against a copy trained on permuted labels;
- ``marker`` (up) / ``object`` (down): on the model trained with the spurious marker, the
  share of energy on the marker and on the object (the shortcut test). That model decides from
  the marker alone, so a faithful map puts its energy there, not on the shape.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checks import positive_int
from ..core.device import model_device
from ..core.errors import InputError
from ..core.hooks import frozen
from ..core.results import Result, Summary
from ..data.imageset import ImageSet
from .base import fixed_target
from .cam import pooled_maps
from .metrics import (
    deletion_curve,
    energy_in_mask,
    insertion_curve,
    mask_shares,
    pointing_game,
    randomized_copy,
    similarities,
)
from .registry import METHODS, REGISTRY, get

COLUMNS = {"pointing": "up", "energy": "up", "deletion": "down", "insertion": "up", "model_rand": "down",
           "model_ssim": "down", "data_rand": "down", "data_ssim": "down", "marker": "up", "object": "down"}
# the presets of the registry (MethodInfo.fast / .full), by method
FAST = {name: dict(m.fast) for name, m in REGISTRY.items() if m.fast}
FULL = {name: dict(m.full) for name, m in REGISTRY.items() if m.full}


@dataclass(repr=False)
class Evaluation(Result):
    """``values[method][column]`` (means over images), the settings used and seconds per method."""

    values: dict[str, dict[str, float]]
    settings: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> deletion/insertion

    @property
    def columns(self) -> list[str]:
        return [c for c in COLUMNS if any(c in row for row in self.values.values())]

    def scalars(self) -> dict[str, object]:
        """Methods and images evaluated, curve steps, and the seconds it took."""
        return {"methods": len(self.values), "images": self.settings.get("n"), "steps": self.settings.get("steps"),
                "seconds": round(sum(self.seconds.values()), 2)}

    def summary(self) -> Summary:
        """The method x metric table (:meth:`table`)."""
        return Summary(self.table(), self.scalars())

    def figure(self):
        """The table as a heatmap, each column coloured from worst to best."""
        from ..viz.attribution import metric_table_figure

        return metric_table_figure(self.values, {c: COLUMNS[c] for c in self.columns})

    def rows(self) -> list[list[str]]:
        """Formatted rows: method, then each column (``-`` when not measured)."""
        return [[m] + [f"{row[c]:.3f}" if c in row else "-" for c in self.columns] for m, row in self.values.items()]

    def table(self) -> str:
        """Aligned text with a header line carrying the better direction of each column."""
        head = ["method"] + [f"{c} {'↑' if COLUMNS[c] == 'up' else '↓'}" for c in self.columns]
        rows = [head] + self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                         for r in rows)

    def to_dict(self) -> dict[str, object]:
        return {"columns": {c: COLUMNS[c] for c in self.columns}, "values": self.values,
                "settings": self.settings, "seconds": self.seconds, "curves": self.curves}


def cam_layer(model: nn.Module) -> str | None:
    """The layer CAM itself would use, when the model has a GAP + linear head: the last stage's output.

    Grad-CAM and relatives are shown at this layer in the report so the CAM family is compared
    on one feature map; ``None`` when no such layer exists (methods then use the last Conv2d).
    """
    size = getattr(model, "input_size", None)
    if not size:
        return None
    x = torch.rand(1, *size, device=model_device(model))
    try:
        pooled, _, _ = pooled_maps(model, x)
    except InputError:
        return None
    return pooled[-1][0] if pooled else None


def reference_models(model: nn.Module, n: int = 64) -> dict[str, object]:
    """The sanity-check companions of a built-in shapes model, as :func:`evaluate` keyword arguments.

    ``random_model``: the copy trained on permuted labels (same architecture only);
    ``spurious_model`` and ``spurious_data`` (``n`` marked held-out images): the shortcut model.
    Empty for other models, or when those weights are not installed.
    """
    from ..data import shapes
    from ..models.loading import list_models, load_model
    from ..models.training import SHAPES_TEST_SEED

    meta, shipped = getattr(model, "meta", {}), set(list_models())
    device = model_device(model)
    out: dict[str, object] = {}
    if meta.get("dataset") != "shapes":
        return out
    if meta.get("arch") == "shapes" and "shapes-random-labels" in shipped:
        out["random_model"] = load_model("shapes-random-labels", device=device)
    if "shapes-spurious" in shipped:
        out["spurious_model"] = load_model("shapes-spurious", device=device)
        out["spurious_data"] = shapes(n, seed=SHAPES_TEST_SEED + 1, spurious=1.0)
    return out


def applicable_methods(model: nn.Module) -> list[str]:
    """Every registered method that applies to ``model``: all of them, less those needing a GAP + linear
    head (CAM) when it has none, and those needing the ReLU rules when it is TorchScript."""
    scripted = isinstance(model, torch.jit.ScriptModule)
    has_head = cam_layer(model) is not None if any(m.head for m in REGISTRY.values()) else True
    return [name for name, m in REGISTRY.items() if (has_head or not m.head) and not (scripted and m.rule)]


def method_options(model: nn.Module, methods: Sequence[str], *, full: bool = False,
                   overrides: Mapping[str, dict] | None = None, size: Sequence[int] | None = None) -> dict[str, dict]:
    """Per-method options: the fast or full preset, the CAM layer, then the user's overrides.

    The occlusion window scales with the image (``size`` = (H, W), default the model's input
    size): an eighth of the shorter side, at least 8 pixels, so a 224-pixel image costs about
    as many occluded copies as a 64-pixel one.
    """
    layer = cam_layer(model)
    size = size or (getattr(model, "input_size", None) or (0, 64, 64))[-2:]
    out = {}
    for m in methods:
        entry = REGISTRY.get(m)
        opts = dict((entry.full if full else entry.fast) if entry else {})
        if m == "occlusion":
            window = max(opts["window"], round(min(size) / 8))
            opts.update(window=window, stride=max(1, window * opts["stride"] // opts["window"]))
        if layer and entry and entry.layer:
            opts["layer"] = layer
        opts.update((overrides or {}).get(m, {}))
        out[m] = opts
    return out


def evaluate(model: nn.Module, data: ImageSet, methods: Sequence[str] = tuple(METHODS), *, n: int = 16,
             steps: int = 20, full: bool = False, random_model: nn.Module | None = None,
             spurious_model: nn.Module | None = None, spurious_data: ImageSet | None = None,
             options: Mapping[str, dict] | None = None, seed: int = 0, progress: bool = False) -> Evaluation:
    """Score each method on the first ``n`` images of ``data`` (see the module docstring for columns).

    Localisation needs ``data.masks``; ``data_rand`` needs ``random_model``; the shortcut columns
    need ``spurious_model`` and ``spurious_data`` (with ``marker_masks``).
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    positive_int("n", n)  # images
    device = model_device(model)
    x = data.images[:n].to(device)
    opts = method_options(model, methods, full=full, overrides=options)
    shortcut_opts = (method_options(spurious_model, methods, full=full, overrides=options)
                     if spurious_model is not None else {})
    values, seconds, curves = {}, {}, {}
    for name in tqdm(methods, desc="evaluate", disable=not progress):
        start = time.perf_counter()
        values[name], curves[name] = _score(model, data, x, name, opts[name], steps, random_model, seed)
        if spurious_model is not None and spurious_data is not None:
            values[name].update(_shortcut(spurious_model, spurious_data, n, name, shortcut_opts[name]))
        seconds[name] = round(time.perf_counter() - start, 2)
    settings = {"n": n, "steps": steps, "full": full, "seed": seed, "options": opts,
                "dataset": data.info.get("dataset") if getattr(data, "info", None) else None}
    return Evaluation(values, settings, seconds, curves)


def _score(model, data, x, name, opts, steps, random_model, seed) -> tuple[dict[str, float], dict[str, list[float]]]:
    fn = get(name)
    with frozen(model):
        fixed, _ = fixed_target(model, x, None)   # the predicted classes, explained by every model below
    maps = fn(model, x, fixed, **opts)
    row = {}
    if data.masks is not None:
        masks = data.masks[: len(x)].to(x.device)
        row["pointing"] = float(pointing_game(maps, masks).float().mean())
        row["energy"] = float(energy_in_mask(maps, masks).mean())
    curves = {}
    for kind, curve in (("deletion", deletion_curve), ("insertion", insertion_curve)):
        res = curve(model, x, maps, steps=steps)
        row[kind], curves[kind] = float(res.auc.mean()), [round(float(v), 5) for v in res.curves.mean(0)]
    # the maps of a fully re-initialised copy, and of a copy trained on permuted labels, for the
    # classes the trained model predicts (the last columns of the sanity checks)
    for column, other in (("model", randomized_copy(model, seed=seed)), ("data", random_model)):
        if other is not None:
            rank, structure = similarities(maps, fn(other, x, fixed, **opts))
            row[f"{column}_rand"], row[f"{column}_ssim"] = float(rank.nanmean()), float(structure.nanmean())
    return row, curves


def _shortcut(model, data, n, name, opts) -> dict[str, float]:
    x = data.images[:n].to(model_device(model))
    maps = get(name)(model, x, None, **opts)
    obj, marker = mask_shares(maps, data.masks[:n].to(x.device), data.marker_masks[:n].to(x.device))
    return {"marker": float(marker.mean()), "object": float(obj.mean())}

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
from ..core.inputs import check_inputs
from ..core.results import Result, Summary
from ..data.imageset import ImageSet
from .base import fixed_target
from .cam import pooled_maps
from .metrics import (
    _curve_result,
    curves_for_methods,
    energy_in_mask,
    mask_shares,
    pointing_game,
    randomized_copy,
    similarities,
)
from .perturbation import superpixels
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
             options: Mapping[str, dict] | None = None, seed: int = 0, progress: bool = False,
             sanity_n: int | None = None, maps: Mapping[str, torch.Tensor] | None = None,
             shortcut_maps: Mapping[str, torch.Tensor] | None = None) -> Evaluation:
    """Score each method on the first ``n`` images of ``data`` (see the module docstring for columns).

    Localisation needs ``data.masks``; ``data_rand`` needs ``random_model``; the shortcut columns
    need ``spurious_model`` and ``spurious_data`` (with ``marker_masks``).

    Args:
        sanity_n: images (the first ``sanity_n`` of the ``n``) for the randomisation and shortcut
            columns, which compute maps on other models (default ``n``).
        maps: maps already computed for ``model`` on the first ``n`` images and their predicted
            classes with these options (e.g. by ``explain``), reused instead of recomputed.
        shortcut_maps: the same for ``spurious_model`` on the first ``sanity_n`` images of
            ``spurious_data``.
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    positive_int("n", n)  # images
    x = check_inputs(model, data.images[:n], "data")
    opts = method_options(model, methods, full=full, overrides=options)
    shortcut_opts = (method_options(spurious_model, methods, full=full, overrides=options)
                     if spurious_model is not None else {})
    m = min(n, positive_int("sanity_n", sanity_n)) if sanity_n is not None else n  # images
    given, given_shortcut = _given(maps, methods, len(x), "maps"), _given(shortcut_maps, methods, m, "shortcut_maps")
    with frozen(model):
        fixed, _ = fixed_target(model, x, None)   # the predicted classes, explained by every model below
    twin = randomized_copy(model, seed=seed)
    values, seconds, curves, all_maps = {}, {}, {}, {}
    for name in tqdm(methods, desc="evaluate", disable=not progress):
        start = time.perf_counter()
        values[name], all_maps[name] = _score(model, data, x, fixed, name, opts[name],
                                              {"model": twin, "data": random_model}, m, given.get(name))
        if spurious_model is not None and spurious_data is not None:
            values[name].update(_shortcut(spurious_model, spurious_data, m, name, shortcut_opts[name],
                                          given_shortcut.get(name)))
        seconds[name] = time.perf_counter() - start
    # deletion / insertion of every method in one batched pass (the curves' ends are shared)
    start = time.perf_counter()
    both = curves_for_methods(model, x, list(all_maps.values()), fixed, steps=steps) if methods else ()
    for kind, res in zip(("deletion", "insertion"), both):
        for name, c in zip(all_maps, res):
            values[name][kind] = float(_curve_result(c, kind).auc.mean())
            curves.setdefault(name, {})[kind] = [round(float(v), 5) for v in c.mean(0)]
    share = (time.perf_counter() - start) / max(1, len(methods))
    seconds = {k: round(v + share, 2) for k, v in seconds.items()}
    settings = {"n": n, "sanity_n": m, "steps": steps, "full": full, "seed": seed, "options": opts,
                "dataset": data.info.get("dataset") if getattr(data, "info", None) else None}
    return Evaluation(values, settings, seconds, curves)


def _given(maps: Mapping[str, torch.Tensor] | None, methods: Sequence[str], n: int, name: str) -> dict:
    """Precomputed maps, checked: one map per image for methods among ``methods``."""
    out = dict(maps or {})
    for k, v in out.items():
        if k not in methods or not isinstance(v, torch.Tensor) or v.ndim != 4 or len(v) != n:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise InputError(f"{name}: expected {{method: [{n}, C, H, W] maps}} for methods evaluated here, "
                             f"got {k!r}: {got}; compute them on the same images")
    return out


def _score(model, data, x, fixed, name, opts, others, m, maps) -> tuple[dict[str, float], torch.Tensor]:
    """The columns of one method that need no curve, and its maps on the ``n`` images."""
    fn = get(name)
    maps = fn(model, x, fixed, **opts) if maps is None else maps.to(x.device)
    row = {}
    if data.masks is not None:
        masks = data.masks[: len(x)].to(x.device)
        row["pointing"] = float(pointing_game(maps, masks).float().mean())
        row["energy"] = float(energy_in_mask(maps, masks).mean())
    # the maps of a fully re-initialised copy, and of a copy trained on permuted labels, on the first m
    # images, for the classes the trained model predicts (the last columns of the sanity checks);
    # LIME's superpixels depend on the image only, so they are cut once for both
    other_opts = dict(opts)
    if name == "lime" and "segments" not in opts and any(o is not None for o in others.values()):
        other_opts["segments"] = superpixels(x[:m], opts.get("n_segments", 50), opts.get("compactness", 10.0))
    for column, other in others.items():
        if other is not None:
            rank, structure = similarities(maps[:m], fn(other, x[:m], fixed[:m], **other_opts))
            row[f"{column}_rand"], row[f"{column}_ssim"] = float(rank.nanmean()), float(structure.nanmean())
    return row, maps


def _shortcut(model, data, n, name, opts, maps=None) -> dict[str, float]:
    x = data.images[:n].to(model_device(model))
    maps = get(name)(model, x, None, **opts) if maps is None else maps.to(x.device)
    obj, marker = mask_shares(maps, data.masks[:n].to(x.device), data.marker_masks[:n].to(x.device))
    return {"marker": float(marker.mean()), "object": float(obj.mean())}

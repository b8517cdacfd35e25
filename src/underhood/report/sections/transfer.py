"""Report sections of the transfer family: how general is each layer (linear probes on frozen features) and,
with ``--full``, how transferable its layers are (Yosinski et al.'s grid, or frozen against fine-tuned curves).

The probes score on the held-out images the dataset-scale sections share (:func:`.activations.population`)
and learn from as many of the model's own training images; sizes are small by default to fit the demo's
time budget (:data:`N_PROBE`), ``--full`` uses larger ones. The transfer grid runs only with ``--full``
(:data:`GRID`: about three minutes on 2 CPU cores).
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup, escape

from ...core.device import model_device
from ...viz import figure_to_png
from ..base import Context, figure, paragraph, section
from .activations import batch_size, population

GRID = {"shapes": {"data": "shapes:3000", "seeds": 2}, "digits": {"data": "digits", "seeds": 2}}
"""The ``--full`` report's transfer grid per training dataset (:func:`underhood.transfer.transfer_curve`'s arguments):
a smaller one than ``underhood transfer``'s default (shapes:6000, 3 seeds)."""
N_PROBE = {False: 300, True: 1000}
"""Images the probes learn from, and at most as many held-out images they are scored on (demo, ``--full``)."""


def probe_sets(ctx: Context, n: int):
    """``(train, test)``: ``n`` of the model's own training images (built-in shapes from a training seed, the
    digits' train split) and up to ``n`` of the shared held-out population; a model trained elsewhere gets the
    population split in two halves."""
    from ...data import digits, shapes
    from ...data.shapes import CLASSES

    held_out = population(ctx)
    meta = getattr(ctx.model, "meta", {}) or {}
    size = getattr(ctx.model, "input_size", None)
    if meta.get("dataset") == "digits":
        return digits(split="train")[:n], held_out[:n]
    if list(getattr(ctx.model, "classes", []) or []) == CLASSES and size is not None and size[0] == 3:
        return shapes(n, seed=1, size=size[-1]), held_out[:n]
    half = len(held_out) // 2
    return held_out[:half], held_out[half:]


def reading(result) -> str:
    """What the curve says, from its numbers: the rise with depth (and every dip), the last layer against the
    model itself, and the trained weights against the random copy and the pixels."""
    names = result.layers
    acc = result.accuracy
    if not names:
        return f"The raw pixels score {result.pixels:.0%} against a chance level of {result.chance:.0%}."
    first, last = names[0], names[-1]
    steps = " -> ".join(f"{n} {acc[n]:.0%}" for n in names)
    drops = [(a, b) for a, b in zip(names, names[1:]) if acc[b] < acc[a] - 0.01]
    if acc[last] <= acc[first] + 0.01:
        text = f"The probes do not get better with depth here ({steps})."
    elif drops:
        dips = "; ".join(f"{b} ({acc[b]:.0%}) is below {a} ({acc[a]:.0%})" for a, b in drops)
        text = f"Probe accuracy rises from {first} to {last} ({steps}), but not at every step: {dips}."
    else:
        text = f"Probe accuracy rises with depth ({steps}): the classes become linearly separable layer by layer."
    if result.model_accuracy is not None:
        gap = result.model_accuracy - acc[last]
        text += (f" At {last} a linear read-out already matches the model itself ({acc[last]:.1%} against "
                 f"{result.model_accuracy:.1%})" if abs(gap) <= 0.01 else
                 f" At {last} a linear read-out reaches {acc[last]:.1%}, "
                 f"{abs(gap) * 100:.1f} points {'below' if gap > 0 else 'above'} the model itself "
                 f"({result.model_accuracy:.1%})") + "."
    if result.random:
        best = max(result.random, key=result.random.get)
        text += (f" The randomly re-initialised copy never gets past {result.random[best]:.0%} (at {best}; "
                 f"{result.random.get(last, 0):.0%} at {last})"
                 + (": the separation comes from the trained weights, not from the architecture."
                    if acc[last] - result.random.get(last, 0) > 0.2 else "."))
    if result.pixels is not None:
        text += (f" The raw pixels score {result.pixels:.0%} against a chance level of {result.chance:.0%}"
                 + (": nothing about these classes is linear in pixel space." if result.pixels - result.chance < 0.05
                    else "."))
    return text


@section("transfer-probes", "How general is each layer", order=48)
def probes(ctx: Context) -> Markup:
    from ...transfer import probe

    full = bool(ctx.options.get("full"))
    train, test = probe_sets(ctx, N_PROBE[full])
    result = probe(ctx.model, train, test, seed=ctx.seed, batch_size=batch_size(ctx))
    ctx.cache["transfer-probe"] = result
    fig = result.figure(title=f"Linear probes on {result.pool}-pooled features: {result.n_train} training / "
                              f"{result.n_test} held-out images")
    caption = (f"Linear probes (Alain & Bengio 2016): for the raw pixels (averaged down to 8x8) and each stage, a "
               f"multinomial logistic regression fitted on the {result.pool}-pooled, frozen activations of "
               f"{result.n_train} training images and scored on {result.n_test} held-out ones (blue); the same "
               "probes on a copy of the network with every layer re-initialised (grey, dashed), the model's own "
               "accuracy (red, dashed) and chance (the most frequent class). ")
    return figure(ctx, figure_to_png(fig, dpi=100), "transfer-probes", caption + reading(result)) + paragraph(
        "A layer whose probe is close to the model's own accuracy already holds the answer in a linearly readable "
        "form; a layer far above its random copy holds something the training put there, which is what carries "
        "over when the layer is reused for a new task.")


@section("transfer-grid", "How transferable are its layers", order=49)
def grid(ctx: Context) -> Markup | None:
    """``--full`` only: Yosinski et al.'s grid for a built-in architecture trained on built-in data, else the
    frozen-versus-fine-tuned curves of the model on the probe sets."""
    if not ctx.options.get("full"):
        return None
    from ...models.architectures import ARCHITECTURES
    from ...transfer import finetune_curve, transfer_curve
    from ...viz.transfer_curves import generality_figure

    meta = getattr(ctx.model, "meta", {}) or {}
    arch, dataset = meta.get("arch"), str(meta.get("dataset", ""))
    if arch in ARCHITECTURES and dataset in GRID:
        # the finished networks are kept where the report's next run finds them (the demo's --out/shards),
        # so a rerun of the same report resumes instead of training the grid again
        keep = ctx.options.get("keep")
        result = transfer_curve(arch, **GRID[dataset], device=str(model_device(ctx.model)),
                                out=None if keep is None else Path(keep) / f"transfer-grid-{arch}")
        ctx.cache["transfer-grid"] = result
        body = figure(ctx, figure_to_png(result.figure(), dpi=100), "transfer-grid",
                      f"Yosinski et al. (2014)'s experiment on the '{arch}' architecture: the classes are split into "
                      f"halves A and B ({len(result.seeds)} random splits), a base network is trained on each, and "
                      "for every depth n a network for B keeps the first n blocks of baseB (BnB, blue) or baseA (AnB, "
                      "red), frozen, or fine-tuned afterwards (+, open markers), the rest retrained on B. Each point "
                      f"is one network ({len(result.runs)} in {result.info['seconds']:.0f} s); lines join the means.")
        body += figure(ctx, figure_to_png(generality_figure(result), dpi=100), "transfer-generality",
                       "The AnB loss per depth beside two generality scores that need no retraining: linear CKA "
                       "between baseA's and baseB's outputs on the same images, and a linear probe on B of baseA's "
                       "frozen features.")
        items = "".join(f"<li>{escape(line)}</li>" for line in result.statements())
        return body + Markup(f"<ul>{items}</ul>")
    train, test = probe_sets(ctx, N_PROBE[True])
    result = finetune_curve(ctx.model, train, test, epochs=1, seed=ctx.seed)
    ctx.cache["transfer-finetune"] = result
    body = figure(ctx, figure_to_png(result.figure(), dpi=100), "transfer-finetune",
                  f"For each stage, a new linear head on the frozen features (red), the network cut there and "
                  f"fine-tuned with that head for one epoch (orange), and the frozen head on a randomly "
                  f"re-initialised copy (grey); {result.info['n_train']} training / {result.info['n_test']} "
                  "held-out images.")
    items = "".join(f"<li>{escape(line)}</li>" for line in result.statements())
    return body + Markup(f"<ul>{items}</ul>")

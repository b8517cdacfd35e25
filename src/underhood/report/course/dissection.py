"""Network dissection (Bau et al. 2017) on the built-in models: the shapes data's ground-truth masks as the
labelled concepts, every unit scored by IoU, the plainly trained model beside the one trained with the marker."""

from __future__ import annotations

from markupsafe import Markup
from torch import nn

from ...activations.dissect import dissect
from ...core.names import named_layers
from ...viz import figure_to_png
from ...viz.dissection import detectors_figure
from ..base import figure, paragraph
from .base import Lab, experiment

BATCH = 64
MODELS = {"shapes": "trained on plain shapes", "shapes-spurious": "trained with the class-coloured marker"}


def relu_layers(model: nn.Module) -> list[str]:
    """Each convolution's rectified output (Bau et al. dissect conv1 ... conv5 after their ReLU)."""
    return [n for n, m in named_layers(model).items() if isinstance(m, nn.ReLU)]


def _reading(r, label: str) -> str:
    """What one model's dissection found, per layer, from its numbers."""
    parts = []
    for layer in r.layers:
        found = {c: v for c, v in r.detectors(layer).items() if v}
        lead = max(found, key=found.get) if found else None
        parts.append(f"{layer} {sum(found.values())}/{len(r.threshold[layer])}"
                     + (f" ({len(found)} concept{'s' if len(found) > 1 else ''}, most '{lead}' x{found[lead]})"
                        if lead else ""))
    unit, concept, iou = r.units(r.layers[-1], 1)[0]
    return (f"The model {label}: detectors per layer " + "; ".join(parts)
            + f". Its best unit at {r.layers[-1]} is #{unit}, a '{concept}' detector with IoU {iou:.2f}.")


@experiment("dissection-units", "Network dissection: which units detect which concept (Bau et al. 2017)",
            decks=("diy",),
            lecture="The DIY deck's 'Going further' points to GAN Dissection (Bau et al.), the sequel of Network "
                    "Dissection (Bau et al. 2017): each unit's top-0.5% activation region, upsampled to the image, "
                    "is scored by IoU against labelled concept masks (Broden); a unit whose best IoU exceeds 0.04 is "
                    "a detector of that concept, and the detectors are counted per layer (conv1 to conv5).", order=90)
def units(lab: Lab) -> Markup:
    n = 48 if lab.quick else 600
    data = lab.shapes(n=n, spurious=0.5)
    results, models = {}, {}
    for spec in MODELS:
        models[spec] = lab.model(spec)
        results[spec] = dissect(models[spec], data, layers=relu_layers(models[spec]), batch_size=BATCH)
    plain, shortcut = results["shapes"], results["shapes-spurious"]
    deepest = plain.layers[-1]
    settings = (f"Settings: {n} held-out shapes images, half of them with the marker planted; concepts: each "
                f"class's object mask (on the images of that class; the sums run over every image, as Bau et "
                f"al. sum a category over the images labelled in it) and the marker's mask; T_k the top "
                f"{plain.quantile:.1%} level of each unit over all positions, maps upsampled bilinearly, a "
                f"detector when IoU > {plain.iou_threshold:g}; layers: each convolution after its ReLU. ")
    fig = detectors_figure({f"{spec} ({what})": results[spec] for spec, what in MODELS.items()})
    body = figure(lab, figure_to_png(fig, dpi=100), "dissection-units-detectors",
                  settings + "Above each bar: detectors / units. " + _reading(plain, "trained on plain shapes") + " "
                  + _reading(shortcut, "trained with the marker"))
    k, m = (3, 4) if lab.quick else (4, 6)
    for spec, r in results.items():
        if lab.quick and spec != "shapes-spurious":
            continue
        top = r.units(deepest, k)
        fig = r.units_figure(models[spec], data, deepest, k=k, m=m)
        body += figure(lab, figure_to_png(fig, dpi=100), f"dissection-units-{spec}",
                       f"The {k} best units of {deepest} in the model {MODELS[spec]}, each on the {m} images where "
                       "its maximum is highest: its region M_k(x) (above T_k) bright and outlined in yellow, the "
                       "rest dimmed, its concept's ground truth outlined in blue. IoU: "
                       + ", ".join(f"#{u} '{c}' {v:.2f}" for u, c, v in top) + ".")
    markers = {spec: r.detectors(deepest)["marker"] for spec, r in results.items()}
    return body + paragraph(
        f"On shapes the concepts are known exactly, so unit interpretability is scored against ground truth "
        f"without a labelled segmentation corpus. At {deepest}, {markers['shapes-spurious']} of "
        f"{len(shortcut.threshold[deepest])} units of the model trained with the marker detect the marker, "
        f"against {markers['shapes']} in the plainly trained one: dissection catches the shortcut the Clever-Hans "
        "model learned, unit by unit.")

"""The course's architecture and weights experiments: receptive fields, dilation, fully connected layers as
convolutions, global average pooling, filters, the toy 2-D network, and MAP583's CPU vs GPU measurement."""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...core.layers import conv_layers, layers
from ...core.receptive import conv_output_size, effective_receptive_field, support
from ...viz import figure_to_png, filters_figure
from ...viz.architecture import dense_map_figure, dilation_figure, receptive_fields_figure
from ..base import figure, paragraph, table
from .base import Lab, experiment


def _accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def _tile(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``rows x cols`` images ``[n, C, s, s]`` (n >= rows cols) side by side: one ``[C, rows s, cols s]`` canvas."""
    c, s = images.shape[1], images.shape[-1]
    grid = images[:rows * cols].reshape(rows, cols, c, s, s)
    return grid.permute(2, 0, 3, 1, 4).reshape(c, rows * s, cols * s)


def _jump(model) -> int:
    """Input pixels between neighbouring units of the last spatial map: the stride of the slid classifier."""
    return int([r for r in layers(model, input_size=tuple(model.input_size)) if r.jump is not None][-1].jump[0])


# ----------------------------------------------------------------------------- MAP583: CPU vs GPU


@experiment("map583-cpu-gpu", "CPU vs GPU, measured on this machine", decks=("map583",), order=2,
            lecture="MAP583 opens with the hardware: a CPU has fewer, faster cores for sequential work, a GPU many "
                    "slower ones for parallel work, and the deck's benchmark tables (J. Johnson's cnn-benchmarks; "
                    "Shi et al. 2016) give images per second of the same networks on both.")
def cpu_vs_gpu(lab: Lab) -> Markup:
    from ...hardware import bench, describe

    model = lab.model("shapes")
    top = 4 if lab.quick else 64
    rounds = 2 if lab.quick else 3
    result = bench(model, devices="auto", quick=True, variants=("fp32",), layers=False, max_batch=top, rounds=rounds,
                   seed=lab.seed)
    rows = {r["device"]: r for r in result.rows() if r["variant"] == "fp32"}
    cpu = rows.get("cpu", {})
    gpu = next((r for d, r in rows.items() if d.startswith("cuda")), None)
    gpu_name = (result.devices.get("cuda") or {}).get("name") if gpu else None

    def cell(r, key, fmt):
        return "-" if r is None or r.get(key) is None else format(r[key], fmt)

    body = [["forward, images/s (best batch)", cell(cpu, "forward", ",.4g"), cell(gpu, "forward", ",.4g")],
            ["best batch", cell(cpu, "batch", "d"), cell(gpu, "batch", "d")],
            ["forward + backward, images/s", cell(cpu, "backward", ",.4g"), cell(gpu, "backward", ",.4g")],
            ["median ms per image at batch 1", cell(cpu, "p50_ms_b1", ".3g"), cell(gpu, "p50_ms_b1", ".3g")]]
    found = f"a CUDA GPU ({gpu_name})" if gpu else "no CUDA device: the GPU column stays empty"
    ratio = ""
    if gpu and cpu.get("forward") and gpu.get("forward"):
        ratio = f" Here the GPU runs the forward pass {gpu['forward'] / cpu['forward']:.1f}x faster than the CPU."
    return (paragraph(f"Device found: {found}. " + describe(result.environment).replace("\n", "; ") + ".")
            + table(["fp32, built-in shapes model (64x64)", "CPU", "GPU"], body, numeric=(1, 2))
            + paragraph(f"Settings: batches 1 to {top} by factors of 4, {rounds} interleaved rounds, fp32 only, "
                        f"{result.wall_s:.1f} s for the whole measurement ({result.cpu_s:.1f} CPU-s).{ratio} "
                        "A tiny network at batch 1 keeps either device far from its peak; `underhood bench` "
                        "measures every variant (bf16, channels-last, TF32, fp16, compile) and batch sizes up to "
                        "the memory limit."))


# ----------------------------------------------------------------------------- EE-559: the toy 2-D MLP

LECTURE_ITERATIONS = (1, 4, 7, 10, 16, 34, 77, 100, 703, 1407, 2789, 4999)


@experiment("ee559-toy2d", "A 2-D MLP's hidden units as lines", decks=("ee559",), order=5,
            lecture="EE-559 slides 4-29: nn.Sequential(nn.Linear(2, 20), nn.ReLU(), nn.Linear(20, 2)) drawn as "
                    "its 20 hidden units' lines {x : w.x + b = 0} at iterations 1, 4, 7, ..., 4999 of training: "
                    "the separations organise so that together they delimit the classes.")
def toy_mlp(lab: Lab) -> Markup:
    from ...weights import toy2d, toy2d_strip

    steps = 300 if lab.quick else 5000
    marks = [s for s in LECTURE_ITERATIONS if s < steps] + ([steps - 1] if steps < 5000 else [])
    datasets = ("moons",) if lab.quick else ("moons", "circles")
    out = Markup("")
    for name in datasets:
        result = toy2d(name, hidden=20, steps=steps, seed=lab.seed, snapshots=marks)
        k = min(len(result.snapshots), 4 if lab.quick else 8)
        fig = toy2d_strip(result, k=k, ncols=4)
        out += figure(lab, figure_to_png(fig, dpi=80), f"ee559-toy2d-{name}",
                      f"The lecture's network (20 ReLU units, 2 classes) trained on the {name} "
                      f"({len(result.x)} points) with full-batch Adam (lr 0.01) for {steps:,} steps, drawn at "
                      f"{k} of the snapshot iterations {', '.join(map(str, marks))}. Grey lines: the hidden units' "
                      "lines, where each switches on; black: the decision boundary. Training accuracy: "
                      f"{result.snapshots[0].accuracy:.0%} after step {result.snapshots[0].step}, "
                      f"{result.final_accuracy:.1%} at the end.")
    return out


# ----------------------------------------------------------------------------- every deck: filters


@experiment("course-filters", "First-layer filters of the built-in models",
            decks=("map583", "ee559", "csc413", "diy", "cmp784"), order=10,
            lecture="Every deck starts looking inside with the first layer's weights drawn as images (EE-559: "
                    "LeNet's first and second convolutional layers, AlexNet's first as RGB images; the others: "
                    "AlexNet's Gabor-like filters), and warns that deeper filters say less.")
def first_filters(lab: Lab) -> Markup:
    from ...weights import filters

    out = Markup("")
    for spec in ("shapes", "shapes-resnet", "digits"):
        model = lab.model(spec)
        convs = conv_layers(model)
        w = filters(model, convs[0])
        kind = "RGB images on one shared colour scale" if w.shape[1] == 3 else "grey-scale kernels"
        out += figure(lab, figure_to_png(filters_figure(w, title=f"{spec}: {convs[0]}, {w.shape[0]} filters "
                                                        f"{w.shape[2]}x{w.shape[3]}")), f"course-filters-{spec}",
                      f"The {w.shape[0]} first-layer kernels of the built-in {spec} model ({convs[0]}) as {kind} "
                      f"(mid-grey = 0). Their weights span [{float(w.min()):.2f}, {float(w.max()):.2f}].",
                      width="560px")
        if spec == "digits" and len(convs) > 1:  # EE-559 also shows LeNet's second layer
            d = filters(model, convs[1])
            out += figure(lab, figure_to_png(filters_figure(d, title=f"digits: {convs[1]}, {d.shape[0]} filters "
                                                            f"x {d.shape[1]} input channels")),
                          "course-filters-digits-deep",
                          f"LeNet's second layer ({convs[1]}), as EE-559 draws it: one {d.shape[2]}x{d.shape[3]} "
                          f"kernel per filter (rows, {d.shape[0]}) and input channel (columns, {d.shape[1]}), each "
                          "scaled on its own; what they mean depends on the first layer's channels.",
                          width="420px")
    return out


# ----------------------------------------------------------------------------- CSC413: receptive fields


@experiment("csc413-receptive-field", "Receptive fields, computed and measured by gradient", decks=("csc413",),
            order=6,
            lecture="CSC413 lecture 7, 'Receptive fields': because of pooling and strides, higher-layer filters "
                    "cover a larger region of the input than equal-sized filters in lower layers.")
def receptive_fields(lab: Lab) -> Markup:
    model = lab.model("shapes")
    size = tuple(model.input_size)
    n = 4 if lab.quick else 32
    rows = [r for r in layers(model, input_size=size) if r.type in ("Conv2d", "MaxPool2d", "AdaptiveAvgPool2d",
                                                                      "Linear")]
    measured = {r.name: effective_receptive_field(model, r.name, n_samples=n, seed=lab.seed)
                for r in rows if r.rf is not None}
    agree = sum(f.measured_box == f.box for f in measured.values())

    def seen(name: str) -> str:
        f = measured.get(name)
        if f is None or f.measured_box is None:
            return "whole image"
        t, left, b, right = f.measured_box
        return f"{b - t + 1}x{right - left + 1}"

    body = [[r.name, r.type, " x ".join(map(str, r.output_shape or ())), r.rf_size,
             "-" if r.jump is None else f"{r.jump[0]:g}", seen(r.name)] for r in rows]
    last_conv = [r.name for r in rows if r.type == "Conv2d"][-1]
    shown = [measured[r.name] for r in rows if r.name in measured and
             (r.type == "MaxPool2d" or r.name in (rows[0].name, last_conv))]
    image = lab.shapes().images[0]  # the lab's shared held-out sample
    return (figure(lab, figure_to_png(receptive_fields_figure(shown, image)), "csc413-receptive-field",
                   f"The built-in shapes model ({size[1]}x{size[2]} input): for the centre unit of each layer, the "
                   f"mean |gradient| of its channels' sum w.r.t. the input over {n} uniform-noise images (sqrt "
                   "scale, Luo et al.'s 'effective receptive field'), over one test image; the dashed box is the "
                   f"receptive field computed from kernels, strides and paddings. In {agree} of {len(measured)} "
                   "layers the gradient's support is exactly the computed box; its mass sits near the centre.")
            + table(["layer", "type", "output", "receptive field", "jump (px)", "gradient support"], body,
                    numeric=(3, 4, 5)))


# ----------------------------------------------------------------------------- CSC413: FC as convolution


@experiment("csc413-fc-as-conv", "Fully connected layers as convolutions: sliding the classifier",
            decks=("csc413",), order=7,
            lecture="CSC413 lecture 7: 'FC layers can be expressed as CONV layers' (an FC layer with 4096 units "
                    "on a 7x7x512 volume is a 7x7 convolution with 4096 filters), which lets a network trained "
                    "on one image size run on larger images and give a map of outputs.")
def fc_as_conv(lab: Lab) -> Markup:
    from ...models.convolutional import fully_convolutional

    model = lab.model("digits")
    data = lab.digits("test")
    n = 64 if lab.quick else len(data)
    fcn = fully_convolutional(model, model.input_size)
    with torch.no_grad():
        ref = model(data.images[:n])
        dense = fcn(data.images[:n])
    gap = float((ref - dense.flatten(1)).abs().max())
    rows, cols = (2, 3) if lab.quick else (3, 5)
    g = torch.Generator().manual_seed(lab.seed)
    pick = torch.randperm(len(data), generator=g)[:rows * cols]
    canvas = _tile(data.images[pick], rows, cols)
    with torch.no_grad():
        scores = fcn(canvas[None])[0]
    side = model.input_size[-1]
    stride = _jump(model)
    aligned = scores[:, ::side // stride, ::side // stride].argmax(0).flatten()
    right = int((aligned == data.labels[pick]).sum())
    convs = [f"{name}: {m.kernel_size[0]}x{m.kernel_size[1]}" for name, m in fcn.net.named_modules()
             if isinstance(m, torch.nn.Conv2d)]
    fig = dense_map_figure(canvas, scores, model.classes, window=side, stride=stride)
    return (paragraph(f"underhood.models.fully_convolutional turns LeNet's fc1 (reading the flattened 16x5x5 map) "
                      f"into a 5x5 convolution with 120 filters and fc2, fc3 into 1x1 convolutions ({', '.join(convs)})"
                      f". On {n} test digits at 32x32 the converted network gives the same logits: largest "
                      f"difference {gap:.1e}.")
            + figure(lab, figure_to_png(fig), "csc413-fc-as-conv",
                     f"The converted LeNet slid over {rows}x{cols} test digits side by side "
                     f"({canvas.shape[1]}x{canvas.shape[2]} px): {scores.shape[1]}x{scores.shape[2]} outputs, one "
                     f"per 32x32 window every {stride} px, in one forward pass. On the {rows * cols} windows aligned "
                     f"with a digit it names {right} of {rows * cols} correctly; between digits it sees halves of "
                     "two and guesses."))


# ----------------------------------------------------------------------------- CSC413: global average pooling


@experiment("csc413-global-pooling", "Global average pooling: one network, several input sizes", decks=("csc413",),
            order=8,
            lecture="CSC413 lecture 7, 'One more idea': fully connected layers fix the input size; a convolution "
                    "with the hidden unit's kernel size, or global average pooling, lets the network work with "
                    "images of various sizes.")
def global_pooling(lab: Lab) -> Markup:
    from ...models.convolutional import fully_convolutional

    total = 64 if lab.quick else 512  # the lab's shared sample in quick mode
    n = total - 16
    specs = ("shapes",) if lab.quick else ("shapes", "shapes-resnet")
    every, big = lab.shapes(n=total), lab.shapes(n=total, size=96)
    small = every.images[:n], every.labels[:n]
    big = big.images[:n], big.labels[:n]
    resized = torch.nn.functional.interpolate(big[0], size=(64, 64), mode="bilinear", antialias=True,
                                              align_corners=False)
    rows, found = [], {}
    for spec in specs:
        model = lab.model(spec)
        found[spec] = [_accuracy(model, *small), _accuracy(model, *big), _accuracy(model, resized, big[1])]
        rows.append([spec, *(f"{a:.1%}" for a in found[spec])])
    model = lab.model("shapes")
    fcn = fully_convolutional(model, model.input_size, pooling="window")
    four, labels = every.images[-4:], every.labels[-4:]  # not among the n above
    mosaic = _tile(four, 2, 2)
    with torch.no_grad():
        scores = fcn(mosaic[None])[0]
    stride = _jump(model)
    corners = scores[:, ::64 // stride, ::64 // stride].flatten(1).T
    right = int((corners.argmax(1) == labels).sum())
    with torch.no_grad():
        alone = model(four)
    drift = float((corners - alone).abs().max())
    a64, a96, a_back = found["shapes"]
    fig = dense_map_figure(mosaic, scores, model.classes, window=64, stride=stride)
    return (paragraph(f"The built-in models end in global average pooling, so they accept any size: run unchanged "
                      f"on {n} held-out shapes at 64 px (the training size) and the same number drawn at 96 px. "
                      f"The shapes model scores {a64:.1%} at 64 px and {a96:.1%} at 96 px, where objects are 1.5x "
                      f"larger than any it was trained on; the 96-px images resized to 64 px give {a_back:.1%}. "
                      "Accepting a size is not the same as being invariant to scale.")
            + table(["model", "64 px", "96 px", "96 px resized to 64"], rows, numeric=(1, 2, 3))
            + figure(lab, figure_to_png(fig), "csc413-global-pooling",
                     "fully_convolutional(model, pooling='window') replaces the global pooling by an 8x8 average "
                     f"window over the 8x8 map (what it averaged at 64 px) and the linear layer by a 1x1 "
                     f"convolution: slid over 2x2 held-out images (128x128) it gives {scores.shape[1]}x"
                     f"{scores.shape[2]} predictions, one per 64-px window every {stride} px; the 4 windows aligned "
                     f"with an image are right for {right} of 4. Their logits differ from the images' own by up to "
                     f"{drift:.2f}: inside the mosaic, the convolutions' zero padding at a window's border reads the "
                     "neighbouring image."))


# ----------------------------------------------------------------------------- EE-559: dilation


@experiment("ee559-dilation", "Dilated convolution: sizes and receptive field", decks=("ee559",), order=95,
            lecture="EE-559 slides 172-194: a convolution with dilation d is a convolution with a kernel of size "
                    "1 + (k-1)d with only k non-zero taps; nn.Conv2d(1, 1, kernel_size=3, dilation=4) on a 1x1x20x30 "
                    "input gives 1x1x12x22. Stacked dilated convolutions grow the receptive field without adding "
                    "parameters (Yu and Koltun 2015).")
def dilation(lab: Lab) -> Markup:
    settings = [((20, 30), 3, 1, 0, 4), ((20, 30), 3, 1, 0, 1), ((20, 30), 3, 1, 4, 4), ((20, 30), 3, 2, 0, 4),
                ((64, 64), 3, 1, 2, 2), ((64, 64), 5, 2, 2, 3)]
    body, same = [], 0
    g = torch.Generator().manual_seed(lab.seed)
    for size, k, s, p, d in settings:
        ours = conv_output_size(size, k, stride=s, padding=p, dilation=d)
        conv = torch.nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)
        with torch.no_grad():
            theirs = tuple(conv(torch.randn(1, 1, *size, generator=g)).shape[2:])
        same += ours == theirs
        body.append([f"{size[0]}x{size[1]}", k, s, p, d, 1 + (k - 1) * d, "x".join(map(str, ours)),
                     "x".join(map(str, theirs))])
    conv = torch.nn.Conv2d(1, 1, 3, dilation=4)
    x = torch.randn(1, 1, 20, 30, generator=g, requires_grad=True)
    out = conv(x)
    (grad,) = torch.autograd.grad(out[0, 0, 6, 11], x)
    taps = int((grad[0, 0] != 0).sum())
    exact = torch.equal(grad[0, 0] != 0, support((20, 30), [(3, 1, 0, 4)], (6, 11)))
    return (figure(lab, figure_to_png(dilation_figure((20, 30), 3, 4)), "ee559-dilation",
                   f"The lecture's example: a 3x3 kernel with dilation 4 on a 20x30 input. torch gives an output of "
                   f"{'x'.join(map(str, out.shape[2:]))}; the gradient of output unit (6, 11) w.r.t. the input is "
                   f"non-zero on {taps} pixels, {'exactly' if exact else 'not'} the 3x3 taps drawn (red) spread "
                   "over a 9x9 span. Right: three such kernels stacked with dilations 1, 2, 4 see 3, 7 and 15 "
                   "inputs with 3 weights each.")
            + table(["input", "kernel", "stride", "padding", "dilation", "span 1+(k-1)d", "conv_output_size",
                     "nn.Conv2d"], body, numeric=range(1, 8))
            + paragraph(f"underhood.core.receptive.conv_output_size, floor((n + 2p - d(k-1) - 1)/s) + 1, agrees "
                        f"with nn.Conv2d on {same} of {len(settings)} settings."))

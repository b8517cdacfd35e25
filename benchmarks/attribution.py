"""The ``attribution`` section: each method's time over the raw batched passes it cannot avoid.

Every line compares an underhood method with a plain-PyTorch reference that replays the very
batches the method fed the model (its perturbed copies, at the auto batch size it resolved),
in the same run:

* occlusion, Score-CAM: ``with torch.no_grad(): model(batch)`` per batch; target <= 1.15x.
* SmoothGrad, integrated gradients: a forward and ``torch.autograd.grad`` of the class logit
  w.r.t. the batch (parameters frozen, as the methods run them, so neither side computes
  weight gradients); target <= 1.15x.
* LIME: those forwards plus a weighted ridge fit on as many rows (sklearn ``Ridge``, the
  ``lime`` package's surrogate); the segmentation is timed apart and given to both sides
  precomputed; target <= 1.15x. Then the ``lime`` package (the ``bench`` extra; skipped with a
  line when absent) on the same image, model, segmentation and batch size.
* Grad-CAM on 32 images: one forward + backward to the input of the same 32; target <= 1.0x.

So the method is charged for building its copies, for its clean forward(s) of the inputs
(the line counts those extra calls) and for its bookkeeping, and nothing else: the reference
has the same inputs and passes (forward cost depends on pixel values: the clean image
repeated ran ~15% faster than Score-CAM's masked copies, which would have charged the method
for its data). Auto batch sizes are resolved and cached first; both sides get a warm-up cut
short by a pre-hook after a few forwards; then they run in turn, best of ``repeat`` each
(:func:`run.timed`), so a burst of load from other processes hits both. cpu/wall is the lower
of the two sides' best runs: near 2 the machine was quiet; near 1 another process held a
core, and every op parallelised over 2 threads then waits for its descheduled thread
(milliseconds per op), which inflates the methods' small per-batch ops and clean forwards far
more than the reference's big batches: a MISS with cpu/wall near 1 says more about the load
than about the code.

Models: the built-in "shapes" VGG at 64x64 and a ResNet-18-sized network at 224x224 (random
weights; ``ShapesResNet`` cannot be configured to ResNet-18 size: 3x3 stride-1 stem, three
stages of one block each), with workloads kept small enough for the section to take a few
minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import underhood
from run import DEVICE, report, timed
from underhood import attribution
from underhood.attribution.perturbation import superpixels
from underhood.core import batching
from underhood.core.hooks import capture, hooked
from underhood.core.layers import last_conv
from underhood.models.architectures import BasicBlock


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (``BasicBlock``, layers [2, 2, 2, 2], widths 64-512, 7x7
    stride-2 stem + max-pool, 1000 classes; 11.7 M parameters), built here so no torchvision."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, w in enumerate((64, 128, 256, 512), 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, w, 1 if i == 1 else 2), BasicBlock(w, w)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass
class Case:
    """One model and the workload each method gets on it."""

    label: str                # model name in the printed lines
    model: nn.Module
    images: torch.Tensor      # [N, C, H, W]; methods take the first few
    repeat: int               # timed runs per side, best kept (at least 3 for the gradient family and gradcam)
    window: int               # occlusion
    stride: int
    n_occlusion: int          # images explained by occlusion
    scorecam_layer: str | None
    n_scorecam: int
    n_samples: int            # SmoothGrad samples
    steps: int                # IG steps
    n_grad: int               # images explained by SmoothGrad and IG
    lime_samples: int


def shapes_case() -> Case:
    model = underhood.load_model("shapes", device=DEVICE)
    images = underhood.datasets.shapes(32, seed=3).images.float().to(DEVICE)
    return Case("shapes", model, images, repeat=3, window=8, stride=4, n_occlusion=4, scorecam_layer=None,
                n_scorecam=8, n_samples=16, steps=16, n_grad=16, lime_samples=1000)


def resnet18_case() -> Case:
    torch.manual_seed(0)
    model = underhood.load_model(ResNet18(), device=DEVICE)
    images = underhood.datasets.shapes(32, size=224, seed=3).images.float().to(DEVICE)
    return Case("resnet18", model, images, repeat=2, window=32, stride=16, n_occlusion=1, scorecam_layer="layer2",
                n_scorecam=1, n_samples=16, steps=16, n_grad=2, lime_samples=200)


# ----------------------------------------------------------------------------- helpers


class _Stop(Exception):
    """Raised from a forward pre-hook to cut a run short."""


@dataclass
class Calls:
    """What :func:`watched` saw: the batch size of each model call, and its input if kept."""

    sizes: list[int] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)


@contextlib.contextmanager
def watched(model: nn.Module, limit: int | None = None, keep: bool = False) -> Iterator[Calls]:
    """The calls of ``model`` in the block; ``keep`` holds on to their inputs (detached, not
    copied); with ``limit`` the block stops, silently, at call ``limit + 1``."""
    calls = Calls()

    def hook(module: nn.Module, args: tuple) -> None:
        if limit is not None and len(calls.sizes) >= limit:
            raise _Stop
        calls.sizes.append(int(args[0].shape[0]))
        if keep:
            calls.inputs.append(args[0].detach())

    with hooked(model, pre={model: hook}):
        try:
            yield calls
        except _Stop:
            pass


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without ``requires_grad`` for the block, as every attribution method runs them."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def batch_size(model: nn.Module, shape: tuple[int, ...], grad: bool) -> int:
    """The auto batch size the methods will use (measured under frozen parameters, then cached)."""
    with frozen(model):
        return batching.auto_batch_size(model, shape, grad=grad)


Batches = list[torch.Tensor]
Reference = Callable[[Batches], Callable[[], object]]  # the method's batches of copies -> the reference run


def forward_passes(model: nn.Module) -> Reference:
    def make(batches: Batches) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for x in batches:
                    model(x)
        return run
    return make


def gradient_passes(model: nn.Module, classes: torch.Tensor) -> Reference:
    """Forward + ``d logit[class] / d batch`` per batch; ``classes`` runs along the batches (cyclically)."""
    def make(batches: Batches) -> Callable[[], None]:
        ends = np.cumsum([len(x) for x in batches])
        picks = [classes[torch.arange(e - len(x), e) % len(classes), None] for x, e in zip(batches, ends)]

        def run() -> None:
            with frozen(model):
                for copies, c in zip(batches, picks):
                    x = copies.detach().requires_grad_(True)
                    torch.autograd.grad(model(x).gather(1, c).sum(), x)
        return run
    return make


@dataclass
class Timing:
    seconds: float = float("inf")  # best wall time
    cpu_wall: float = 0.0           # of that run
    calls: int = 0                  # model calls in one run
    images: int = 0                 # images through the model in one run


def versus(model: nn.Module, method: Callable[[], object], reference: Reference, *others: Callable[[], object],
           copies: int, repeat: int) -> list[Timing]:
    """``[method, reference, *others]`` timed in turn, ``repeat`` rounds, best of each.

    The method's first timed run keeps (references to) the batches it feeds the model; the
    last ``copies`` images of them, after its clean forwards, are the reference's inputs, in
    the same batches (holding them costs that run fresh allocations; the best of the rounds
    counts). Every side is warmed up first (cut short after 3 model calls; the
    reference on the inputs the method saw in its own warm-up).
    """
    with watched(model, 3, keep=True) as first:
        method()
    for fn in (reference(first.inputs), *others):
        with watched(model, 3):
            fn()
    best, fns = [Timing() for _ in range(2 + len(others))], [method, None, *others]
    for round_ in range(repeat):
        for i, t in enumerate(best):
            with watched(model, keep=round_ == 0 and i == 0) as calls:
                seconds, cw = timed(fns[i], 1)
            if round_ == 0:
                t.calls, t.images = len(calls.sizes), sum(calls.sizes)
            if i == 0 and round_ == 0:
                batches = calls.inputs
                while sum(len(x) for x in batches) > copies:  # the clean forwards come first
                    batches = batches[1:]
                if sum(len(x) for x in batches) != copies:
                    raise RuntimeError(f"the method fed the model {calls.sizes}, not {copies} copies after its "
                                       "clean forwards; fix the benchmark's count")
                fns[1] = reference(batches)
            if seconds < t.seconds:
                t.seconds, t.cpu_wall = seconds, cw
    return best


def line(name: str, got: Timing, ref: Timing, ref_label: str, target: float) -> None:
    """``method time vs reference time: ratio (target)``, and the model calls the method makes
    beyond the reference's (clean forwards of the inputs), with the images they carry."""
    ratio = got.seconds / ref.seconds
    extra = got.calls - ref.calls
    more = f" +{extra} call{'s' * (extra > 1)} ({got.images - ref.images} img)" if extra else ""
    report(name, f"{got.seconds:6.2f} s vs {ref.seconds:6.2f} s {ref_label}: {ratio:4.2f}x (<= {target:.2f}x)"
           f"{' MISS' if ratio > target else ''}{more}", min(got.cpu_wall, ref.cpu_wall))


def predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# ----------------------------------------------------------------------------- the methods


def bench_occlusion(case: Case) -> None:
    m, x, win, stride = case.model, case.images[:case.n_occlusion], case.window, case.stride
    h, w = x.shape[-2:]
    per = ((h - win) // stride + 1) * ((w - win) // stride + 1)
    method = lambda: attribution.occlusion(m, x, window=win, stride=stride)
    got, ref = versus(m, method, forward_passes(m), copies=len(x) * per, repeat=case.repeat)
    line(f"occlusion {case.label} w{win}/s{stride}", got, ref, f"{len(x)}x{per} fwd", 1.15)


def bench_scorecam(case: Case) -> None:
    m, x = case.model, case.images[:case.n_scorecam]
    layer = case.scorecam_layer or last_conv(m)
    with capture(m, layer) as cap, torch.no_grad():
        m(x)
    flat = cap.activations[layer].flatten(2)
    passes = int(((flat.amax(2) - flat.amin(2)) > 0).sum())  # scorecam scores each non-constant channel
    method = lambda: attribution.scorecam(m, x, layer=layer)
    got, ref = versus(m, method, forward_passes(m), copies=passes, repeat=case.repeat)
    line(f"scorecam {case.label} {layer}", got, ref, f"{passes} fwd", 1.15)


def bench_gradient_family(case: Case) -> None:
    m, x = case.model, case.images[:case.n_grad]
    classes = predicted(m, x)
    for name, method, per in (
        ("smoothgrad", lambda: attribution.smoothgrad(m, x, n_samples=case.n_samples), case.n_samples),
        ("integrated_grads", lambda: attribution.integrated_gradients(m, x, steps=case.steps), case.steps),
    ):
        reference = gradient_passes(m, classes.repeat_interleave(per))
        got, ref = versus(m, method, reference, copies=len(x) * per, repeat=max(case.repeat, 3))
        line(f"{name} {case.label}", got, ref, f"{len(x)}x{per} f+b", 1.15)


def bench_gradcam(case: Case) -> None:
    m, x = case.model, case.images[:32]
    method = lambda: attribution.gradcam(m, x)
    reference = gradient_passes(m, predicted(m, x))
    got, ref = versus(m, method, lambda batches: reference([x]), copies=0, repeat=max(case.repeat, 3))
    line(f"gradcam {case.label} batch {len(x)}", got, ref, "1 f+b", 1.0)


def bench_lime(case: Case, b: int) -> None:
    from sklearn.linear_model import Ridge

    m, x, n = case.model, case.images[:1], case.lime_samples
    seconds, cw = timed(lambda: superpixels(x, 50), case.repeat)
    seg = torch.unique(superpixels(x, 50), return_inverse=True)[1]  # labels 0..K-1
    k = int(seg.max()) + 1
    report(f"lime segmentation {case.label}", f"{seconds * 1e3:6.0f} ms SLIC, {k} superpixels (not in the lines below)",
           cw)

    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, (n, k)).astype(float)
    z[0] = 1
    y = rng.random(n)
    pi = np.exp(-(1 - z.sum(1) / (np.linalg.norm(z, axis=1) * k ** 0.5)) ** 2 / 0.25 ** 2)

    def reference(batches: Batches) -> Callable[[], None]:
        forwards = forward_passes(m)(batches)

        def run() -> None:
            forwards()
            Ridge(alpha=1.0).fit(z, y, sample_weight=pi)
        return run

    method = lambda: attribution.lime(m, x, n_samples=n, segments=seg)
    try:
        from lime import lime_image
    except ImportError:
        lime_image = None
    others = [lime_package(m, x, seg, n, b, lime_image)] if lime_image is not None else []
    got, ref, *pkg = versus(m, method, reference, *others, copies=n, repeat=case.repeat)
    line(f"lime {case.label} {n} samples", got, ref, f"{n} fwd+fit", 1.15)
    if lime_image is None:
        report(f"  lime package {case.label}", "skipped: `lime` is not importable (pip install underhood[bench])",
               1.0)
    else:
        speed_up = pkg[0].seconds / got.seconds
        report(f"  lime package {case.label} {n} samples",
               f"{pkg[0].seconds:6.2f} s vs underhood {got.seconds:6.2f} s: speed-up {speed_up:4.2f}x",
               min(pkg[0].cpu_wall, got.cpu_wall))


def lime_package(model: nn.Module, x: torch.Tensor, seg: torch.Tensor, n: int, b: int,
                 lime_image: object) -> Callable[[], None]:
    """``LimeImageExplainer.explain_instance`` on the same image, model, segmentation and batch size."""
    lime_image.tqdm = lambda rows, *a, **kw: rows  # its sample loop draws a progress bar on stderr
    image = x[0].permute(1, 2, 0).double().cpu().numpy()
    segments = seg[0].cpu().numpy()

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(batch).to(DEVICE, torch.float32).permute(0, 3, 1, 2).contiguous()
            return model(t).softmax(1).cpu().numpy()

    def run() -> None:
        lime_image.LimeImageExplainer(random_state=0).explain_instance(
            image, classifier_fn, top_labels=1, num_samples=n, batch_size=b, segmentation_fn=lambda img: segments)
    return run


def bench_occlusion_memory(case: Case, b: int, window: int = 32, batches: int = 4) -> None:
    """Occlusion with stride 1 on one image, cut short after ``batches`` batches of copies (the whole
    job takes many minutes): the largest batch the model sees, and the RSS growth between the
    starts of the first and of the next-after-last batch (each with its copies built), show that
    memory is bounded by the batch size, not by the number of copies."""
    m, x = case.model, case.images[:1]
    h, w = x.shape[-2:]
    copies = (h - window + 1) * (w - window + 1)
    rss: list[int | None] = []
    t0 = time.perf_counter()
    with hooked(m, pre={m: lambda module, args: rss.append(_rss())}):  # registered first: runs before watched's
        with watched(m, 1 + batches) as calls:  # the clean forward, then the batches of copies
            attribution.occlusion(m, x, window=window, stride=1)
    seconds = time.perf_counter() - t0
    full = copies * x[0].numel() * 4 / 2**30
    report(f"occlusion stride 1 {case.label} {h}x{w}",
           f"{copies} copies (w{window}); largest batch seen {max(calls.sizes[1:])} (auto {b})", 1.0)
    growth = (rss[-1] - rss[1]) / 2**20 if rss[1] is not None else float("nan")
    report(f"  (cut short after {batches} batches)",
           f"RSS {growth:+.0f} MiB over them; all copies at once {full:.1f} GiB; whole job ~"
           f"{seconds / batches * copies / b / 60:.0f} min", 1.0)


def _rss() -> int | None:
    """Resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def bench_attribution() -> None:
    for make in (shapes_case, resnet18_case):
        case = make()
        shape = tuple(case.images.shape[1:])
        t0 = time.perf_counter()
        b, bg = batch_size(case.model, shape, grad=False), batch_size(case.model, shape, grad=True)
        report(f"attribution, {case.label} {shape[1]}x{shape[2]}",
               f"auto batch {b} forward, {bg} grad (measured in {time.perf_counter() - t0:.0f} s)", 1.0)
        bench_occlusion(case)
        bench_scorecam(case)
        bench_gradient_family(case)
        bench_gradcam(case)
        bench_lime(case, b)
        if case.label == "resnet18":
            bench_occlusion_memory(case, b)

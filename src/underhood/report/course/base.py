"""What course experiments are made of: the lab they run in, the registry and the deck catalogue.

An experiment is ``fn(lab) -> Markup | None`` registered with :func:`experiment`: it reproduces one
figure or recipe of a lecture deck with the library's public functions and returns the HTML that
shows it (figures via :func:`underhood.report.base.figure`, tables, paragraphs), with a caption
that states the settings used and what this run found (numbers computed, never written by hand).
Each topic's experiments live in one module of this package; :func:`discover` imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from ...core.errors import InputError
from ..base import Context


@dataclass(frozen=True)
class Deck:
    """One lecture deck: its key, course, title, author and where it was published."""

    key: str
    course: str
    title: str
    author: str
    url: str
    file: str          # the deck's text under shared/lectures/ this catalogue was made from


DECKS: dict[str, Deck] = {d.key: d for d in (
    Deck("map583", "MAP583 Deep Learning (École polytechnique, 2019-2020)", "Part 6: Under the hood",
         "Andrei Bursuc", "https://abursuc.github.io/slides/polytechnique/06_under_hood.html",
         "000_806acbdea281ef3b.txt"),
    Deck("ee559", "EE-559 Deep Learning (EPFL)", "8. Under the hood", "François Fleuret",
         "https://fleuret.org/dlc/", "001_68d70b7f45af5c86.txt"),
    Deck("csc413", "CSC413 Neural Networks and Deep Learning",
         "Lecture 7: CNN feature visualisation and interpretation, transfer learning, adversarial examples, "
         "influence functions", "University of Toronto", "",
         "002_bbfa85c7bde8f90a.txt"),
    Deck("diy", "Deep Learning DIY", "Opening the black box", "Alexandre Sablayrolles",
         "", "003_8c8b320d1c00ac56.txt"),
    Deck("cmp784", "CMP784 Deep Learning (Hacettepe University, Fall 2023)",
         "Lecture 6: Understanding and visualizing convolutional neural networks", "Erkut Erdem",
         "", "004_e687f08dbd52e39c.txt"),
)}


_NO_DATA = ("it needs data or models that cannot ship offline with a pip package (real photographs, pretrained "
            "ImageNet networks, a camera or a printer)")
OUTSIDE: dict[str, tuple[tuple[str, str], ...]] = {
    "map583": (
        ("Houdini: fooling structured prediction (pose estimation, segmentation, speech recognition)",
         "underhood studies image classifiers; these attacks need pose, segmentation and speech models and data."),
        ("Attacks in the real world (printed photos, remotely hosted APIs, malware detectors)", _NO_DATA + "."),
    ),
    "csc413": (
        ("Adversarial examples in 3-D (a printed turtle misclassified from every angle)",
         "it needs a 3-D renderer, a 3-D printer and an ImageNet model; " + "underhood's attacks are 2-D images."),
        ("Printed adversarial examples that make object detection fail",
         "underhood studies classifiers; object detectors and printed scenes cannot ship offline."),
    ),
    "diy": (
        ("Understanding NLP models (word embeddings and their biases)",
         "underhood opens image models only; text models and corpora are out of its scope."),
        ("GAN dissection", "it needs a trained generative model of scenes and a segmentation corpus; the units of "
         "underhood's classifiers are dissected instead (see Network dissection above)."),
    ),
    "cmp784": (
        ("Segmentation without supervision: GrabCut on a saliency map",
         "GrabCut (OpenCV) and real photographs are not among underhood's dependencies and data; the saliency "
         "maps themselves are above, and their overlap with ground-truth masks is measured by "
         "underhood.attribution.metrics."),
        ("Grad-CAM beyond classification (image captioning, visual question answering)",
         "underhood explains image classifiers; captioning and VQA models cannot ship offline."),
        ("Adversarial examples in the physical world (photographed printouts, stop signs)", _NO_DATA + "."),
    ),
}
"""Per deck, what the lecture shows as motivation that underhood does not replay, and why."""


@dataclass
class Experiment:
    """A registered experiment: ``fn(lab)`` shows what ``lecture`` describes, on the decks listed."""

    id: str
    title: str
    decks: tuple[str, ...]
    lecture: str
    order: int
    fn: Callable[[Lab], Markup | None]
    subject: bool = False   # runs on the user's model (``lab.subject``, CLI ``--model``), not the built-in ones


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(id: str, title: str, *, decks: Sequence[str], lecture: str, order: int = 100, subject: bool = False):
    """Decorator registering ``fn(lab) -> Markup | None`` as the experiment ``id`` of each deck in ``decks``.

    ``subject=True``: the experiment shows the user's own model (``lab.subject``, a :class:`Subject`) and runs
    only when one is given (``underhood course --model SPEC``); its page section is "On your model".
    """
    unknown = [d for d in decks if d not in DECKS]
    if unknown or not decks:
        raise ValueError(f"decks: expected some of {sorted(DECKS)}, got {list(decks)!r}")

    def register(fn: Callable[[Lab], Markup | None]) -> Callable[[Lab], Markup | None]:
        EXPERIMENTS[id] = Experiment(id, title, tuple(decks), lecture, order, fn, subject)
        return fn
    return register


def discover() -> dict[str, Experiment]:
    """Import every topic module of :mod:`underhood.report.course` and return the registry."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in ("base", "pages"):
            importlib.import_module(f"{__package__}.{info.name}")
    return EXPERIMENTS


def deck_experiments(deck: str, *, subject: bool = False) -> list[Experiment]:
    """The experiments of one deck, in page order: those on the built-in models, or (``subject=True``) those
    on the user's model."""
    return sorted((e for e in discover().values() if deck in e.decks and e.subject == subject),
                  key=lambda e: (e.order, e.id))


@dataclass
class Subject:
    """The user's model and the images it is shown in the "On your model" experiments.

    ``labels`` are the true classes when the images are the model's own held-out set, else None (the
    experiments then explain the predicted class). ``key`` fingerprints the model's weights, its spec and the
    images, so a resumed course reuses only what was computed for this very model and these images.
    """

    spec: str
    model: Any
    images: Any            # [N, C, H, W] in [0, 1], on the CPU
    names: list[str]       # one per image: its file name, or "held-out #i"
    labels: Any = None
    key: str = ""

    @classmethod
    def of(cls, spec: str, model, images=None, names: Sequence[str] | None = None, *, n: int = 4) -> Subject:
        """``model`` (loaded from ``spec``) with ``images`` (``[N, C, H, W]``, e.g. from files), or, when None,
        the first ``n`` images of the held-out set of the data it was trained on (the built-in models)."""
        import hashlib

        import torch

        labels = None
        if images is None:
            dataset = getattr(model, "meta", {}).get("dataset")
            if dataset is None:
                raise InputError(f"images: {spec!r} comes with no held-out images; show it your own "
                                 "(CLI: --images a.jpg b.png)")
            from ...data import test_set
            data = test_set(dataset, n=n)
            images, labels = data.images, data.labels
            names = [f"held-out #{i}" for i in range(len(images))]
        images = torch.as_tensor(images).detach().float().cpu()
        if images.ndim != 4 or len(images) == 0:
            raise InputError(f"images: expected a [N, C, H, W] batch of at least one image, got shape "
                             f"{tuple(images.shape)}")
        names = list(names) if names is not None else [f"image #{i}" for i in range(len(images))]
        if len(names) != len(images):
            raise InputError(f"names: {len(names)} names for {len(images)} images; give one per image")
        digest = hashlib.sha256(spec.encode())
        for t in [*model.state_dict().values(), images]:  # the raw bytes of every dtype (bfloat16 included)
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return cls(spec, model, images, names, labels, digest.hexdigest()[:16])


class Lab(Context):
    """Where experiments run: cached built-in models and data, ``quick`` for the test lane's small settings.

    A :class:`~underhood.report.base.Context` (so :func:`~underhood.report.base.figure` writes under
    ``out/figures``), except that ``model`` is a method: ``lab.model("shapes")`` loads a model once per
    course run. ``lab.context(spec)`` gives the plain report context of one model, to reuse a report
    section as it is.
    """

    def __init__(self, out: str | Path, *, quick: bool = False, seed: int = 0, device: str = "cpu",
                 options: dict[str, Any] | None = None, subject: Subject | None = None) -> None:
        self.out = Path(out)
        self.quick = bool(quick)
        self.seed = int(seed)
        self.device = device
        self.spec = "course"
        self.data = None
        self.options = dict(options or {})
        self.cache: dict[str, Any] = {}
        self.figures: list[str] = []
        self.subject = subject

    @classmethod
    def make(cls, out: str | Path, *, quick: bool = False, seed: int = 0, device: str = "cpu",
             subject: Subject | None = None) -> Lab:
        return cls(out, quick=quick, seed=seed, device=device, subject=subject)

    def model(self, spec: str = "shapes"):  # type: ignore[override]
        """The model ``spec`` (as :func:`underhood.load_model` reads it), loaded once per lab, in eval mode."""
        key = f"model:{spec}"
        if key not in self.cache:
            from ...models import load_model
            self.cache[key] = load_model(spec, device=self.device)
        return self.cache[key]

    def shapes(self, n: int = 64, *, size: int = 64, seed: int | None = None, spurious: float = 0.0):
        """``n`` held-out shapes images (the held-out seed unless ``seed`` is given), made once per lab."""
        from ...data import SHAPES_TEST_SEED, shapes
        seed = SHAPES_TEST_SEED if seed is None else seed
        key = f"shapes:{n}:{size}:{seed}:{spurious}"
        if key not in self.cache:
            self.cache[key] = shapes(n, size=size, seed=seed, spurious=spurious)
        return self.cache[key]

    def digits(self, split: str = "test", *, size: int = 32):
        """The bundled digits split, made once per lab."""
        from ...data import digits
        key = f"digits:{split}:{size}"
        if key not in self.cache:
            self.cache[key] = digits(split=split, size=size)
        return self.cache[key]

    def context(self, spec: str = "shapes", *, n: int = 64) -> Context:
        """The report's context for model ``spec`` on its first ``n`` held-out images, sharing this lab's output."""
        key = f"context:{spec}:{n}"
        if key not in self.cache:
            from ...data import test_set
            model = self.model(spec)
            dataset = getattr(model, "meta", {}).get("dataset", "shapes")
            ctx = Context(model=model, spec=spec, data=test_set(dataset, n=n), out=self.out, seed=self.seed,
                          options={"full": not self.quick})
            ctx.figures = self.figures  # one list: every figure the course writes
            self.cache[key] = ctx
        return self.cache[key]


@dataclass
class Ran:
    """One experiment's outcome: its HTML (None: nothing to show here) and its cost."""

    experiment: Experiment
    body: Markup | None
    wall_s: float
    cpu_s: float
    figures: list[str] = field(default_factory=list)


def select(names: Iterable[str]) -> list[str]:
    """Deck keys from command-line names (``all`` = every deck), checked."""
    names = list(names) or ["all"]
    decks: list[str] = []
    for name in names:
        if name == "all":
            decks += [d for d in DECKS if d not in decks]
        elif name in DECKS:
            decks += [name] if name not in decks else []
        else:
            raise InputError(f"deck: expected one of {', '.join([*DECKS, 'all'])}, got {name!r}")
    return decks


def run(lab: Lab, experiments: Sequence[Experiment], *, progress: bool = False,
        on_done: Callable[[Ran], None] | None = None) -> dict[str, Ran]:
    """Run each experiment once on ``lab``, in order; ``on_done(ran)`` after each."""
    from tqdm.auto import tqdm

    done: dict[str, Ran] = {}
    bar = tqdm(experiments, desc="course", unit="experiment", disable=not progress)
    for e in bar:
        bar.set_postfix_str(e.id)
        before = len(lab.figures)
        start, cpu = time.perf_counter(), time.process_time()
        body = e.fn(lab)
        ran = Ran(e, None if body is None else Markup(body), time.perf_counter() - start,
                  time.process_time() - cpu, list(lab.figures[before:]))
        done[e.id] = ran
        if on_done is not None:
            on_done(ran)
    return done


def run_experiments(ids: Sequence[str], out: str | Path, *, quick: bool = True, seed: int = 0,
                    subject: Subject | None = None) -> dict[str, Markup]:
    """Run the experiments ``ids`` in a fresh lab writing under ``out``: id -> HTML (for tests and notebooks).

    The "On your model" experiments need ``subject`` (:meth:`Subject.of`)."""
    registry = discover()
    missing = [i for i in ids if i not in registry]
    if missing:
        raise InputError(f"ids: no experiment named {missing[0]!r}; `underhood course --list` names them")
    needs = [i for i in ids if registry[i].subject]
    if needs and subject is None:
        raise InputError(f"subject: {needs[0]!r} shows the user's model; pass subject=Subject.of(spec, model, "
                         "images)")
    lab = Lab.make(out, quick=quick, seed=seed, subject=subject)
    return {i: r.body for i, r in run(lab, [registry[i] for i in ids]).items()}


# ----------------------------------------------------------------------------- what the experiments share


def pick(labels: Iterable[int], n: int, *, of: int | None = None, besides: int | None = None,
         spread: bool = False) -> list[int]:
    """The indices of ``n`` images by their ``labels`` (a tensor or list), in order: only those of class ``of``, or
    of any class but ``besides``; with ``spread``, the first image of each class comes first (so a few rows show
    different classes).

    >>> pick([2, 2, 0, 1, 0], 3, spread=True)
    [0, 2, 3]
    >>> pick([2, 2, 0, 1, 0], 2, besides=2)
    [2, 3]
    """
    labels = [int(y) for y in labels]
    order = [i for i, y in enumerate(labels) if (of is None or y == of) and (besides is None or y != besides)]
    if spread:
        first: dict[int, int] = {}
        for i in order:
            first.setdefault(labels[i], i)
        leads = list(first.values())
        order = leads + [i for i in order if i not in leads]
    return order[:n]


def show(lab: Lab, fig: Any, name: str, caption: str, *extra: Markup, dpi: int = 110,
         most: int | None = None) -> Markup:
    """The matplotlib figure ``fig`` (or PNG bytes) as the page's figure ``name`` with ``caption``, then ``extra``
    (tables, paragraphs) below it.

    ``most``: show the PNG at its own pixel width, at most ``most`` pixels (its small text then keeps its size);
    None: as wide as the page.
    """
    from ...viz.render import figure_to_png
    from ..base import figure

    png = fig if isinstance(fig, bytes) else figure_to_png(fig, dpi=dpi)
    width = None if most is None else f"{min(most, int.from_bytes(png[16:20], 'big'))}px"
    body = figure(lab, png, name, caption, width=width)
    for part in extra:
        body += part
    return body

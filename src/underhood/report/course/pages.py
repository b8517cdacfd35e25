"""The course pages: one self-contained HTML page per deck, and an index."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from markupsafe import Markup

from ...core.io import write_text
from ...core.version import __version__
from .base import DECKS, OUTSIDE, Lab, Ran, Subject, deck_experiments, run

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def build(decks: Sequence[str], out: str | Path, *, quick: bool = False, seed: int = 0, device: str = "cpu",
          progress: bool = True, keep: str | Path | None = None, on_done: Callable[[Ran], None] | None = None,
          subject: Subject | None = None) -> dict:
    """Run the experiments of ``decks`` (each once, however many decks show it) and write the pages under ``out``.

    Writes ``<deck>.html`` per deck and ``index.html``, with every figure embedded (and saved under
    ``out/figures``). With ``keep`` (a folder that outlives the run), each finished experiment is stored
    there (its HTML, figures and timings, per quick/full setting and seed) and a rerun reuses it instead
    of running it again: an interrupted ``underhood course all`` resumes. With ``subject`` (the user's model
    and images, :class:`~underhood.report.course.base.Subject`), each page also gets the "On your model"
    experiments, kept per model, weights and images. Returns the timings:
    ``{"quick", "decks": {deck: {"experiments": [...], "wall_s", "cpu_s"}}, "figures": [...], "wall_s"}``.
    """
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    out = Path(out)
    lab = Lab.make(out, quick=quick, seed=seed, device=device, subject=subject)
    chosen = {d: deck_experiments(d) + (deck_experiments(d, subject=True) if subject is not None else [])
              for d in decks}
    unique = list({e.id: e for exps in chosen.values() for e in exps}.values())
    store = None if keep is None else Path(keep) / f"{'quick' if quick else 'full'}-seed{seed}"

    def kept(e) -> Path | None:
        return None if store is None else store / f"subject-{subject.key}" if e.subject else store
    ran = {e.id: r for e in unique if kept(e) is not None and (r := _restore(kept(e), e, out, lab)) is not None}

    def finished(r: Ran) -> None:
        if kept(r.experiment) is not None:
            _store(kept(r.experiment), r, out)
        if on_done is not None:
            on_done(r)
    ran.update(run(lab, [e for e in unique if e.id not in ran], progress=progress, on_done=finished))
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape())
    css = Markup((TEMPLATES / "report.css").read_text())
    script = Markup(re.search(r"<script>(.*?)</script>", (TEMPLATES / "report.html").read_text(), re.S).group(1))
    created = time.strftime("%Y-%m-%d %H:%M")
    timings: dict = {"quick": quick, "decks": {}, "figures": list(lab.figures)}
    about = None if subject is None else {"spec": subject.spec, "n": len(subject.images),
                                          "names": ", ".join(subject.names)}
    rows = []
    for key, exps in chosen.items():
        shown = [ran[e.id] for e in exps if ran[e.id].body is not None and not e.subject]
        yours = [ran[e.id] for e in exps if ran[e.id].body is not None and e.subject]
        seconds = sum(ran[e.id].wall_s for e in exps)
        html = env.get_template("course.html").render(
            title=f"underhood course: {DECKS[key].course}", deck=DECKS[key], ran=shown, yours=yours, subject=about,
            quick=quick, seconds=seconds, created=created, version=__version__, css=css, script=script,
            outside=OUTSIDE.get(key, ()))
        write_text(out / f"{key}.html", html)
        timings["decks"][key] = {"wall_s": seconds, "cpu_s": sum(ran[e.id].cpu_s for e in exps),
                                 "experiments": [{"id": e.id, "wall_s": ran[e.id].wall_s, "cpu_s": ran[e.id].cpu_s,
                                                  "shown": ran[e.id].body is not None} for e in exps]}
        rows.append({"key": key, "course": DECKS[key].course, "title": DECKS[key].title,
                     "author": DECKS[key].author, "count": len(shown) + len(yours), "seconds": seconds})
    total = sum(r.wall_s for r in ran.values())
    write_text(out / "index.html", env.get_template("course-index.html").render(
        decks=rows, total=len(ran), seconds=total, quick=quick, created=created, version=__version__, css=css,
        subject=about))
    timings["wall_s"] = total
    return timings


def _store(store: Path, r: Ran, out: Path) -> None:
    """Keep a finished experiment: its figures, then its HTML and timings (written last: it marks it complete)."""
    from ...core.io import write_bytes

    for name in r.figures:
        write_bytes(store / name, (out / name).read_bytes())
    write_text(store / f"{r.experiment.id}.html", str(r.body) if r.body is not None else "")
    write_text(store / f"{r.experiment.id}.json", json.dumps({
        "version": __version__, "wall_s": r.wall_s, "cpu_s": r.cpu_s, "figures": r.figures,
        "shown": r.body is not None}))


def _restore(store: Path, e, out: Path, lab: Lab) -> Ran | None:
    """A kept experiment of an earlier run of this version (its figures copied back into ``out``), or None."""
    from ...core.io import write_bytes

    meta_file = store / f"{e.id}.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("version") != __version__:
            return None
        for name in meta["figures"]:
            write_bytes(out / name, (store / name).read_bytes())
        body = (store / f"{e.id}.html").read_text()
    except (OSError, ValueError, KeyError):
        return None
    lab.figures += meta["figures"]
    return Ran(e, Markup(body) if meta.get("shown", True) else None, float(meta["wall_s"]), float(meta["cpu_s"]),
               list(meta["figures"]))

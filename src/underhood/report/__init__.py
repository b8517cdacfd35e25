"""One self-contained HTML report: every family contributes sections.

A family registers sections in its own ``report`` module (``underhood/<family>/report.py``)
with :func:`section`; :func:`build` discovers those modules, runs every section in order and
writes one HTML file with every picture embedded (no external request).
"""

from __future__ import annotations

import base64
import importlib
import pkgutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

import underhood


@dataclass
class Context:
    """What sections see: the model, a data sample, options and where to write figures."""

    model: Any
    spec: str
    data: Any                     # an ImageSet of held-out samples
    out: Path
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)   # sections may share computed results
    figures: list[str] = field(default_factory=list)     # files written under out/


@dataclass
class Section:
    """A rendered section: its anchor, title, HTML body and order in the report."""

    id: str
    title: str
    body: Markup
    order: int = 100
    seconds: float = 0.0


_SECTIONS: list[tuple[int, str, str, Callable[[Context], Markup]]] = []


def section(id: str, title: str, *, order: int = 100):
    """Decorator registering ``fn(ctx) -> Markup`` as a report section."""
    def register(fn: Callable[[Context], Markup]) -> Callable[[Context], Markup]:
        _SECTIONS[:] = [s for s in _SECTIONS if s[1] != id]
        _SECTIONS.append((order, id, title, fn))
        return fn
    return register


def discover() -> list[tuple[int, str, str, Callable[[Context], Markup]]]:
    """Import every ``underhood.<package>.report`` module and return the registered sections in order."""
    for info in pkgutil.iter_modules(underhood.__path__):
        if info.ispkg and info.name != "report":
            try:
                importlib.import_module(f"underhood.{info.name}.report")
            except ModuleNotFoundError as exc:
                if exc.name != f"underhood.{info.name}.report":
                    raise
    return sorted(_SECTIONS, key=lambda s: (s[0], s[1]))


def figure(ctx: Context, png: bytes, name: str, caption: str, *, width: str | None = None) -> Markup:
    """Embed a PNG (and save it as ``out/figures/<name>.png``) with a caption."""
    from ..core.io import write_bytes

    write_bytes(ctx.out / "figures" / f"{name}.png", png)
    ctx.figures.append(f"figures/{name}.png")
    data = base64.b64encode(png).decode("ascii")
    style = f' style="max-width:{width}"' if width else ""
    return Markup(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(name)}"{style}>'
                  f"<figcaption>{escape(caption)}</figcaption></figure>")


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = ()) -> Markup:
    """An HTML table; columns listed in ``numeric`` are right-aligned."""
    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(f'<{tag}{" class=num" if i in numeric else ""}>{escape(str(v))}</{tag}>'
                       for i, v in enumerate(values))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return Markup(f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>")


def paragraph(text: str) -> Markup:
    return Markup(f"<p>{escape(text)}</p>")


def build(ctx: Context, path: str | Path, *, progress: bool = True, only: Sequence[str] | None = None) -> Path:
    """Run every registered section on ``ctx`` and write the report to ``path`` atomically."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from tqdm.auto import tqdm

    from ..core.io import write_text

    registered = [s for s in discover() if only is None or s[1] in only]
    sections = []
    bar = tqdm(registered, desc="report", unit="section", disable=not progress)
    for order, sid, title, fn in bar:
        bar.set_postfix_str(sid)
        start = time.perf_counter()
        body = fn(ctx)
        sections.append(Section(sid, title, Markup(body), order, time.perf_counter() - start))
    env = Environment(loader=PackageLoader("underhood", "report/templates"), autoescape=select_autoescape())
    model = ctx.model
    html = env.get_template("report.html").render(
        title=f"underhood report: {ctx.spec}", spec=ctx.spec, sections=sections, version=underhood.__version__,
        created=time.strftime("%Y-%m-%d %H:%M"), classes=getattr(model, "classes", []),
        css=Markup((Path(__file__).parent / "templates" / "report.css").read_text()))
    return write_text(path, html)

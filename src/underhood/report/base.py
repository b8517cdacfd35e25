"""What report sections are made of: the context they see, the registry, and HTML helpers.

A section is ``fn(ctx) -> Markup`` registered with :func:`section`; each family's sections live in
``underhood/report/sections/<family>.py`` (adding a family adds one file there).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from ..core.io import write_bytes


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


SECTIONS: list[tuple[int, str, str, Callable[[Context], Markup]]] = []


def section(id: str, title: str, *, order: int = 100):
    """Decorator registering ``fn(ctx) -> Markup`` as a report section."""
    def register(fn: Callable[[Context], Markup]) -> Callable[[Context], Markup]:
        SECTIONS[:] = [s for s in SECTIONS if s[1] != id]
        SECTIONS.append((order, id, title, fn))
        return fn
    return register


def figure(ctx: Context, png: bytes, name: str, caption: str, *, width: str | None = None) -> Markup:
    """Embed a PNG (and save it as ``out/figures/<name>.png``) with a caption."""
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

"""What report sections are made of: the context they see, the registry, and HTML helpers.

A section is ``fn(ctx) -> Markup`` registered with :func:`section`; each family's sections live in
``underhood/report/sections/<family>.py`` (adding a family adds one file there).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
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
    style = f' style="max-width:min(100%, {width})"' if width else ""
    return Markup(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(name)}"{style}>'
                  f"<figcaption>{escape(caption)}</figcaption></figure>")


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = (),
          best: Mapping[int, str] | None = None) -> Markup:
    """An HTML table; columns listed in ``numeric`` are right-aligned.

    ``best`` maps a column index to ``"max"`` or ``"min"``: the cells of that column holding its
    best value (every tie) get the class ``best`` and a title saying so; cells that do not read
    as a finite number (``-``) are never best.
    """
    marks = _best_cells(rows, best or {})

    def cells(tag: str, values: Sequence[Any], r: int = -1) -> str:
        out = []
        for i, v in enumerate(values):
            cls = " ".join(c for c in ("num" if i in numeric else "", "best" if (r, i) in marks else "") if c)
            attrs = (f' class="{cls}"' if cls else "") + (' title="best in this column"' if (r, i) in marks else "")
            out.append(f"<{tag}{attrs}>{escape(str(v))}</{tag}>")
        return "".join(out)
    body = "".join(f"<tr>{cells('td', row, r)}</tr>" for r, row in enumerate(rows))
    return Markup(f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>")


def _best_cells(rows: Sequence[Sequence[Any]], best: Mapping[int, str]) -> set[tuple[int, int]]:
    """``(row, column)`` of every cell holding its column's best value (``best``: column -> "max" / "min")."""
    def value(v: Any) -> float | None:
        try:
            f = float(str(v).replace("%", "").replace("x", "").replace(",", "").strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None

    marks = set()
    for col, how in best.items():
        if how not in ("max", "min"):
            raise ValueError(f"best: expected 'max' or 'min' for column {col}, got {how!r}")
        found = [(r, value(row[col])) for r, row in enumerate(rows) if col < len(row)]
        found = [(r, v) for r, v in found if v is not None]
        if found:
            target = (max if how == "max" else min)(v for _, v in found)
            marks.update((r, col) for r, v in found if v == target)
    return marks


def paragraph(text: str) -> Markup:
    return Markup(f"<p>{escape(text)}</p>")

"""One self-contained HTML report: every family contributes sections.

A family's sections live in ``underhood/report/sections/<family>.py`` and register themselves
with :func:`section`; :func:`build` discovers those modules, runs every section in order and
writes one HTML file with every picture embedded (no external request). The report sits above
the families: sections import them, never the reverse.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from markupsafe import Markup

from ..core.io import write_text
from ..core.version import __version__
from . import sections as _sections_package
from .base import SECTIONS, Context, Section, figure, paragraph, section, table

__all__ = ["Context", "Section", "section", "figure", "table", "paragraph", "discover", "build"]


def discover() -> list[tuple[int, str, str, Callable[[Context], Markup]]]:
    """Import every ``underhood.report.sections.<family>`` module and return the registered sections in order."""
    for info in pkgutil.iter_modules(_sections_package.__path__):
        importlib.import_module(f"{_sections_package.__name__}.{info.name}")
    return sorted(SECTIONS, key=lambda s: (s[0], s[1]))


def build(ctx: Context, path: str | Path, *, progress: bool = True, only: Sequence[str] | None = None,
          timings: list[dict] | None = None) -> Path:
    """Run every registered section on ``ctx`` and write the report to ``path`` atomically.

    With a ``timings`` list, one ``{"id", "title", "wall_s", "cpu_s"}`` row per section is appended
    to it as the section finishes (CPU seconds of the whole process, every thread: ``time.process_time``).
    """
    from jinja2 import Environment, PackageLoader, select_autoescape
    from tqdm.auto import tqdm

    registered = [s for s in discover() if only is None or s[1] in only]
    sections = []
    bar = tqdm(registered, desc="report", unit="section", disable=not progress)
    for order, sid, title, fn in bar:
        bar.set_postfix_str(sid)
        start, cpu = time.perf_counter(), time.process_time()
        body = fn(ctx)
        if body is None:  # nothing to show for this context (e.g. hardware without a benchmark): left out
            continue
        wall = time.perf_counter() - start
        sections.append(Section(sid, title, Markup(body), order, wall))
        if timings is not None:
            timings.append({"id": sid, "title": title, "wall_s": wall, "cpu_s": time.process_time() - cpu})
    env = Environment(loader=PackageLoader("underhood", "report/templates"), autoescape=select_autoescape())
    model = ctx.model
    html = env.get_template("report.html").render(
        title=f"underhood report: {ctx.spec}", spec=ctx.spec, sections=sections, version=__version__,
        created=time.strftime("%Y-%m-%d %H:%M"), classes=getattr(model, "classes", []),
        css=Markup((Path(__file__).parent / "templates" / "report.css").read_text()))
    return write_text(path, html)

"""The explorer's web server: a FastAPI app over a :class:`~.workspace.Workspace`.

Routes live in ``routes_*.py`` modules, one per view; this module wires them, serves the page,
its static files (our own, plus plotly's JavaScript from the installed plotly package) and the
files of the output folder, and turns errors into JSON (404 unknown, 400 bad value, 413 too
large, 415 not an image). Nothing outside the static folder and the output folder is ever
served: a path is resolved and must stay inside its root, else 404.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..core.errors import LayerError, UnderhoodError
from .hosts import allowed, is_local
from .workspace import NotFound, TooLarge, Unsupported, Workspace

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"


def plotly_js() -> Path | None:
    """plotly.min.js from the installed plotly package (no CDN), or ``None`` without plotly."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it is a file inside ``root`` (after decoding and resolving), else ``None``."""
    text = unquote(unquote(relative))
    if "\x00" in text or text.startswith(("/", "\\")) or "\\" in text:
        return None
    try:
        root = root.resolve()
        path = (root / text).resolve()
    except (OSError, ValueError):
        return None
    if path != root and root not in path.parents:
        return None
    return path if path.is_file() else None


def status_of(exc: UnderhoodError) -> int:
    if isinstance(exc, (NotFound, LayerError)):
        return 404
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, Unsupported):
        return 415
    return 400


def create_app(workspace: Workspace, *, host: str = "127.0.0.1") -> Any:
    """The FastAPI application serving ``workspace``.

    While the server is bound to a loopback address, a request whose ``Host`` or ``Origin`` is not a
    loopback name is refused (403; see :mod:`.hosts`).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from . import routes_analysis, routes_core, routes_layer, routes_projector, routes_transfer

    app = FastAPI(title="underhood explorer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.ws = workspace
    app.state.loopback = is_local(host)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())

    @app.middleware("http")
    async def local_only(request: Request, call_next):
        if app.state.loopback and not allowed(request.headers.get("host"), request.headers.get("origin")):
            return JSONResponse({"error": "host: the explorer answers only pages of 127.0.0.1 / localhost"}, 403)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.exception_handler(UnderhoodError)
    async def underhood_error(request: Request, exc: UnderhoodError):
        return JSONResponse({"error": str(exc)}, status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid value')}"}, 422)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        from ..core.version import __version__

        ws = workspace
        html = env.get_template("index.html").render(
            models=list(ws.models), main=ws.main.id, version=__version__, data=ws.data_spec)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/static/{path:path}")
    def static(path: str) -> Response:
        if path == "plotly.min.js" and plotly_js() is not None:
            return FileResponse(plotly_js(), media_type="text/javascript")
        found = inside(STATIC, path)
        if found is None:
            return JSONResponse({"error": f"static: no file {path!r}"}, 404)
        return FileResponse(found, media_type=mimetypes.guess_type(found.name)[0] or "application/octet-stream")

    @app.get("/files/{path:path}")
    def files(path: str) -> Response:
        found = inside(workspace.out, path)
        if found is None or "cache" in found.relative_to(workspace.out.resolve()).parts[:1]:
            return JSONResponse({"error": f"files: no file {path!r} in the output folder"}, 404)
        return FileResponse(found, media_type=mimetypes.guess_type(found.name)[0] or "application/octet-stream")

    for module in (routes_core, routes_layer, routes_analysis, routes_projector, routes_transfer):
        app.include_router(module.router)

    return app


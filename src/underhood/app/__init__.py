"""The local web explorer (``underhood explore``): DeepVis for any PyTorch model, offline.

Needs the ``app`` extra (``pip install 'underhood[app]'``): FastAPI, uvicorn, python-multipart,
plotly. :func:`create_app` builds the FastAPI application over a :class:`Workspace`;
:func:`serve` runs it on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Workspace", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "Workspace":
        from .workspace import Workspace

        return Workspace
    if name == "create_app":
        from .server import create_app

        return create_app
    if name == "serve":
        from .run import serve

        return serve
    raise AttributeError(f"module 'underhood.app' has no attribute {name!r}")

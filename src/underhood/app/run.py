"""Start the explorer: check the ``app`` extra, bind 127.0.0.1 (or the host asked for), print the URL."""

from __future__ import annotations

import socket
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ..core.errors import InputError

NEEDED = ("fastapi", "uvicorn", "multipart", "jinja2")


def require_app() -> None:
    """A one-line error naming the fix when the ``app`` extra is missing."""
    import importlib.util

    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"explore: needs the app extra ({', '.join(missing)} missing); "
                         "install it with pip install 'underhood[app]'")


def free_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port=0``: a free port); a clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise InputError(f"--host: {host!r} is not an address of this machine ({exc.strerror}); leave --host out "
                         "for 127.0.0.1") from None
    except OSError as exc:
        sock.close()
        raise InputError(f"--port: cannot listen on {host}:{port} ({exc.strerror}); pick another port or "
                         "--port 0 for a free one (or check --host)") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(models: Sequence[Any] = ("shapes",), data: Any = None, *, host: str = "127.0.0.1", port: int = 0,
          out: str | None = None, browser: bool = True, device: str = "auto", upload_limit: int | None = None,
          trust: bool = False, ready: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Run the explorer until Ctrl-C (or until ``stop`` is set); prints ``http://HOST:PORT/`` when it listens.

    Binds 127.0.0.1 unless ``host`` says otherwise; any other host gets a warning, since the
    explorer runs the models on whatever the page sends.
    """
    require_app()
    import uvicorn

    from .hosts import is_local
    from .server import create_app
    from .workspace import UPLOAD_LIMIT, Workspace

    if not is_local(host):
        warnings.warn(f"explore: listening on {host}, not 127.0.0.1: anyone who can reach this machine can use "
                      "the explorer and run your model", stacklevel=2)
    sock = free_socket(host, port)
    workspace = Workspace(models, data, out=out, device=device, trust=trust,
                          upload_limit=UPLOAD_LIMIT if upload_limit is None else upload_limit)
    app = create_app(workspace, host=host)
    workspace.warm()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws_max_size=4 * 2**20)
    server = uvicorn.Server(config)
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)), daemon=True).start()
    print(f"underhood explorer on {url}  (Ctrl-C stops it; output in {workspace.out})", flush=True)
    if ready is not None:
        ready(url)
    if browser:
        import webbrowser

        threading.Timer(0.3, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        workspace.close()
        sock.close()
        sys.stdout.flush()

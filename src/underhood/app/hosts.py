"""Which requests a loopback explorer answers: its own pages only.

While bound to 127.0.0.1 the explorer answers a request only when its ``Host`` (and, when
present, its ``Origin``) names a loopback address: a page on another site can neither reach it
by DNS rebinding nor post to it (uploads, reports) or open its websocket from the user's browser.
"""

from __future__ import annotations

from urllib.parse import urlsplit

LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1", "testserver"}


def is_local(host: str) -> bool:
    """``host`` (a bare name or address) is this machine."""
    return host in LOCAL_HOSTS or host.startswith("127.")


def name_of(netloc: str) -> str:
    """The host name of a ``Host`` header or URL netloc, without the port (IPv6 keeps its brackets)."""
    return netloc.split("]")[0] + "]" if netloc.startswith("[") else netloc.rsplit(":", 1)[0]


def allowed(host: str | None, origin: str | None) -> bool:
    """A request with these ``Host`` and ``Origin`` headers comes from a loopback page."""
    names = [host or ""]
    if origin and origin != "null":
        names.append(urlsplit(origin).netloc)
    elif origin == "null":
        return False
    return all(not name or is_local(name_of(name)) for name in names)

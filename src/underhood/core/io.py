"""Atomic output: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .version import __version__

MANIFEST_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_manifest(out: str | os.PathLike, command: str, files: list[str], **info: Any) -> Path:
    """Write ``out/manifest.json`` (versioned) describing what a command produced."""
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "underhood_version": __version__,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": sorted(files),
        **info,
    }
    return write_text(Path(out) / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")


def write_tensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, Any] | None = None) -> Path:
    """Write named tensors to a ``.safetensors`` file atomically (metadata values are JSON-encoded)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v, default=str) for k, v in metadata.items()} if metadata else None)
    return Path(path)

"""Atomic output: write to a temporary file (or folder) beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError
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


MANIFEST = "manifest.json"


def check_out_dir(path: str | os.PathLike, *, keep: Iterable[str] = (), option: str = "--out") -> Path:
    """``path`` if a result folder can be written there; else a one-line :class:`InputError` naming the fix.

    It may be missing (its nearest existing ancestor must be a writable folder), empty, an earlier
    result (it holds ``manifest.json``) or hold only the ``keep`` entries (the resume state of an
    interrupted job); a file, or a folder of other files (which replacing it would delete), is refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option}: {str(path)!r} is a file, not a folder; give a folder path "
                         f"(e.g. {option} {path.with_suffix('')}-out) or move the file away")
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option}: cannot create {str(path)!r}: {str(ancestor)!r} is a file; give a path "
                         "under a folder")
    # the folder is replaced by renaming entries in its parent: both must be writable
    for folder in {ancestor, path.parent if path.exists() else ancestor}:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{option}: cannot write in {str(folder)!r} (permission denied); choose a folder "
                             f"you can write to, e.g. {option} ./underhood-out/{path.name}")
    if path.is_dir():
        entries = {e.name for e in path.iterdir()}
        if entries and MANIFEST not in entries and not entries <= set(keep):
            raise InputError(f"{option}: {str(path)!r} holds files that are not an underhood result (no "
                             f"{MANIFEST}), which writing the result there would replace; give a new or empty "
                             "folder")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, keep: Iterable[str] = (), option: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success its contents replace ``path``'s.

    Write a whole result into the yielded folder. When the block ends normally, the earlier
    contents of ``path`` are removed and the new ones moved in (a few renames, with Ctrl-C held off
    meanwhile); the entries named in ``keep`` (e.g. ``"shards"``: resume state written straight into
    ``path`` by an interruptible job) are carried over unless the new result has its own. When the
    block raises (an error, ``KeyboardInterrupt``), the temporary folder is removed and ``path`` is as
    it was. ``path`` is checked first with :func:`check_out_dir`.

    Example:
        >>> with atomic_dir(tmp / "result") as staging:          # doctest: +SKIP
        ...     (staging / "table.txt").write_text("...")
    """
    path = check_out_dir(path, keep=keep, option=option)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise InputError(f"{option}: cannot write beside {str(path)!r} ({exc.strerror}); choose a folder you can "
                         "write to") from None
    try:
        yield staging
        with _no_interrupt():
            _commit(staging, path, set(keep))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(staging: Path, path: Path, keep: set[str]) -> None:
    """Move ``staging``'s entries into ``path`` (created when missing), replacing what was there."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates 0700; give the folder the usual permissions
    if not path.exists():
        os.replace(staging, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    for entry in list(path.iterdir()):
        if entry.name in keep and not (staging / entry.name).exists():
            os.replace(entry, staging / entry.name)
        else:
            os.replace(entry, old / entry.name)
    for entry in list(staging.iterdir()):
        os.replace(entry, path / entry.name)
    staging.rmdir()
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold off SIGINT (Ctrl-C) during the block and deliver it afterwards (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple] = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])


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

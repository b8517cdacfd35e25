"""Background jobs of the explorer: a dataset scan, a render, an embedding.

A job runs in a worker thread, reports its progress (and a partial result, for work that
fills in as it goes, such as a streaming top-k), and can be cancelled: the work function
calls :meth:`Job.step` between chunks, which raises :class:`Cancelled` once the user asked.
Jobs are keyed by what they compute, so a second request for the same work joins the first.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UnderhoodError


class Cancelled(Exception):
    """Raised inside a job's work function when the job was cancelled."""


@dataclass
class Job:
    """One piece of background work and what the page sees of it."""

    id: str
    kind: str
    key: str
    status: str = "queued"          # queued, running, done, failed, cancelled
    progress: float = 0.0           # 0..1
    message: str = ""
    partial: Any = None             # what is known so far (JSON-able)
    result: Any = None              # the final result (JSON-able)
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def step(self, progress: float | None = None, message: str | None = None, partial: Any = None) -> None:
        """Report progress; raise :class:`Cancelled` when the job was cancelled (call between chunks)."""
        if self._cancel.is_set():
            raise Cancelled()
        if progress is not None:
            self.progress = max(0.0, min(1.0, float(progress)))
        if message is not None:
            self.message = message
        if partial is not None:
            self.partial = partial

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def view(self) -> dict[str, Any]:
        """The JSON the page polls: status, progress, message and the partial or final result."""
        return {"job": self.id, "kind": self.kind, "status": self.status, "progress": round(self.progress, 4),
                "message": self.message, "error": self.error,
                "result": self.result if self.status == "done" else self.partial}


def done_view(kind: str, result: Any) -> dict[str, Any]:
    """The view of a result found in the disk cache: done, with no job to poll or cancel."""
    return {"job": None, "kind": kind, "status": "done", "progress": 1.0, "message": "cached", "error": None,
            "result": result, "cached": True}


class Jobs:
    """Runs jobs in a small thread pool; one job per key (a repeated request joins the running one)."""

    def __init__(self, workers: int = 2, keep: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="underhood-job")
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def submit(self, kind: str, key: str, work: Callable[[Job], Any]) -> Job:
        """Start ``work(job)`` in the background, or return the job already running or done for ``key``.

        A failed or cancelled job is started again on the next request.
        """
        with self._lock:
            old = self._jobs.get(self._by_key.get(key, ""))
            if old is not None and old.status in ("queued", "running", "done"):
                return old
            job = Job(uuid.uuid4().hex[:12], kind, key)
            self._jobs[job.id] = job
            self._by_key[key] = job.id
            self._trim()
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        if job.cancelled:
            job.status, job.finished = "cancelled", time.time()
            return
        job.status = "running"
        try:
            result = work(job)
        except Cancelled:
            job.status = "cancelled"
        except UnderhoodError as exc:
            job.status, job.error = "failed", str(exc)
        except Exception as exc:  # a bug: keep the server alive, show the error on the page
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        else:
            job.result, job.progress, job.status = result, 1.0, "done"
        job.finished = time.time()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.status in ("queued", "running"):
            job._cancel.set()
            if job.status == "queued":
                job.status = "cancelled"
        return job

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed", "cancelled")]
        for job in finished[: max(0, len(self._jobs) - self._keep)]:
            self._jobs.pop(job.id, None)
            if self._by_key.get(job.key) == job.id:
                self._by_key.pop(job.key, None)

    def shutdown(self) -> None:
        for job in list(self._jobs.values()):
            job._cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

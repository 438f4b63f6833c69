"""The server-side audit as a background job (``POST /v1/review/audit/compute``; docs/api.md, "Audit jobs").

One job runs at a time, in its own thread: it decodes every auditable indexed video a chunk at a time, reports its
progress after each chunk, and stops at the next chunk once cancelled (nothing stored). When it finishes, the audit
replaces the current one in the review store, as an import does. A client that goes away does not stop it; a
``DELETE`` of the job does. The server keeps the last ``KEEP`` jobs in memory (they do not survive a restart).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.deps import redact_paths
from service.review import AuditCancelled, ReviewStore, compute_audit

log = logging.getLogger(__name__)
KEEP = 20
JOBS_PATH = "/v1/review/audit/jobs"
RUNNING = ("running", "cancelling")
SHUTDOWN_WAIT_S = 120.0  # how long a stopping server waits for a running job to reach its next chunk


@dataclass
class AuditJob:
    id: str
    state: str = "running"  # running | cancelling | done | failed | cancelled
    done: int = 0
    total: int | None = None  # the auditable videos, once counted
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def url(self) -> str:
        return f"{JOBS_PATH}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
        }


class JobRunning(Exception):
    def __init__(self, job: AuditJob) -> None:
        super().__init__(job.id)
        self.job = job


class AuditJobs:
    def __init__(self) -> None:
        self._jobs: OrderedDict[str, AuditJob] = OrderedDict()
        self._lock = threading.Lock()

    def running(self) -> AuditJob | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.state in RUNNING), None)

    def get(self, job_id: str) -> AuditJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[AuditJob]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def start(self, state: Any) -> AuditJob:
        """A new job computing the audit of ``state``'s index; ``JobRunning`` (with that job) while one runs."""
        with self._lock:
            busy = next((j for j in self._jobs.values() if j.state in RUNNING), None)
            if busy is not None:
                raise JobRunning(busy)
            job = AuditJob(secrets.token_hex(8))
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:  # the oldest finished ones go first (a running one is the newest)
                oldest = next(iter(self._jobs))
                self._jobs.pop(oldest)
        threading.Thread(target=self._run, args=(job, state), name=f"vidret-audit-{job.id}", daemon=True).start()
        return job

    def cancel(self, job: AuditJob) -> bool:
        """Ask a running job to stop (at its next chunk); False when it has already finished."""
        with self._lock:
            if job.state not in RUNNING:
                return False
            job.state = "cancelling"
            job.cancel.set()
            return True

    def shutdown(self, timeout: float = SHUTDOWN_WAIT_S) -> bool:
        """Cancel the running jobs and wait for their threads to stop (at their next chunk, storing nothing), so
        that the server closes its index only after nothing reads it; False if one is still running at ``timeout``."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.state in RUNNING]
            for job in jobs:
                job.state = "cancelling"
                job.cancel.set()
        deadline = time.monotonic() + timeout
        stopped = all(job.finished.wait(max(0.0, deadline - time.monotonic())) for job in jobs)
        if not stopped:
            log.warning("an audit job was still running %.0f s after the server asked it to stop", timeout)
        return stopped

    def _finish(self, job: AuditJob, state: str, **kw: Any) -> None:
        with self._lock:
            job.state, job.finished_at = state, time.time()
            for k, v in kw.items():
                setattr(job, k, v)
        job.finished.set()

    def _progress(self, job: AuditJob, done: int, total: int) -> None:
        with self._lock:
            job.done, job.total = done, total

    def _run(self, job: AuditJob, state: Any) -> None:
        try:
            metas, _ = state.index.snapshot()
            rows, counts = compute_audit(
                state.model,
                metas,
                progress=lambda done, total: self._progress(job, done, total),
                cancelled=job.cancel.is_set,
            )
            if job.cancel.is_set():
                raise AuditCancelled()
            if not rows:
                self._finish(
                    job,
                    "failed",
                    error="no indexed video could be audited: the checkpoint's classes must include its label "
                    f"and its file must be available ({counts['unknown_label']} with another label, "
                    f"{counts['missing_file']} without a file, {counts['undecodable']} undecodable)",
                )
                return
            info = ReviewStore(Path(state.settings.index)).replace_audit(rows, "computed")
            self._finish(job, "done", result={**info, **counts, "unknown_ids": 0})
        except AuditCancelled:
            self._finish(job, "cancelled")
        except Exception as exc:  # reported in the job (and the log), never lost
            log.exception("the audit job %s failed", job.id)
            self._finish(job, "failed", error=redact_paths(f"{type(exc).__name__}: {exc}"))


_attach = threading.Lock()


def audit_jobs(state: Any) -> AuditJobs:
    """The server's job registry (created on first use)."""
    jobs = getattr(state, "audit_jobs", None)
    if jobs is None:
        with _attach:
            jobs = getattr(state, "audit_jobs", None)
            if jobs is None:
                jobs = state.audit_jobs = AuditJobs()
    return jobs

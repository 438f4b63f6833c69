"""What keeps the index, the stored files and the review decisions in agreement.

* **One write per id at a time.** ``IdLocks`` serialises the writes that concern one id (an add's commit, a
  delete, a review decision): a decision is stored only while its video exists, and a delete removes the video,
  its file and its decision before another write of that id runs. So a decision never outlives its video, and an
  add answers with the entry it committed (never one that a racing delete removed in between).
* **At start** (``reconcile``): the decisions and audit rows naming no indexed video are removed (a server killed
  between a delete's commit and its decision's removal), and so are the files in ``videos/`` that no entry names
  (uploads of adds killed before their commit, or of adds the index refused).
* **A full disk** (``ENOSPC``, ``EDQUOT``, SQLite's ``SQLITE_FULL``) is answered 507 with a detail; every write
  either commits whole or leaves nothing behind (its transaction rolled back, its upload removed).
"""

from __future__ import annotations

import errno
import logging
import re
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("vidret.service")

INSUFFICIENT_STORAGE = 507
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
DISK_FULL_DETAIL = "insufficient storage: the server's disk is full; nothing was stored (free space and retry)"
# the files the server writes into videos/: an added video's copy (service.api.videos._stored_name) and an
# upload's temporary file (tempfile.mkstemp's "tmp" names); nothing else there is swept
STORED_FILE = re.compile(r"[0-9a-f]{12}_.*_[0-9a-f]{16}(\.[A-Za-z0-9]+)?|tmp[A-Za-z0-9_]{6,}(\.[A-Za-z0-9]+)?")


class IdLocks:
    """Striped locks by id: ``hold(id)`` serialises the writes of one id (and of the few ids sharing its stripe).
    Threading locks: take them in worker threads, never on the event loop."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextmanager
    def hold(self, vid: str) -> Iterator[None]:
        lock = self._locks[zlib.crc32(vid.encode("utf-8", "surrogatepass")) % len(self._locks)]
        with lock:
            yield


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the disk or quota is full."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
        ):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def install(app: FastAPI) -> None:
    """Answer a full disk with 507 and a detail on every route; any other error goes on as it would."""

    async def storage_error(_: Request, exc: Exception) -> JSONResponse:
        if not is_disk_full(exc):
            raise exc
        log.error("a write failed, the disk is full: %s", exc)
        return JSONResponse({"detail": DISK_FULL_DETAIL}, status_code=INSUFFICIENT_STORAGE)

    app.add_exception_handler(OSError, storage_error)
    app.add_exception_handler(sqlite3.Error, storage_error)


def forget_review(state: Any, vid: str) -> None:
    """Remove a deleted video's review (under its id's lock). When that fails (a full disk) the delete stands: the
    id is remembered, so that an add of it first removes the review (or is refused), and the next start sweeps it."""
    from service.review import ReviewStore

    try:
        ReviewStore(state.settings.index).forget(vid)
    except Exception:
        state.stale_reviews.add(vid)
        log.error("the review of deleted video %r could not be removed yet", vid, exc_info=True)


def orphan_files(folder: Path, metas: list[Any]) -> list[Path]:
    """The server's files in ``folder`` (videos/) that no entry's path names (compared by file name, which is
    unique per add: a moved index folder keeps its files)."""
    if not folder.is_dir():
        return []
    named = {Path(m.path).name for m in metas if m.path}
    return sorted(p for p in folder.iterdir() if p.is_file() and STORED_FILE.fullmatch(p.name) and p.name not in named)


def reconcile(index: Any, index_dir: Path, review: Any) -> dict[str, int]:
    """At start, before any request: remove the files of ``index_dir/videos`` that no entry names, and the
    decisions and audit rows (``review``, a ``ReviewStore``) of ids that are not indexed. Returns the counts."""
    metas = index.page()
    known = {m.id for m in metas}
    files = orphan_files(index_dir / "videos", metas)
    for p in files:
        p.unlink(missing_ok=True)
    stale = sorted({*review.decisions(), *(r.id for r in review.audit_rows())} - known)
    for vid in stale:
        review.forget(vid)
    if files or stale:
        log.warning(
            "start: removed %d file(s) in videos/ that no entry names and the review of %d id(s) not indexed",
            len(files),
            len(stale),
        )
    return {"files": len(files), "reviews": len(stale)}

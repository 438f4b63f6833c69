"""An exclusive lock on an index folder: one process at a time serves (and so writes) a FAISS index folder.

Two servers on one folder would each snapshot their own view: one's snapshot trims the other's journal, and the
folder no longer loads. ``lock_folder`` takes ``fcntl.flock`` on ``FOLDER/LOCK_FILE`` and writes the holder's PID
into it. The kernel releases a flock when its process ends, however it ends (a ``kill -9`` leaves no stale lock);
the file itself stays and is harmless. Within one process the lock is shared: every ``lock_folder`` of the same
folder returns a hold on the one open lock, released when the last hold is released (or the process exits).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

from indexing.errors import UserError

LOCK_FILE = "serve.lock"

_held: dict[Path, list] = {}  # resolved folder -> [fd, number of holds]
_guard = threading.Lock()


class FolderInUseError(UserError):
    """Another process holds the folder's lock; the message names the folder and that process's PID."""


class FolderLock:
    """One hold on a folder's lock (see ``lock_folder``); ``release`` it once, or let the process exit."""

    def __init__(self, folder: Path, counted: bool = True) -> None:
        self.folder = folder
        self._released = not counted  # a hold on a read-only file system locks nothing

    def release(self) -> None:
        with _guard:
            if self._released:
                return
            self._released = True
            entry = _held.get(self.folder)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self.folder]
                os.close(entry[0])  # closing the descriptor releases the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def lock_folder(folder: str | Path) -> FolderLock:
    """Take the exclusive lock of ``folder`` for this process, or raise ``FolderInUseError`` (a ``UserError``:
    one line naming the folder and the PID holding it) when another process holds it. Never waits."""
    path = Path(folder).resolve()
    with _guard:
        entry = _held.get(path)
        if entry is not None:
            entry[1] += 1
            return FolderLock(path)
        if not path.is_dir():
            raise UserError(f"{path}: index folder not found")
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.EROFS:  # a read-only file system: no process writes the folder through it
                return FolderLock(path, counted=False)
            raise UserError(f"{path}: cannot open the lock file {LOCK_FILE} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUseError(
                    f"{path}: the index folder is in use by another process (PID {pid}); stop it first, or serve "
                    f"another folder"
                ) from None
            raise UserError(f"{path}: cannot lock the index folder ({exc.strerror})") from None
        try:  # the holder's PID, for the error another process gets
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, its PID is just not readable
            pass
        _held[path] = [fd, 1]
        return FolderLock(path)

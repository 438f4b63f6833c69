"""Atomic, durable file writes: a temporary file in the same folder, flushed to disk, renamed over the target, and
the folder flushed so that the rename itself survives a power cut."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # mkstemp creates 0600 files; what we publish is readable like any other file


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries to disk: files created, renamed or removed in it stay so after a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], suffix: str = ".tmp") -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, flush it to disk, rename it over ``path``,
    then flush the folder: readers see the old file or the new one, never a part, and once this returns the new
    one survives a crash. ``suffix`` keeps the extension for writers that look at it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))

"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # mkstemp creates 0600 files; what we publish is readable like any other file



def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], suffix: str = ".tmp") -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, flush it to disk, then rename it over
    ``path``: readers see the old file or the new one, never a part. ``suffix`` keeps the extension for writers
    that look at it."""
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
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))

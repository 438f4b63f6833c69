"""Atomic writes: readers see the old file or the new one; a failed write leaves the old file and no debris."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from indexing.atomic import atomic_write, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.json", "old")

    def broken(fh) -> None:
        fh.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_published_files_are_readable_by_others(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "sub" / "x.bin", lambda fh: fh.write(b"\x00\x01"))
    assert target.read_bytes() == b"\x00\x01"
    assert target.stat().st_mode & 0o777 == 0o644


def test_the_file_is_on_disk_before_the_rename_and_the_rename_after_it(tmp_path: Path, monkeypatch) -> None:
    """What survives a power cut is only what was fsynced: the data before it is published, the folder after."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.json", "new")
    assert events == [("fsync", "file"), ("rename", "a.json"), ("fsync", "folder")]


def test_figures_are_written_in_the_format_of_their_extension(tmp_path: Path) -> None:
    from training.plots import plot_weights

    png = plot_weights(tmp_path / "w.png", [1.0, 8.0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plot_weights(tmp_path / "w.svg", [1.0])
    assert b"<svg" in svg.read_bytes()[:2000]

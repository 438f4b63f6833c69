"""indexing/lock.py: one process holds an index folder; another gets one line naming the folder and the PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from indexing.errors import UserError
from indexing.lock import LOCK_FILE, FolderInUseError, lock_folder

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
HOLD = "import sys, time; from indexing.lock import lock_folder; lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_another_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderInUseError) as err:
            lock_folder(tmp_path)
        msg = str(err.value)
        assert str(tmp_path.resolve()) in msg and f"PID {proc.pid}" in msg and "\n" not in msg
    finally:
        proc.send_signal(signal.SIGKILL)  # the kernel drops the lock with its process: no stale lock
        proc.wait()
    with lock_folder(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip().isdigit()


def test_holds_within_one_process_share_the_lock(tmp_path: Path) -> None:
    a = lock_folder(tmp_path)
    b = lock_folder(tmp_path / ".." / tmp_path.name)  # the same folder, spelt otherwise
    a.release()
    a.release()  # a second release of one hold does nothing
    proc = subprocess.run(
        [sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert proc.returncode != 0 and "in use by another process" in proc.stderr  # b still holds it
    b.release()
    free = _holder(tmp_path)  # free now
    free.kill()
    free.wait()


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="index folder not found"):
        lock_folder(tmp_path / "nope")

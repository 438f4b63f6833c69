"""`vidret serve` as real processes: one server per index folder (a second one fails at start, naming the folder
and the holder's PID), and files that adds killed by SIGKILL leave behind are swept at the next start."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import VIDRET
from tests.e2e.test_serve_process import Server, _free_port

AUTH = {"Authorization": "Bearer k"}


def test_a_second_server_on_one_folder_fails_at_start(index: Path, checkpoint: Path) -> None:
    first = Server(index, checkpoint).start()
    try:
        second = subprocess.run(
            [*VIDRET, "serve", "--index", str(index), "--port", str(_free_port()), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert str(index.resolve()) in lines[0] and f"PID {first.proc.pid}" in lines[0], lines[0]
        assert httpx.get(f"{first.url}/ready").status_code == 200  # the first one serves on
        first.kill()  # kill -9 leaves no stale lock: the kernel drops it with the process
        first.start()
        assert httpx.get(f"{first.url}/v1/index").json()["count"] == 18
    finally:
        first.stop()
    again = Server(index, checkpoint).start()  # released on a clean exit too
    again.stop()


def _named(index: Path) -> set[str]:
    """The names of the added videos' files that the metadata store's entries name (read from the folder, as the
    next start will)."""
    with sqlite3.connect(index / "metadata.sqlite") as conn:
        paths = [Path(p) for (p,) in conn.execute("SELECT path FROM videos") if p]
    return {p.name for p in paths if p.parent.name == "videos"}


def _adds_until_killed(server: Server, video: bytes, answered: int) -> None:
    """Adds from 4 threads until ``answered`` got their 201, then SIGKILL while others are in flight."""
    done, n = threading.Event(), iter(range(10**6))
    ok: list[int] = []

    def loop() -> None:
        while not done.is_set():
            try:
                r = httpx.post(
                    f"{server.url}/v1/videos",
                    files={"file": ("v.mp4", video, "video/mp4")},
                    data={"id": f"k{next(n)}", "label": "L"},
                    headers=AUTH,
                    timeout=60,
                )
                if r.status_code == 201:
                    ok.append(1)
            except httpx.HTTPError:
                return

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while len(ok) < answered and time.time() < deadline:
        time.sleep(0.02)
    server.kill()
    done.set()
    for t in threads:
        t.join()


def test_files_of_adds_killed_by_sigkill_are_swept_at_start(index: Path, checkpoint: Path, synth_dir: Path) -> None:
    video = (synth_dir / "videos" / "id0007" / "c1_s0.mp4").read_bytes()
    server = Server(index, checkpoint)
    left = 0
    try:
        for cycle in range(4):  # until a kill lands while an add's file is on disk without its entry
            server.start()
            _adds_until_killed(server, video, answered=3 * (cycle + 1))
            left = len({p.name for p in (index / "videos").iterdir()} - _named(index))
            if left:
                break
        assert left, "no kill landed during an add's store"
        server.start()
        on_disk = {p.name for p in (index / "videos").iterdir()}
        listing = httpx.get(f"{server.url}/v1/videos", params={"limit": 1000}).json()
        stored = {Path(v["path"]).name for v in listing["videos"] if v["path"].startswith("videos/")}
        assert on_disk == stored == _named(index)  # every file is an entry's, every added entry has its file
        assert listing["total"] == httpx.get(f"{server.url}/v1/index").json()["count"]
    finally:
        server.stop()
    assert os.path.exists(index / "serve.lock")

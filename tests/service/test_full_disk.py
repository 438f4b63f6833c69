"""A full disk (a real one: a 4 MiB tmpfs holding the index folder) answers 507 with a detail, stores nothing
half-way, and the server writes again once space is freed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.review import ReviewStore
from service.settings import Settings

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
PAGE = 4096


@pytest.fixture()
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip() or 'not allowed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` to its last byte, then free ``leave`` bytes (whole pages)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * PAGE)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_a_full_disk_answers_507_and_stores_nothing(
    small_disk: Path, fresh_index: Path, checkpoint: Path, synth_dir: Path
) -> None:
    index = small_disk / "index"
    shutil.copytree(fresh_index, index)
    (index / "videos").mkdir()
    video = (synth_dir / "videos" / "id0007" / "c1_s0.mp4").read_bytes()
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", api_key=KEY, snapshot_every=10**6)
    with TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False) as client:

        def add(vid: str):
            return client.post(
                "/v1/videos", files={"file": ("v.mp4", video, "video/mp4")}, data={"id": vid}, headers=AUTH
            )

        def unchanged() -> None:
            assert client.get("/v1/index").json()["count"] == 18
            assert client.get("/v1/videos", params={"limit": 1000}).json()["total"] == 18
            assert list((index / "videos").iterdir()) == []  # neither the upload nor its temporary file

        vid = client.get("/v1/videos", params={"limit": 1}).json()["videos"][0]["id"]
        # no room for the upload itself, then room for the upload but not for its entry's journal record
        for leave in (0, -(-len(video) // PAGE) * PAGE):
            filler = _fill(small_disk, leave)
            r = add("full")
            assert r.status_code == 507, r.text
            assert "disk is full" in r.json()["detail"]
            unchanged()
            filler.unlink()
        filler = _fill(small_disk, 0)
        r = client.put(f"/v1/review/decisions/{vid}", json={"action": "drop"}, headers=AUTH)
        assert r.status_code == 507, r.text
        filler.unlink()
        assert ReviewStore(index).decisions() == {}
        assert add("fine").status_code == 201  # nothing was left half-open: writes go on once there is room
        assert client.put(f"/v1/review/decisions/{vid}", json={"action": "drop"}, headers=AUTH).status_code == 200
        assert client.delete("/v1/videos/fine", headers=AUTH).status_code == 204
        assert client.get("/v1/index").json()["count"] == 18

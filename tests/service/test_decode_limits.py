"""Decode bombs: the frame size and frame count an upload's container declares are checked against
VIDRET_MAX_FRAME_PIXELS and VIDRET_MAX_FRAMES before any frame is decoded (413 with a detail); thumbnails are
cached, so views of a video decode it once, and a deleted video's thumbnail goes with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import training.data.video as video_mod
from service.app import create_app
from service.settings import Settings
from service.thumbnails import ThumbnailCache
from tests.conftest import write_container
from training.data.synth import write_mp4

KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _client(index: Path, checkpoint: Path, **kw) -> TestClient:
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", api_key=KEY, **kw)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any decoder call fails the test: the limits must be checked from the container's headers alone."""

    def refuse(*a, **k):
        raise AssertionError("a frame was decoded before the limits were checked")

    import training.data.npclip as npclip

    for name in ("_video_shape", "_decode_frames", "av_frames"):
        monkeypatch.setattr(video_mod, name, refuse)
    monkeypatch.setattr(npclip, "av_frames", refuse)  # the ONNX server's decoder


def _post(c: TestClient, path: Path, route: str = "/v1/videos"):
    data = {"id": "bomb", "label": "L"} if route == "/v1/videos" else {"k": "3"}
    return c.post(route, files={"file": (path.name, path.read_bytes(), "video/mp4")}, data=data, headers=AUTH)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_declared_frame_size_and_count_are_checked_before_decoding(
    fresh_index: Path, checkpoint: Path, tmp_path: Path, no_decoding: None, runtime: str
) -> None:
    if runtime == "onnx":  # the torch-free server (docker/Dockerfile.api) checks the same limits the same way
        pytest.importorskip("onnxruntime")
        from training.export import export_onnx

        export_onnx(checkpoint, tmp_path / "model.onnx")
        checkpoint = tmp_path / "model.onnx"
    big = tmp_path / "big.mp4"  # a few kB: 1 Mpixel frames
    write_mp4(big, np.zeros((2, 1024, 1024, 3), np.uint8))
    long_mp4 = tmp_path / "long.mp4"
    write_mp4(long_mp4, np.zeros((40, 32, 32, 3), np.uint8))
    long_mkv = write_container(tmp_path / "long.mkv", np.zeros((40, 32, 32, 3), np.uint8), "matroska", "mpeg4")
    assert video_mod.declared_shape(big) == (2, 1024, 1024)
    assert video_mod.declared_shape(long_mkv)[0] == 40  # no frame count in Matroska: duration x frame rate
    with _client(fresh_index, checkpoint, max_frame_pixels=640 * 480, max_frames=30) as c:
        count = c.get("/v1/index").json()["count"]
        for route in ("/v1/videos", "/v1/search/video"):
            r = _post(c, big, route)
            assert r.status_code == 413, r.text
            assert "1024x1024" in r.json()["detail"] and "VIDRET_MAX_FRAME_PIXELS=307200" in r.json()["detail"]
            for path in (long_mp4, long_mkv):
                r = _post(c, path, route)
                assert r.status_code == 413, r.text
                assert "declares 40 frames" in r.json()["detail"] and "VIDRET_MAX_FRAMES=30" in r.json()["detail"]
        assert c.get("/v1/index").json()["count"] == count
        assert not list((fresh_index / "videos").glob("*"))  # nothing kept


def test_headers_that_cannot_be_read_are_415(fresh_index: Path, checkpoint: Path, tmp_path: Path) -> None:
    good = tmp_path / "g.mp4"
    write_mp4(good, np.zeros((4, 32, 32, 3), np.uint8))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:64])  # an mp4 signature, then nothing
    with _client(fresh_index, checkpoint) as c:
        r = _post(c, cut)
        assert r.status_code == 415 and "the upload" in r.json()["detail"] and str(tmp_path) not in r.text


def test_thumbnails_are_decoded_once_and_forgotten_on_delete(
    fresh_index: Path, checkpoint: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import sources

    made = []
    real = sources.middle_frame_jpeg

    def counted(*a, **k):
        made.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(sources, "middle_frame_jpeg", counted)
    clip = synth_dir / "videos" / "id0001" / "c2_s1.mp4"
    with _client(fresh_index, checkpoint) as c:
        anyone = c.get("/v1/videos?limit=1").json()["videos"][0]["id"]
        first = c.get(f"/v1/videos/{anyone}/thumbnail")
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        for _ in range(5):  # anonymous views: no decoding after the first
            assert c.get(f"/v1/videos/{anyone}/thumbnail").content == first.content
        assert len(made) == 1
        for n in range(2):  # an added video, deleted, added again under its id: its own file is decoded again
            r = c.post("/v1/videos", files={"file": ("x.mp4", clip.read_bytes())}, data={"id": "new"}, headers=AUTH)
            assert r.status_code == 201, r.text
            assert c.get("/v1/videos/new/thumbnail").status_code == 200
            assert c.get("/v1/videos/new/thumbnail").status_code == 200
            assert len(made) == 2 + n
            cache = c.app.state.vidret.thumbnails
            assert any(k[0] == "new" for k in cache._items)
            assert c.delete("/v1/videos/new", headers=AUTH).status_code == 204
            assert not any(k[0] == "new" for k in cache._items)
            assert c.get("/v1/videos/new/thumbnail").status_code == 404


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = ThumbnailCache(max_bytes=10)
    keys = [(f"v{i}", "p", 1, 1, i) for i in range(4)]
    for k in keys[:2]:
        cache.get_or_make(k, lambda: b"1234")
    cache.get_or_make(keys[0], lambda: b"xxxx")  # a hit: v0 is now the most recent
    cache.get_or_make(keys[2], lambda: b"5678")
    assert cache.size <= 10 and len(cache) == 2 and keys[1] not in cache._items and keys[0] in cache._items
    assert cache.get_or_make(keys[3], lambda: b"x" * 11) == b"x" * 11 and keys[3] not in cache._items  # too big
    assert cache.hits == 1 and cache.misses == 4
    none = ThumbnailCache(0)
    assert none.get_or_make(keys[0], lambda: b"a") == b"a" and len(none) == 0

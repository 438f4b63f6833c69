"""Uploads are untrusted input: typed by their bytes, never read as frame lists, stored under the type their bytes
show, decoded even where decord cannot, and no answer shows a server path."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.conftest import write_container
from training.data.synth import write_mp4

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:tmp|home|root|var|work|usr|etc|private|Users)\b|[A-Za-z]:\\")


def _frames(n: int, h: int, w: int) -> np.ndarray:
    """Frame t has brightness 10 * t in its first channel."""
    f = np.zeros((n, h, w, 3), dtype=np.uint8)
    f[..., 0] = (10 * np.arange(n, dtype=np.uint8))[:, None, None]
    f[..., 1] = 128
    return f


@pytest.fixture()
def client(fresh_index: Path, checkpoint: Path):
    settings = Settings(index=fresh_index, checkpoint=checkpoint, device="cpu", api_key=KEY, max_upload_mb=1)
    with TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def video(synth_dir: Path) -> Path:
    return synth_dir / "videos" / "id0008" / "c2_s1.mp4"


@pytest.fixture()
def image_opens(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every image the server opens with Pillow, and every frame list or folder it lists."""
    import training.data.video as video

    opened: list = []
    real_open, real_files = Image.open, video.sources.frame_files
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    monkeypatch.setattr(video.sources, "frame_files", lambda p: opened.append(p) or real_files(p))
    return opened


def _frame_list(image: Path, sync_every_packet: bool) -> bytes:
    """A frame list naming ``image``: its first byte is G (the old one-byte MPEG-TS check), or a G starts every
    188-byte packet (it passes the real check) while every other line still names the image."""
    if sync_every_packet:
        return (b"G\n" + str(image).encode().ljust(185) + b"\n") * 24
    return b"G\n" + (str(image).encode() + b"\n") * 24


@pytest.mark.parametrize("sync_every_packet", [False, True])
def test_a_frames_upload_naming_a_server_image_is_415_and_never_opens_it(
    client: TestClient, tmp_path: Path, image_opens: list, sync_every_packet: bool
) -> None:
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    Image.fromarray(_frames(1, 64, 64)[0]).save(secret)
    details = []
    for target in (secret, secret.with_name("missing.png")):
        body = _frame_list(target.resolve(), sync_every_packet)
        r = client.post("/v1/search/video", files={"file": ("x.frames", body, "text/plain")}, data={"k": "3"})
        assert r.status_code == 415, r.text
        details.append(r.json()["detail"])
        r = client.post("/v1/videos", files={"file": ("x.frames", body)}, data={"id": "evil"}, headers=AUTH)
        assert r.status_code == 415, r.text
    assert image_opens == []
    assert details[0] == details[1]  # an existing and a missing server file look the same
    assert "secret" not in details[0] and not ABSOLUTE_PATH.search(details[0])
    assert client.get("/v1/videos/evil").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b"hello, I am text\n" * 40,
        b"G" + b"not a transport stream " * 40,  # the old one-byte MPEG-TS check let this through
        b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(64),
        b"\x89PNG\r\n\x1a\n" + bytes(64),
    ],
    ids=["text", "G-text", "wav", "png"],
)
def test_a_video_name_on_non_video_bytes_is_415(client: TestClient, fresh_index: Path, body: bytes) -> None:
    r = client.post("/v1/search/video", files={"file": ("clip.mp4", body, "video/mp4")})
    assert r.status_code == 415 and "not a video file" in r.json()["detail"]
    r = client.post("/v1/videos", files={"file": ("clip.mp4", body, "video/mp4")}, data={"id": "n"}, headers=AUTH)
    assert r.status_code == 415 and client.get("/v1/videos/n").status_code == 404
    assert not list((fresh_index / "videos").glob("*"))  # nothing left behind


def test_undecodable_uploads_say_why_without_a_server_path(client: TestClient, fresh_index: Path) -> None:
    for name, body in (("a.mp4", b"\x00\x00\x00\x18ftypisom" + bytes(600)), ("b.ts", (b"G" + bytes(187)) * 8)):
        r = client.post("/v1/videos", files={"file": (name, body)}, data={"id": "u"}, headers=AUTH)
        detail = r.json()["detail"]
        assert r.status_code == 415 and detail.startswith("the upload cannot be decoded as a video: "), detail
        # the headers are read (PyAV) before any decoder runs: their reason, and no path
        assert "cannot read the video's headers (" in detail and not ABSOLUTE_PATH.search(detail), detail
        assert str(fresh_index) not in detail and "tmp" not in detail
    assert not list((fresh_index / "videos").glob("*"))


def test_uploads_are_stored_under_the_type_their_bytes_show(
    client: TestClient, fresh_index: Path, video: Path, tmp_path: Path
) -> None:
    ts = write_container(tmp_path / "clip.ts", _frames(8, 32, 32), "mpegts", "libx264")
    for vid, name, data, ext in (
        ("as-mp4", "clip.frames", video.read_bytes(), ".mp4"),
        ("as-ts", "movie.mp4", ts.read_bytes(), ".ts"),
    ):
        r = client.post("/v1/videos", files={"file": (name, data)}, data={"id": vid}, headers=AUTH)
        assert r.status_code == 201, r.text
        path = r.json()["path"]
        assert path.startswith("videos/") and path.endswith(ext) and (fresh_index / path).read_bytes() == data
        thumb = client.get(f"/v1/videos/{vid}/thumbnail")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    r = client.post("/v1/search/video", files={"file": ("x.frames", ts.read_bytes())}, data={"k": "1"})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "as-ts"


def test_a_48px_upload_decord_cannot_decode_is_searched_added_and_thumbnailed(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w48.mp4"
    write_mp4(path, _frames(10, 26, 48))  # the checkpoint decodes at short side 27: 48 px wide, not resized
    caplog.set_level(logging.DEBUG, logger="training.data.video")
    r = client.post("/v1/videos", files={"file": ("w48.mp4", path.read_bytes())}, data={"id": "w48"}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert any("decoding it with PyAV" in rec.getMessage() for rec in caplog.records)
    r = client.post("/v1/search/video", files={"file": ("w48.mp4", path.read_bytes())}, data={"k": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == "w48" and r.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    thumb = client.get("/v1/videos/w48/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = np.asarray(Image.open(__import__("io").BytesIO(thumb.content)))
    assert img.shape == (26, 48, 3) and abs(img[..., 0].mean() - 40) < 8  # the middle frame: 4 of 0..9


def test_video_routes_show_no_server_path(client: TestClient, fresh_index: Path, video: Path) -> None:
    r = client.post("/v1/videos", files={"file": ("a.mp4", video.read_bytes())}, data={"id": "mine"}, headers=AUTH)
    assert r.status_code == 201
    stored = r.json()["path"]
    assert stored.startswith("videos/") and (fresh_index / stored).is_file()
    listing = client.get("/v1/videos", params={"limit": 1000})
    gallery = client.get("/v1/videos/id0008_c2_s1")
    assert gallery.json()["path"] == "c2_s1.mp4"  # a video indexed from a manifest: its file name
    bodies = [
        r,
        listing,
        gallery,
        client.get("/v1/videos/mine"),
        client.get("/v1/index"),
        client.get("/v1/videos/nope"),
        client.get("/v1/videos/nope/thumbnail"),
    ]
    for resp in bodies:
        assert str(fresh_index.resolve()) not in resp.text and str(fresh_index) not in resp.text, resp.text[:300]
        assert not ABSOLUTE_PATH.search(resp.text), resp.text[:300]
    assert listing.json()["total"] == 19 and {v["path"] for v in listing.json()["videos"]} >= {stored}

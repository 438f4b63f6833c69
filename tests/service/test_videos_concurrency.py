"""Two adds of one id at the same time: one 201, one 409, and the survivor's video and thumbnail stay intact."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import videos
from service.app import create_app
from service.settings import Settings

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_concurrent_adds_of_one_id_keep_the_winners_file(
    index_dir: Path, checkpoint: Path, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    uploads = {
        "A": (synth_dir / "videos" / "id0008" / "c2_s1.mp4").read_bytes(),
        "B": (synth_dir / "videos" / "id0009" / "c1_s1.mp4").read_bytes(),
    }
    assert uploads["A"] != uploads["B"]
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", api_key=KEY)
    with TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False) as client:
        real_embed, both_there = videos.embed_upload, threading.Barrier(2, timeout=60)

        def embed_together(*args, **kwargs):  # both adds are past the id check, each with its own upload stored
            both_there.wait()
            return real_embed(*args, **kwargs)

        monkeypatch.setattr(videos, "embed_upload", embed_together)
        answers: dict[str, object] = {}

        def post(label: str) -> None:
            answers[label] = client.post(
                "/v1/videos",
                files={"file": ("v.mp4", uploads[label], "video/mp4")},
                data={"id": "dup", "label": label},
                headers=AUTH,
            )

        threads = [threading.Thread(target=post, args=(label,)) for label in uploads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in answers.values()) == [201, 409], [r.text for r in answers.values()]
        winner = next(label for label, r in answers.items() if r.status_code == 201)
        loser = next(r for r in answers.values() if r.status_code == 409)
        assert "already exists" in loser.json()["detail"]
        info = client.get("/v1/videos/dup").json()
        assert info["label"] == winner
        assert (index / info["path"]).read_bytes() == uploads[winner]  # the winner's own bytes, still there
        assert [p.name for p in (index / "videos").iterdir()] == [Path(info["path"]).name]  # the loser's is gone
        thumb = client.get("/v1/videos/dup/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:2] == b"\xff\xd8"

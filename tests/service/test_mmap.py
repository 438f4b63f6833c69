"""`vidret serve --mmap`: an IVF index served memory-mapped answers searches as a loaded one does, and refuses
adds and deletes with 409 (nothing stored, nothing changed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from indexing.embeddings import Embeddings, l2_normalize
from indexing.faiss_index import VideoIndex
from service.app import create_app
from service.settings import Settings


def _client(index: Path, checkpoint: Path, mmap: bool) -> TestClient:
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", mmap=mmap)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


def test_a_mapped_index_searches_and_refuses_writes_with_409(checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    x = l2_normalize(np.random.default_rng(0).normal(size=(2000, 32)))
    emb = Embeddings([f"v{i}" for i in range(2000)], x, [f"p{i % 9}" for i in range(2000)], ["c1"] * 2000)
    VideoIndex.build(emb, tmp_path / "ix", type="ivf").close()
    queries = [{"embedding": x[i].tolist(), "k": 5} for i in (3, 400, 1999)]
    with _client(tmp_path / "ix", checkpoint, mmap=False) as c:
        loaded = [c.post("/v1/search", json=q).json()["results"] for q in queries]
    with _client(tmp_path / "ix", checkpoint, mmap=True) as c:
        assert [c.post("/v1/search", json=q).json()["results"] for q in queries] == loaded
        assert c.post("/v1/search", json={"id": "v3", "k": 1}).json()["results"][0]["id"] != "v3"  # itself excluded
        video = synth_dir / "videos" / "id0008" / "c2_s1.mp4"
        with open(video, "rb") as fh:
            r = c.post("/v1/videos", files={"file": ("a.mp4", fh, "video/mp4")}, data={"id": "new", "label": "x"})
        assert r.status_code == 409 and "read-only" in r.json()["detail"]
        r = c.delete("/v1/videos/v3")
        assert r.status_code == 409 and "--mmap" in r.json()["detail"]
        assert c.get("/v1/videos/v3").status_code == 200 and c.get("/v1/index").json()["count"] == 2000
    assert not (tmp_path / "ix" / "videos").exists() or not any((tmp_path / "ix" / "videos").iterdir())
    ix = VideoIndex.load(tmp_path / "ix")
    assert ix.count == 2000 and not ix.dirty
    ix.close()

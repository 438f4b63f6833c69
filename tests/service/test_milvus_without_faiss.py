"""The Milvus-only install (`pip install 'vidret[milvus]'`, no faiss): the service builds, serves and searches a
Milvus collection with FAISS unimportable (an import hook makes ``import faiss`` fail in a fresh interpreter, as it
does where faiss-cpu is not installed); the search coalescer runs without FAISS's thread setup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, sys

class NoFaiss(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "faiss":
            raise ModuleNotFoundError("No module named 'faiss'")

sys.meta_path.insert(0, NoFaiss())
sys.modules.pop("faiss", None)
import numpy as np
from fastapi.testclient import TestClient

from indexing.backend import build_index
from indexing.embeddings import Embeddings, l2_normalize, save_embeddings
from service.app import create_app
from service.settings import Settings

tmp = sys.argv[1]
x = l2_normalize(np.random.default_rng(0).normal(size=(30, 8))).astype(np.float32)
emb = Embeddings(np.array([f"v{i}" for i in range(30)]), x, np.array(["p"] * 30), np.array(["c"] * 30))
save_embeddings(f"{tmp}/g.npz", emb)
build_index("milvus", [f"{tmp}/g.npz"], milvus_uri=f"{tmp}/m.db", milvus_collection="gal").close()
settings = Settings(index=f"{tmp}/ix", backend="milvus", milvus_uri=f"{tmp}/m.db", milvus_collection="gal",
                    search_coalesce=8, device="cpu")
with TestClient(create_app(settings, load_in_background=False)) as c:
    assert c.get("/ready").status_code == 200, c.get("/ready").text
    assert c.app.state.vidret.searcher is not None
    for _ in range(3):
        r = c.post("/v1/search", json={"embedding": x[3].tolist(), "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == "v3"
    r = c.post("/v1/search", json={"id": "v5", "k": 2})
    assert r.status_code == 200 and r.json()["results"][0]["id"] != "v5", r.text
assert "faiss" not in sys.modules
print("OK")
"""


def test_the_milvus_backend_serves_without_faiss(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout[-2000:] + res.stderr[-3000:]

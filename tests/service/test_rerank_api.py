"""Re-ranking through the user's paths: `vidret evaluate --rerank` (index and gallery file) and POST /v1/evaluate
with "rerank": true, on clustered embeddings with cameras; both equal indexing/rerank.py's result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexing.embeddings import Embeddings, EmbeddingSource, save_embeddings
from indexing.faiss_index import VideoIndex
from indexing.metrics import evaluate_retrieval
from indexing.rerank import rerank_evaluate, rerank_evaluate_within
from service.app import create_app
from service.settings import Settings
from tests.conftest import run_cli


def _emb(rng, centres, n, prefix) -> Embeddings:
    lab = rng.integers(0, len(centres), n)
    x = centres[lab] + 0.9 * rng.normal(size=(n, centres.shape[1]))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    cams = [f"c{c}" for c in rng.integers(0, 3, n)]
    return Embeddings(
        [f"{prefix}{i}" for i in range(n)], x, [f"p{v}" for v in lab], cams, [f"{prefix}{i}.mp4" for i in range(n)]
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerank")
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(20, 24))
    q, g = _emb(rng, centres, 30, "q"), _emb(rng, centres, 150, "g")
    save_embeddings(root / "q.npz", q)
    save_embeddings(root / "g.npz", g)
    VideoIndex.build(EmbeddingSource.open([root / "g.npz"]), root / "ix", type="flat").close()
    return {"q": root / "q.npz", "g": root / "g.npz", "ix": root / "ix", "root": root}


def test_cli_rerank_from_the_index_and_from_a_gallery_file(files: dict[str, Path]) -> None:
    from indexing.embeddings import load_embeddings

    q, g = load_embeddings(files["q"]), load_embeddings(files["g"])
    want, _ = rerank_evaluate(q.embeddings, q.ids, q.labels, q.cameras, g.embeddings, g.ids, g.labels, g.cameras)
    plain = evaluate_retrieval(q.embeddings, q.ids, q.labels, q.cameras, g.embeddings, g.ids, g.labels, g.cameras)
    out = files["root"]
    res = run_cli("evaluate", "--index", files["ix"], "--queries", files["q"], "--rerank", "--json", out / "a.json")
    assert res.returncode == 0, res.stderr
    assert "re-ranked 180 items from their top-20 neighbourhoods" in res.stdout and "MiB" in res.stdout
    res = run_cli("evaluate", "--gallery", files["g"], "--queries", files["q"], "--rerank", "--json", out / "b.json")
    assert res.returncode == 0, res.stderr
    a, b = (json.loads((out / n).read_text()) for n in ("a.json", "b.json"))
    assert a["mAP"] == pytest.approx(want.mAP, abs=1e-6) and b["mAP"] == pytest.approx(want.mAP, abs=1e-6)
    assert a["rerank"] == {"k1": 20, "k2": 6, "lambda_value": 0.3} and a["mAP"] > plain.mAP
    res = run_cli("evaluate", "--index", files["ix"], "--queries", files["q"], "--rerank", "--depth", "5")
    assert res.returncode != 0 and "--depth" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("evaluate", "--gallery", files["g"], "--queries", files["q"], "--rerank", "--k2", "40")
    assert res.returncode != 0 and "--k2" in res.stderr and "Traceback" not in res.stderr


def test_api_rerank(files: dict[str, Path]) -> None:
    from indexing.embeddings import load_embeddings

    g = load_embeddings(files["g"])
    settings = Settings(index=files["ix"], device="cpu")
    with TestClient(create_app(settings, load_in_background=False)) as c:
        ids = [str(v) for v in g.ids[:40]]
        r = c.post("/v1/evaluate", json={"query_ids": ids, "rerank": True, "k1": 10, "k2": 3, "lambda_value": 0.2})
        assert r.status_code == 200, r.text
        from indexing.rerank import RerankParams

        want, _ = rerank_evaluate_within(
            g.embeddings, g.ids, g.labels, g.cameras, np.arange(40), params=RerankParams(10, 3, 0.2)
        )
        assert r.json()["mAP"] == pytest.approx(want.mAP, abs=1e-6)
        assert r.json()["num_queries"] == want.num_queries
        plain = c.post("/v1/evaluate", json={"query_ids": ids}).json()
        assert plain["mAP"] != r.json()["mAP"]
        for bad in ({"k1": 0}, {"k1": 5, "k2": 9}, {"lambda_value": 1.5}):
            r = c.post("/v1/evaluate", json={"all": True, "rerank": True, **bad})
            assert r.status_code == 422 and r.json()["detail"]


def test_api_evaluate_and_rerank_without_torch(files: dict[str, Path]) -> None:
    """POST /v1/evaluate, plain and re-ranked, on a server in a fresh process where ``import torch`` fails (the
    torch-free API image): the same figures as a server here."""
    import subprocess
    import sys

    bodies = [{"all": True}, {"all": True, "rerank": True, "k1": 10, "k2": 3}]
    script = f"""
import json, sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
with TestClient(create_app(Settings(index={str(files["ix"])!r}, device="cpu"), load_in_background=False)) as c:
    print(json.dumps([c.post("/v1/evaluate", json=b).json() for b in {bodies!r}]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    with TestClient(create_app(Settings(index=files["ix"], device="cpu"), load_in_background=False)) as c:
        want = [c.post("/v1/evaluate", json=b).json() for b in bodies]
    assert got == want and want[0]["num_queries"] > 0 and want[1]["mAP"] != want[0]["mAP"]

"""POST /v1/evaluate and /v1/evaluate/queries give each query the AP it has alone, however the queries are grouped:
the page's rank list asks for one query, its evaluation view for chunks (tests/indexing/test_metrics_grouping.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexing.embeddings import Embeddings, save_embeddings
from service.app import create_app
from service.settings import Settings
from tests.conftest import run_cli
from tests.indexing.test_metrics_grouping import SEEDS, copies_case


@pytest.fixture(scope="module")
def copies_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The copies case indexed: the query's video (q0) and its gallery, with the other queries' videos."""
    q, g = copies_case(SEEDS[0])
    items = Embeddings(
        np.concatenate([q.ids[:1], g.ids]),
        np.concatenate([q.embeddings[:1], g.embeddings]),
        np.concatenate([q.labels[:1], g.labels]),
        np.concatenate([q.cameras[:1], g.cameras]),
    )
    out = tmp_path_factory.mktemp("copies")
    save_embeddings(out / "all.npz", items)
    res = run_cli("index", "build", "--embeddings", out / "all.npz", "--out", out / "index")
    assert res.returncode == 0, res.stderr
    return out / "index"


def test_every_route_and_grouping_gives_the_ap_of_the_query_alone(copies_index: Path) -> None:
    with TestClient(create_app(Settings(index=copies_index, device="cpu"), load_in_background=False)) as client:
        ids = [v["id"] for v in client.get("/v1/videos", params={"limit": 500}).json()["videos"]]
        alone = {}
        for i in ids:
            one = client.post("/v1/evaluate", json={"query_ids": [i]}).json()
            if one["num_queries"]:
                alone[i] = one["mAP"]
        assert "q0" in alone and alone["q0"] < 1.0
        per = client.post("/v1/evaluate/queries", json={"all": True}).json()
        assert {q["id"]: q["ap"] for q in per["queries"] if q["ap"] is not None} == alone
        for chunk in (1, 7):  # the page's evaluation view asks in chunks
            for s in range(0, len(ids), chunk):
                part = client.post("/v1/evaluate/queries", json={"query_ids": ids[s : s + chunk]}).json()
                for q in part["queries"]:
                    assert q["ap"] == alone.get(q["id"]), (chunk, q)
        whole = client.post("/v1/evaluate", json={"all": True}).json()
        assert whole["mAP"] == pytest.approx(float(np.mean(list(alone.values()))), rel=1e-12)

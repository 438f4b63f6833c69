"""Fixtures of the service tests: an index of the fixture gallery, and a fresh copy of it per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def index_dir(embeddings: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat index of the fixture gallery, built by the real CLI (one per test module: modules may change it)."""
    out = tmp_path_factory.mktemp("index") / "index"
    res = run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture()
def fresh_index(index_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``index_dir`` that a test may change."""
    shutil.copytree(index_dir, tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture(scope="module")
def milvus_db(embeddings: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A milvus-lite database (a local-file URI) holding the fixture gallery as collection ``gallery``, built by
    the real CLI (`vidret index build --backend milvus`)."""
    db = tmp_path_factory.mktemp("milvus") / "gallery.db"
    res = run_cli(
        "index", "build", "--embeddings", embeddings["gallery"], "--type", "flat", "--backend", "milvus",
        "--milvus-uri", db, "--milvus-collection", "gallery",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return db


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def served(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """The Settings arguments of a fresh copy of the fixture gallery on ``backend``: the FAISS index folder, or a
    milvus-lite database (whose served ``index`` folder then holds only uploads and reviews)."""
    if backend == "faiss":
        return {"index": request.getfixturevalue("fresh_index")}
    db = tmp_path / "milvus.db"
    shutil.copy(request.getfixturevalue("milvus_db"), db)  # milvus-lite 2.5 keeps a database in one file
    return {"index": tmp_path / "data", "backend": "milvus", "milvus_uri": str(db), "milvus_collection": "gallery"}

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

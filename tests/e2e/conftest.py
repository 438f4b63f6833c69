"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture()
def index(embeddings: dict[str, Path], tmp_path: Path) -> Path:
    """A FAISS index of the session's gallery embeddings, built by `vidret index build`, the test's own copy."""
    assert run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", tmp_path / "ix").returncode == 0
    return tmp_path / "ix"

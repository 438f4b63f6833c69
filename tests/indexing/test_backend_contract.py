"""The IndexBackend contract (indexing/backend.py), the same checks on both backends: the FAISS index folder and a
Milvus collection (milvus-lite 2.5, a local .db URI), each built and opened through build_index / open_index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing.backend import (
    DuplicateIdError,
    IndexBackend,
    ReadOnlyIndexError,
    UnknownIdError,
    build_index,
    open_index,
)
from indexing.embeddings import Embeddings, l2_normalize, save_embeddings
from indexing.errors import UserError

N, DIM = 40, 8


def _emb(n: int = N, seed: int = 0, prefix: str = "v") -> Embeddings:
    x = np.random.default_rng(seed).normal(size=(n, DIM))
    return Embeddings(
        ids=np.array([f"{prefix}{i}" for i in range(n)]),
        embeddings=l2_normalize(x).astype(np.float32),
        labels=np.array([f"p{i % 4}" for i in range(n)]),
        cameras=np.array([f"c{i % 3}" for i in range(n)]),
        paths=np.array([f"/videos/{i}.mp4" for i in range(n)]),
    )


@pytest.fixture(params=["faiss", "milvus"])
def backend(request, tmp_path: Path):
    """(backend name, how to open it again, the embeddings it holds), built through build_index."""
    emb = _emb()
    save_embeddings(tmp_path / "g.npz", emb)
    kind = request.param
    where = {"milvus_uri": str(tmp_path / "m.db"), "milvus_collection": "gal"} if kind == "milvus" else {}
    out = tmp_path / "ix" if kind == "faiss" else None
    ix = build_index(kind, [tmp_path / "g.npz"], out, type="flat", **where)
    ix.close()

    def reopen(**kw) -> IndexBackend:
        return open_index(kind, out, **where, **kw)

    return kind, reopen, emb


def test_the_protocol_and_the_record(backend) -> None:
    kind, reopen, emb = backend
    ix = reopen()
    try:
        assert isinstance(ix, IndexBackend)
        assert (ix.count, ix.dim, ix.type, ix.metric, ix.read_only) == (N, DIM, "flat", "cosine", False)
        assert isinstance(ix.created, str) and ix.checkpoint_sha256 is None
        assert ix.ids() == [f"v{i}" for i in range(N)]  # build order
        m = ix.get("v5")
        assert (m.id, m.label, m.camera, m.path) == ("v5", "p1", "c2", "/videos/5.mp4") and ix.get("nope") is None
        assert np.allclose(ix.vector("v5"), emb.embeddings[5], atol=1e-6) and ix.vector("nope") is None
        assert [p.id for p in ix.page(10, 5)] == [f"v{i}" for i in range(10, 15)]
        metas, vecs = ix.snapshot()
        assert [m.id for m in metas] == ix.ids() and np.allclose(vecs, emb.embeddings, atol=1e-6)
    finally:
        ix.close()


def test_search_exact_exclude_filter_and_score(backend) -> None:
    _, reopen, emb = backend
    ix = reopen()
    try:
        q = emb.embeddings[:3]
        exact = np.argsort(-(q @ emb.embeddings.T), axis=1)[:, :5]
        hits = ix.search(q, 5)
        assert [[h.id for h in hs] for hs in hits] == [[f"v{i}" for i in row] for row in exact]
        assert all(abs(h.score - float(q[0] @ emb.embeddings[int(h.id[1:])])) < 1e-4 for h in hits[0])
        assert (hits[0][0].label, hits[0][0].camera) == ("p0", "c0")
        no_self = ix.search(q, 5, exclude_ids=["v0", None, "unknown"])
        assert "v0" not in [h.id for h in no_self[0]] and len(no_self[0]) == 5
        assert [h.id for h in no_self[1]] == [h.id for h in hits[1]]
        only = ix.search(q, 50, filter={"label": "p2", "exclude_camera": "c1"})
        assert all(h.label == "p2" and h.camera != "c1" for hs in only for h in hs)
        assert len(only[0]) == sum(1 for i in range(N) if i % 4 == 2 and i % 3 != 1)
        assert ix.search(q, 5, filter={"camera": "no such camera"}) == [[], [], []]
    finally:
        ix.close()


def test_bad_queries_are_user_errors(backend) -> None:
    _, reopen, _ = backend
    ix = reopen()
    try:
        with pytest.raises(UserError, match="dimension 3, the index has 8"):
            ix.search(np.zeros((1, 3), np.float32), 5)
        with pytest.raises(UserError, match="k must be >= 1"):
            ix.search(np.ones((1, DIM), np.float32), 0)
        with pytest.raises(UserError, match="expected 1 vectors of dimension 8"):
            ix.add(["x"], np.ones((1, 3), np.float32), ["p"], ["c"], [""])
        with pytest.raises(UserError, match="NaN or inf"):
            ix.add(["x"], np.full((1, DIM), np.nan, np.float32), ["p"], ["c"], [""])
    finally:
        ix.close()


def test_add_remove_errors_and_durability(backend) -> None:
    _, reopen, _ = backend
    ix = reopen()
    new = _emb(2, seed=5, prefix="w")
    try:
        ix.add(list(new.ids), new.embeddings, ["px", "px"], ["cx", "cx"], ["", ""])
        assert ix.count == N + 2 and ix.get("w1").label == "px" and ix.dirty
        hits = ix.search(new.embeddings[:1], 1, filter={"label": "px"})
        assert [h.id for h in hits[0]] == ["w0"]
        with pytest.raises(DuplicateIdError, match="'v3' already exists"):
            ix.add(["v3"], new.embeddings[:1], ["p"], ["c"], [""])
        with pytest.raises(DuplicateIdError):
            ix.add(["z", "z"], new.embeddings, ["p", "p"], ["c", "c"], ["", ""])
        ix.remove(["v3", "w0"])
        with pytest.raises(UnknownIdError, match="unknown id 'v3'"):
            ix.remove(["v3"])
        assert ix.get("v3") is None and ix.count == N
        assert "v3" not in [h.id for h in ix.search(ix.vector("v2")[None], N)[0]]
        ix.save()
        assert not ix.dirty
    finally:
        ix.close()
    again = reopen()
    try:
        assert again.count == N and again.get("v3") is None and again.get("w1").camera == "cx"
    finally:
        again.close()


def test_read_only_is_declared_and_refuses_writes(backend) -> None:
    kind, reopen, emb = backend
    if kind == "milvus":  # Milvus takes writes: read_only is False (the protocol's attribute, not a getattr)
        ix = reopen()
        assert ix.read_only is False
        ix.close()
        return
    ix = reopen(mmap=True)
    try:
        assert ix.read_only is True
        with pytest.raises(ReadOnlyIndexError):
            ix.add(["x"], emb.embeddings[:1], ["p"], ["c"], [""])
        with pytest.raises(ReadOnlyIndexError):
            ix.remove(["v1"])
        assert ix.search(emb.embeddings[:1], 1)[0][0].id == "v0"
    finally:
        ix.close()


def test_backend_choice_errors() -> None:
    with pytest.raises(UserError, match="--backend must be faiss or milvus, got 'x'"):
        open_index("x", "somewhere")
    with pytest.raises(UserError, match="--milvus-uri is required"):
        open_index("milvus")
    with pytest.raises(UserError, match="--nlist and --train-rows are for --backend faiss"):
        build_index("milvus", [], milvus_uri="m.db", nlist=4)

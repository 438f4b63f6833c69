"""Metadata filters on search (label, camera, exclude_camera), on FAISS (an ID selector) and on Milvus (milvus-lite:
a filter expression), against brute force over every vector and its metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing.embeddings import Embeddings, l2_normalize
from indexing.errors import UserError
from indexing.faiss_index import VideoIndex
from indexing.filters import SearchFilter, milvus_literal

N, DIM = 150, 16
# labels a filter expression must treat as plain text: quotes, backslashes, attempted injections (a tab or another
# control character cannot be stored: indexing/ids.py)
TRICKY = ['say "hi"', "back\\slash", 'x" or label != "', "it's", "a\\", "semi;colon", 'q\\" or 1 == 1 or "', "é ✓"]
LABELS = ["alice", "bob", "carol", *TRICKY]
CAMERAS = ["c1", "c2", "c3", 'c"4']


def _gallery(seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    return Embeddings(
        ids=np.array([f"v{i:03d}" for i in range(N)]),
        embeddings=l2_normalize(rng.normal(size=(N, DIM))).astype(np.float32),
        labels=np.array([LABELS[i % len(LABELS)] for i in range(N)]),
        cameras=np.array([CAMERAS[(i // 3) % len(CAMERAS)] for i in range(N)]),
        paths=None,
        checkpoint_sha256=None,
    )


GALLERY = _gallery()
FILTERS = [
    {"label": "alice"},
    {"camera": "c2"},
    {"exclude_camera": "c1"},
    {"label": "bob", "exclude_camera": "c3"},
    {"label": "carol", "camera": 'c"4'},
    {"camera": "c1", "exclude_camera": "c1"},  # contradictory: nothing
    {"label": "nobody"},
    *({"label": t} for t in TRICKY),
    {"label": 'alice" or label != "'},  # an injection: no video has this label
    {"exclude_camera": 'c"4'},
]


def brute_force(emb: Embeddings, q: np.ndarray, k: int, flt: dict, skip: str | None = None) -> list[tuple[str, float]]:
    """The k best (id, score) by inner product over every entry whose metadata match ``flt``, without ``skip``."""
    f = SearchFilter(**flt)
    keep = [
        i for i in range(len(emb.ids)) if f.matches(str(emb.labels[i]), str(emb.cameras[i])) and str(emb.ids[i]) != skip
    ]
    scores = emb.embeddings[keep] @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [(str(emb.ids[keep[j]]), float(scores[j])) for j in order]


@pytest.fixture(scope="module")
def faiss_flat(tmp_path_factory: pytest.TempPathFactory) -> VideoIndex:
    ix = VideoIndex.build(GALLERY, tmp_path_factory.mktemp("f") / "ix", type="flat")
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def milvus_flat(tmp_path_factory: pytest.TempPathFactory):
    from indexing.milvus import MilvusIndex

    ix = MilvusIndex.build(GALLERY, str(tmp_path_factory.mktemp("m") / "m.db"), "gallery", type="flat")
    yield ix
    ix.close()


@pytest.fixture(params=["faiss", "milvus"])
def flat(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_flat")


def test_milvus_literal_escapes_what_would_end_the_string() -> None:
    assert milvus_literal('a"b\\c') == '"a\\"b\\\\c"' and milvus_literal("t\tab") == '"t\tab"'
    for broken in ("x\ny", "x\ry"):  # Milvus's parser takes no raw line break, and reads no escape as one
        with pytest.raises(UserError, match="line break"):
            milvus_literal(broken)
    assert SearchFilter(label='x" or label != "').milvus_expr() == 'label == "x\\" or label != \\""'
    assert SearchFilter.of({"label": None, "camera": None}) is None and SearchFilter.of(None) is None
    with pytest.raises(TypeError):
        milvus_literal(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: repr(f)[:40])
def test_filtered_search_equals_brute_force(flat, flt: dict) -> None:
    queries = GALLERY.embeddings[[0, 7, 42]]
    skips = [str(GALLERY.ids[0]), None, str(GALLERY.ids[42])]
    for k in (3, 10, N + 5):  # N + 5: more than any filter matches
        got = flat.search(queries, k, exclude_ids=skips, filter=flt)
        for q, skip, hits in zip(queries, skips, got):
            want = brute_force(GALLERY, q, k, flt, skip)
            assert [h.id for h in hits] == [i for i, _ in want]
            assert [h.score for h in hits] == pytest.approx([s for _, s in want], abs=1e-5)
            f = SearchFilter(**flt)
            assert all(f.matches(h.label, h.camera) for h in hits)


def test_filter_matching_nothing_gives_empty_lists(flat) -> None:
    assert flat.search(GALLERY.embeddings[:2], 5, filter={"label": "nobody"}) == [[], []]
    assert flat.search(GALLERY.embeddings[:1], 5, filter={"label": 'alice" or label != "'}) == [[]]


def test_milvus_refuses_a_filter_value_with_a_line_break(milvus_flat) -> None:
    with pytest.raises(UserError, match="line break"):
        milvus_flat.search(GALLERY.embeddings[:1], 5, filter={"camera": "c1\n"})


def test_tricky_labels_match_exactly_on_both_backends(faiss_flat, milvus_flat) -> None:
    """Quotes and backslashes neither break a Milvus expression nor add terms to it: each tricky label finds its
    own videos, and both backends answer the same."""
    q = GALLERY.embeddings[5]
    for label in TRICKY:
        a = faiss_flat.search(q, N, filter={"label": label})[0]
        b = milvus_flat.search(q, N, filter={"label": label})[0]
        assert {h.label for h in a} == {h.label for h in b} == {label}
        assert [h.id for h in a] == [h.id for h in b] and len(a) == (GALLERY.labels == label).sum()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_filtered_approximate_indexes(kind: str, tmp_path: Path) -> None:
    """HNSW and IVF take the selector with their own efSearch / nprobe: every hit matches, hits come best first,
    recall against brute force stays high, and a removed video never comes back."""
    ix = VideoIndex.build(GALLERY, tmp_path / "ix", type=kind)
    flt = {"exclude_camera": "c1"}
    queries = GALLERY.embeddings[:20]
    got = ix.search(queries, 10, filter=flt)
    recall = np.mean(
        [len({h.id for h in hs} & {i for i, _ in brute_force(GALLERY, q, 10, flt)}) / 10 for q, hs in zip(queries, got)]
    )
    assert recall >= 0.9, recall
    for hs in got:
        assert all(h.camera != "c1" for h in hs) and [h.score for h in hs] == sorted(
            (h.score for h in hs), reverse=True
        )
    top = got[0][0].id
    ix.remove([top])
    assert top not in {h.id for h in ix.search(queries[:1], 10, filter=flt)[0]}
    ix.close()

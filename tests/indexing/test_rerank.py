"""k-reciprocal re-ranking from top-k neighbourhoods (indexing/rerank.py) against a plain full-matrix
implementation of the same definition, written here the textbook way (dense (q+g) x (q+g) matrices, loops)."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.errors import UserError
from indexing.rerank import RerankParams, exact_searcher, index_searcher, rerank_evaluate, rerank_evaluate_within


def full_matrix_rerank(x: np.ndarray, k1: int, k2: int, lam: float, metric: str) -> np.ndarray:
    """(n, n) final distances among all items: every pairwise distance, a full argsort, dense V."""
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) / (4 * (x**2).sum(1).max())
    rank = np.argsort(dist, axis=1, kind="stable")

    def recip(i: int, k: int) -> np.ndarray:
        return np.array([j for j in rank[i, : k + 1] if i in rank[j, : k + 1]], dtype=np.int64)

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        exp = list(r)
        for c in r:
            rc = recip(int(c), int(np.around(k1 / 2.0)))
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                exp.extend(rc)
        exp = np.unique(exp)
        w = np.exp(-dist[i, exp])
        v[i, exp] = w / w.sum()
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    s = np.minimum(v[:, None, :], v[None, :, :]).sum(-1)
    return (1 - lam) * (1 - s / (2 - s)) + lam * dist


def protocol(final, qi, ql, qc, gi, gl, gc, ks=(1, 5, 10)):
    """mAP and CMC by walking each query's sorted list (self and same label + camera removed)."""
    aps, firsts = [], []
    for a in range(len(final)):
        order = np.argsort(final[a], kind="stable")
        keep = [j for j in order if gi[j] != qi[a] and not (gl[j] == ql[a] and qc[a] != "" and gc[j] == qc[a])]
        rel = np.array([gl[j] == ql[a] for j in keep])
        if not rel.any():
            continue
        ranks = np.nonzero(rel)[0] + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        firsts.append(ranks[0])
    f = np.array(firsts)
    return float(np.mean(aps)), {k: float(np.mean(f <= k)) for k in ks}


def problem(nq=40, ng=160, dim=16, ids=25, seed=0, cams=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    ql, gl = rng.integers(0, ids, nq).astype(str), rng.integers(0, ids, ng).astype(str)
    q = (centres[ql.astype(int)] + 0.9 * rng.normal(size=(nq, dim))).astype(np.float32)
    g = (centres[gl.astype(int)] + 0.9 * rng.normal(size=(ng, dim))).astype(np.float32)
    qc, gc = rng.integers(0, cams, nq).astype(str), rng.integers(0, cams, ng).astype(str)
    qi, gi = np.array([f"q{i}" for i in range(nq)]), np.array([f"g{i}" for i in range(ng)])
    return q, qi, ql, qc, g, gi, gl, gc


@pytest.mark.parametrize(
    ("metric", "k1", "k2", "lam"), [("cosine", 20, 6, 0.3), ("l2", 9, 3, 0.5), ("cosine", 5, 1, 0)]
)
def test_same_scores_as_the_full_matrix_implementation(metric: str, k1: int, k2: int, lam: float) -> None:
    q, qi, ql, qc, g, gi, gl, gc = problem()
    ref = full_matrix_rerank(np.concatenate([q, g]), k1, k2, lam, metric)[: len(q), len(q) :]
    want_map, want_cmc = protocol(ref, qi, ql, qc, gi, gl, gc)
    got, stats = rerank_evaluate(
        q, qi, ql, qc, g, gi, gl, gc, metric=metric, params=RerankParams(k1, k2, lam), memory_budget_mb=0.05
    )
    assert stats.block_queries < len(q)  # several blocks
    assert abs(got.mAP - want_map) < 1e-6
    assert all(abs(got.cmc[k] - want_cmc[k]) < 1e-6 for k in want_cmc)
    assert stats.neighbours == k1 and stats.items == len(q) + len(g)


def test_rerank_helps_on_clustered_data_and_cameras_are_kept() -> None:
    from indexing.metrics import evaluate_retrieval

    q, qi, ql, qc, g, gi, gl, gc = problem(nq=60, ng=300, seed=3)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    plain = evaluate_retrieval(unit(q), qi, ql, qc, unit(g), gi, gl, gc)
    rr, _ = rerank_evaluate(q, qi, ql, qc, g, gi, gl, gc)
    assert rr.mAP > plain.mAP
    assert rr.num_queries == plain.num_queries and rr.skipped == plain.skipped
    no_cams, _ = rerank_evaluate(q, qi, ql, None, g, gi, gl, None)
    assert no_cams.num_queries == len(q)


def test_neighbourhoods_from_an_index_search(tmp_path) -> None:
    from indexing.embeddings import Embeddings, save_embeddings
    from indexing.faiss_index import VideoIndex

    q, qi, ql, qc, g, gi, gl, gc = problem(seed=5)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    save_embeddings(tmp_path / "g.npz", Embeddings(list(gi), unit(g), list(gl), list(gc), ["x"] * len(g)))
    from indexing.embeddings import EmbeddingSource

    ix = VideoIndex.build(EmbeddingSource.open([tmp_path / "g.npz"]), tmp_path / "ix", type="flat")
    metas, vecs = ix.snapshot()
    via_index, _ = rerank_evaluate(
        q, qi, ql, qc, vecs, [m.id for m in metas], [m.label for m in metas], [m.camera for m in metas],
        gallery_search=index_searcher(ix, [m.id for m in metas]),
    )  # fmt: skip
    exact, _ = rerank_evaluate(q, qi, ql, qc, unit(g), gi, gl, gc)
    assert abs(via_index.mAP - exact.mAP) < 1e-6 and via_index.cmc == exact.cmc
    ix.close()


def test_queries_within_the_gallery_match_the_full_matrix() -> None:
    _, _, _, _, g, gi, gl, gc = problem(ng=120, seed=7)
    rows = np.arange(0, 120, 3)
    got, _ = rerank_evaluate_within(g, gi, gl, gc, rows, params=RerankParams(10, 4, 0.3))
    ref = full_matrix_rerank(g, 10, 4, 0.3, "cosine")[rows]  # the items are the gallery alone
    want_map, want_cmc = protocol(ref, gi[rows], gl[rows], gc[rows], gi, gl, gc)
    assert abs(got.mAP - want_map) < 1e-6 and all(abs(got.cmc[k] - want_cmc[k]) < 1e-6 for k in want_cmc)


def test_bad_parameters_are_named() -> None:
    q, qi, ql, qc, g, gi, gl, gc = problem(nq=5, ng=20)
    for params, word in (
        (RerankParams(k1=0), "--k1"),
        (RerankParams(k2=30), "--k2"),
        (RerankParams(lambda_value=2), "--lambda"),
    ):
        with pytest.raises(UserError, match=word):
            rerank_evaluate(q, qi, ql, qc, g, gi, gl, gc, params=params)


def test_exact_searcher_is_nearest_first() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    found = exact_searcher(base)(base[:5], 3)
    assert (found[:, 0] == np.arange(5)).all()


def test_exact_searcher_breaks_ties_by_position() -> None:
    """Many exact ties (small integer vectors): the k nearest are those of a stable sort of the distances."""
    rng = np.random.default_rng(2)
    base = rng.integers(-1, 2, size=(400, 4)).astype(np.float32)
    x = rng.integers(-1, 2, size=(30, 4)).astype(np.float32)
    d = ((x[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    for k in (1, 9, 50, 400):
        assert (exact_searcher(base)(x, k) == np.argsort(d, axis=1, kind="stable")[:, :k]).all(), k

"""mAP / CMC against a brute-force reference of the protocol of docs/evaluation.md, and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from indexing.metrics import evaluate_ranked_lists, evaluate_retrieval


def brute_force(q, qi, ql, qc, g, gi, gl, gc, ks=(1, 5, 10), scores=None):
    """Per query: rank by (-score, gallery index), drop self and same label+camera, walk the list."""
    aps, firsts, skipped = [], [], 0
    for a in range(len(q)):
        s = g @ q[a] if scores is None else scores[a]
        order = sorted(range(len(g)), key=lambda j: (-s[j], j))
        keep = [j for j in order if gi[j] != qi[a] and not (qc[a] and gl[j] == ql[a] and gc[j] == qc[a])]
        rel = [gl[j] == ql[a] for j in keep]
        if not any(rel):
            skipped += 1
            continue
        hits, ap = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                hits += 1
                ap += hits / rank
        aps.append(ap / sum(rel))
        firsts.append(rel.index(True) + 1)
    return float(np.mean(aps)), {k: float(np.mean([f <= k for f in firsts])) for k in ks}, skipped


def _data(seed: int, cams: bool = True, g_n: int = 150, q_n: int = 30):
    rng = np.random.default_rng(seed)
    g = rng.integers(-2, 3, size=(g_n, 6)).astype(np.float32)  # small integers: exact scores, many exact ties
    gl = [f"p{x}" for x in rng.integers(0, 12, g_n)]
    gc = [f"c{x}" for x in rng.integers(0, 3, g_n)] if cams else [""] * g_n
    gi = [f"g{j}" for j in range(g_n)]
    idx = rng.choice(g_n, q_n, replace=False)  # queries are gallery items: self-matches must be dropped
    q = g[idx]
    return q, [gi[j] for j in idx], [gl[j] for j in idx], [gc[j] for j in idx], g, gi, gl, gc


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cams", [True, False])
def test_matches_brute_force_with_ties_cameras_and_self_matches(seed: int, cams: bool) -> None:
    data = _data(seed, cams)
    ref_map, ref_cmc, ref_skipped = brute_force(*data)
    res = evaluate_retrieval(*data, memory_budget_mb=1)  # tiny budget: several query blocks
    assert res.mAP == pytest.approx(ref_map, abs=1e-12)
    assert res.cmc == pytest.approx(ref_cmc, abs=1e-12)
    assert res.skipped == ref_skipped
    assert res.num_queries + res.skipped == len(data[0])


def test_ranked_lists_equal_exact_when_lists_are_complete() -> None:
    q, qi, ql, qc, g, gi, gl, gc = _data(3)
    s = q @ g.T
    lists = [[gi[j] for j in sorted(range(len(g)), key=lambda j: (-s[a, j], j))] for a in range(len(q))]
    exact = evaluate_retrieval(q, qi, ql, qc, g, gi, gl, gc)
    assert evaluate_ranked_lists(lists, qi, ql, qc, gi, gl, gc).mAP == pytest.approx(exact.mAP, abs=1e-12)
    # truncated lists can only lose precision
    short = evaluate_ranked_lists([lst[:5] for lst in lists], qi, ql, qc, gi, gl, gc)
    assert short.mAP <= exact.mAP + 1e-12 and short.cmc[5] == pytest.approx(exact.cmc[5])


def test_matches_sklearn_average_precision_without_ties() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(300, 16)).astype(np.float32)
    gl = [str(x) for x in rng.integers(0, 10, 300)]
    q = rng.normal(size=(20, 16)).astype(np.float32)
    ql = [str(x) for x in rng.integers(0, 10, 20)]
    res = evaluate_retrieval(q, [f"q{i}" for i in range(20)], ql, None, g, [f"g{j}" for j in range(300)], gl, None)
    ref = [average_precision_score([lab == ql[a] for lab in gl], g @ q[a]) for a in range(20)]
    assert res.mAP == pytest.approx(float(np.mean(ref)), abs=1e-6)


def test_queries_without_relevant_items_are_skipped_and_counted() -> None:
    g = np.eye(4, dtype=np.float32)
    res = evaluate_retrieval(
        np.eye(4, dtype=np.float32)[:2],
        ["a", "b"],
        ["x", "nobody"],
        ["c1", "c1"],
        g,
        ["g0", "g1", "g2", "g3"],
        ["x", "x", "y", "x"],
        ["c1", "c2", "c2", "c1"],
    )
    # query a: g0 and g3 share label and camera (junk), g1 is relevant; query b has no relevant item
    assert res.skipped == 1 and res.num_queries == 1
    assert res.to_json()["skipped"] == 1
    assert res.mAP == pytest.approx(1.0)  # g1 and g2 tie at 0: gallery order puts the relevant g1 first


def test_perfect_and_l2_metric() -> None:
    g = np.eye(3, dtype=np.float32)
    res = evaluate_retrieval(
        g, ["q0", "q1", "q2"], ["a", "b", "c"], None, g, ["g0", "g1", "g2"], ["a", "b", "c"], None, metric="l2"
    )
    assert res.mAP == 1.0 and res.cmc[1] == 1.0
    assert res.to_json() == {"mAP": 1.0, "cmc": {"1": 1.0, "5": 1.0, "10": 1.0}, "num_queries": 3, "skipped": 0}


@pytest.mark.parametrize("seed", range(4))
def test_query_ids_in_the_gallery_under_another_label_are_excluded(seed: int) -> None:
    """A query whose id is in the gallery with a different label: that item is the query itself, not a hit."""
    q, qi, ql, qc, g, gi, gl, gc = _data(seed)
    gl = list(gl)
    for j in range(0, len(gl), 7):  # relabel some gallery copies of the queries
        gl[j] = "other"
    ref_map, ref_cmc, ref_skipped = brute_force(q, qi, ql, qc, g, gi, gl, gc)
    res = evaluate_retrieval(q, qi, ql, qc, g, gi, gl, gc, memory_budget_mb=1)
    assert (res.mAP, res.cmc, res.skipped) == (pytest.approx(ref_map, abs=1e-12), pytest.approx(ref_cmc), ref_skipped)


def test_duplicate_gallery_vectors_rank_by_gallery_order() -> None:
    """Float embeddings with exact duplicates: ties between relevant and other items break by gallery index."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 8)).astype(np.float32)
    g = np.concatenate([base, base[::-1], base[:10]])  # every vector two or three times
    gl = [f"p{x}" for x in rng.integers(0, 6, len(g))]
    gc = [f"c{x}" for x in rng.integers(0, 3, len(g))]
    gi = [f"g{j}" for j in range(len(g))]
    q = rng.normal(size=(15, 8)).astype(np.float32)
    qi, ql, qc = [f"q{i}" for i in range(15)], [f"p{x}" for x in rng.integers(0, 6, 15)], ["c0"] * 15
    # the reference ranks the scores of one matrix product (numpy's matrix-vector products can round exact
    # duplicates differently depending on memory alignment, which would un-tie them)
    scores = (torch.from_numpy(q) @ torch.from_numpy(g).T).numpy()
    assert (scores[:, :40] == scores[:, 40:80][:, ::-1]).all()  # the duplicates really tie
    ref_map, ref_cmc, _ = brute_force(q, qi, ql, qc, g, gi, gl, gc, scores=scores)
    res = evaluate_retrieval(q, qi, ql, qc, g, gi, gl, gc)
    assert res.mAP == pytest.approx(ref_map, abs=1e-12) and res.cmc == pytest.approx(ref_cmc, abs=1e-12)

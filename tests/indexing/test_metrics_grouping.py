"""Each query's AP does not depend on how the queries are grouped: alone, in a block of 7 or of 4096, in any batch.

The case of the measurement that found it: a query whose clip is indexed several times, as exact copies of its
vector (under its own label: relevant, and under other labels: irrelevant) and as copies that differ in the last
bit of a few components (the same clip embedded again in another batch). The block's matrix product rounds those
scores differently for different block shapes, which used to reorder the near-tied copies: AP 0.700 alone and
0.806 inside the block of every query, for the first case below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexing.embeddings import Embeddings, load_embeddings, save_embeddings
from indexing.metrics import _canonical_scores, evaluate_retrieval
from tests.conftest import run_cli

SEEDS = (0, 12, 36)  # cases that differed before, out of the first 40 of this construction


def copies_case(seed: int, dim: int = 64, n_queries: int = 40) -> tuple[Embeddings, Embeddings]:
    """Queries and a gallery: query 0's vector is in the gallery 8 times (labels A: relevant, B: irrelevant), every
    other one a near copy (a few components moved by one ulp)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((60, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    v = base[0]
    gallery, labels = list(base[1:]), [f"o{i % 10}" for i in range(1, 60)]
    for k in range(8):
        w = v.copy()
        if k % 2:
            idx = rng.choice(dim, 3, replace=False)
            w[idx] = np.nextafter(w[idx], np.float32(2) * np.sign(rng.standard_normal(3)).astype(np.float32))
        gallery.append(w)
        labels.append("A" if k in (0, 3, 5) else "B")
    perm = rng.permutation(len(gallery))
    g = np.stack(gallery)[perm]
    g_labels = [labels[i] for i in perm]
    q = np.concatenate([v[None], base[1:n_queries]])
    q_labels = ["A"] + [g_labels[0]] * (n_queries - 1)
    queries = Embeddings([f"q{i}" for i in range(n_queries)], q, q_labels, [""] * n_queries)
    return queries, Embeddings([f"g{i}" for i in range(len(g))], g, g_labels, [""] * len(g))


def _ap_each(q: Embeddings, g: Embeddings, group: int, **kw) -> list[float]:
    """Every query's AP, the queries evaluated ``group`` at a time (each group one call)."""
    aps: list[float] = []
    for s in range(0, len(q), group):
        sl = slice(s, s + group)
        res = evaluate_retrieval(
            q.embeddings[sl], q.ids[sl], q.labels[sl], None, g.embeddings, g.ids, g.labels, None, **kw
        )
        assert res.skipped == 0
        aps.extend(res.ap.tolist())
    return aps


def _reference_ap(q: Embeddings, g: Embeddings, a: int) -> float:
    """docs/evaluation.md's rule by brute force: rank by the canonical score, ties by gallery order."""
    u = _canonical_scores_np(q.embeddings[a], g.embeddings)
    order = sorted(range(len(g)), key=lambda j: (u[j], j))
    rel = [g.labels[j] == q.labels[a] for j in order]
    hits = np.cumsum(rel)
    return float(np.mean([hits[r] / (r + 1) for r in range(len(rel)) if rel[r]]))


def _canonical_scores_np(qv: np.ndarray, gm: np.ndarray) -> np.ndarray:
    return _canonical_scores(np.repeat(qv[None], len(gm), 0), gm, "cosine")


@pytest.mark.parametrize("seed", SEEDS)
def test_ap_of_a_query_with_copies_in_the_gallery_does_not_depend_on_its_group(seed: int) -> None:
    q, g = copies_case(seed)
    alone = _ap_each(q, g, group=1)
    for group in (7, len(q)):
        assert _ap_each(q, g, group) == alone, group
    for block in (1, 7, 4096):  # one call, the blocks inside it
        assert _ap_each(q, g, len(q), block_size=block) == alone, block
    assert alone[0] == _reference_ap(q, g, 0)
    assert alone[0] < 1.0  # the copies under other labels really rank among the relevant ones


def test_exact_duplicates_alone_tie_by_gallery_order_in_any_block() -> None:
    """Only exact copies (no near ones): the irrelevant copies before the first relevant one in gallery order rank
    ahead of it, whatever the block."""
    rng = np.random.default_rng(1)
    v = rng.standard_normal(32).astype(np.float32)
    v /= np.linalg.norm(v)
    others = rng.standard_normal((20, 32)).astype(np.float32)
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    g = np.concatenate([others[:5], [v, v, v], others[5:], [v]])  # copies at 5, 6, 7 and 25
    g_labels = ["x"] * 5 + ["B", "A", "B"] + ["x"] * 15 + ["A"]
    q = np.concatenate([[v], others[:6]])
    q_labels = ["A"] + ["x"] * 6
    queries = Embeddings([f"q{i}" for i in range(7)], q, q_labels, [""] * 7)
    gallery = Embeddings([f"g{i}" for i in range(len(g))], g, g_labels, [""] * len(g))
    for block in (1, 7, 4096):
        ap = _ap_each(queries, gallery, 7, block_size=block)[0]
        assert ap == pytest.approx((1 / 2 + 2 / 4) / 2, abs=0)  # ranks 2 and 4 (B, A, B, then the v at 25)


def test_block_size_must_be_positive() -> None:
    from indexing.errors import UserError

    q, g = copies_case(0)
    with pytest.raises(UserError, match="block_size"):
        evaluate_retrieval(q.embeddings, q.ids, q.labels, None, g.embeddings, g.ids, g.labels, None, block_size=0)


def test_vidret_evaluate_gives_the_ap_of_each_query_alone(tmp_path: Path) -> None:
    """The CLI against an index and against an embeddings file: the mAP of the query alone, the per-query APs."""
    q, g = copies_case(SEEDS[0])
    save_embeddings(tmp_path / "q.npz", q)
    save_embeddings(tmp_path / "q0.npz", Embeddings(q.ids[:1], q.embeddings[:1], q.labels[:1], q.cameras[:1]))
    save_embeddings(tmp_path / "g.npz", g)
    res = run_cli("index", "build", "--embeddings", tmp_path / "g.npz", "--out", tmp_path / "index")
    assert res.returncode == 0, res.stderr
    stored = load_embeddings(tmp_path / "g.npz")
    alone = _ap_each(q, stored, group=1)

    for source, queries, want in (
        (("--index", tmp_path / "index"), "q0.npz", alone[0]),
        (("--gallery", tmp_path / "g.npz"), "q.npz", float(np.mean(alone))),
    ):
        out = tmp_path / f"{queries}.json"
        res = run_cli("evaluate", "--queries", tmp_path / queries, *source, "--json", out)
        assert res.returncode == 0, res.stderr
        assert json.loads(out.read_text())["mAP"] == pytest.approx(want, rel=1e-12), (source, queries)

"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) from top-k neighbourhoods, in bounded memory.

The items are the queries and the gallery together (or the gallery alone when the queries are gallery items, as in
``POST /v1/evaluate``). Distance: ``d(i, j) = ||x_i - x_j||^2 / (4 max_n ||x_n||^2)`` in [0, 1] (embeddings
L2-normalised first with the cosine metric, so ``d = (1 - cos) / 2``). For each item:

1. ``N(i, k)``: its k+1 nearest items (itself first), ties by position; ``R(i, k)``: the ``j`` in ``N(i, k)`` with
   ``i`` in ``N(j, k)`` (k-reciprocal);
2. the expansion ``R*(i)``: ``R(i, k1)`` plus ``R(c, round(k1/2))`` of each candidate ``c`` of ``R(i, k1)`` that
   shares more than 2/3 of its items with ``R(i, k1)``;
3. ``V[i, j] = exp(-d(i, j)) / sum`` over ``j`` in ``R*(i)``, 0 elsewhere; query expansion: ``V[i]`` becomes the
   mean of ``V[j]`` over ``j`` in the first k2 items of ``N(i, k1)``;
4. Jaccard distance ``J(i, j) = 1 - s / (2 - s)``, ``s = sum_n min(V[i, n], V[j, n])``; the final distance is
   ``(1 - lambda) J(q, g) + lambda d(q, g)``, by which the gallery is ranked for the re-ID protocol
   (indexing/metrics.py: self and same-label-same-camera items removed).

Everything above needs only the ``N(i, k1)`` lists: they come from the index's search (the gallery side) and an
exact search of the queries, so nothing of size items x items is built. Memory: the lists (16 bytes x items x
(k1+1)), the sparse V (12 bytes per non-zero; at most items x (k1+1)(round(k1/2)+2) before expansion by k2), and
one block of queries x gallery (about 56 bytes per pair, the block sized by ``memory_budget_mb``). torchreid's
``re_ranking`` instead holds several dense (q+g) x (q+g) matrices. It also divides each item's distances by its
largest (a full pass over all pairs) and squares them; the fixed scale here gives the same neighbourhoods and
the same weights' form without that pass (benchmarks/rerank.py compares the two). numpy and scipy only (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from indexing.errors import UserError
from indexing.metrics import METRICS, RetrievalScores

# gallery positions (n, k) of each row's k nearest gallery items, best first, -1 where fewer exist
Searcher = Callable[[np.ndarray, int], np.ndarray]

_MARGIN = 8  # extra candidates asked of a search, so that re-sorting by the exact distance keeps the true top k


@dataclass(frozen=True)
class RerankParams:
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def check(self) -> RerankParams:
        if self.k1 < 1:
            raise UserError(f"--k1 must be >= 1, got {self.k1}")
        if not 1 <= self.k2 <= self.k1 + 1:
            raise UserError(f"--k2 must be between 1 and k1 + 1 = {self.k1 + 1}, got {self.k2}")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise UserError(f"--lambda must be between 0 and 1, got {self.lambda_value}")
        return self


@dataclass
class RerankStats:
    items: int
    neighbours: int
    v_nonzeros: int
    vqe_nonzeros: int
    block_queries: int
    peak_estimate_mib: float

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def describe(self) -> str:
        return (
            f"re-ranked {self.items} items from their top-{self.neighbours} neighbourhoods: V {self.v_nonzeros} "
            f"non-zeros ({self.vqe_nonzeros} after query expansion), {self.block_queries} queries a block, about "
            f"{self.peak_estimate_mib:.0f} MiB"
        )


# ---- searches --------------------------------------------------------------------------------------------------
def _smallest(u: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k smallest values (1 <= k <= columns), smallest first, ties by column.

    Exact without sorting whole rows: the columns are dealt into c >= k groups (column j into group j mod c); the
    k-th smallest of a row's group minima is a value that at least k of its values do not exceed, so its k smallest
    are among the few values up to it, and only those are sorted."""
    n, g = u.shape
    c = min(g, 8 * k)
    w = g // c
    limit = np.partition(u[:, : c * w].reshape(n, w, c).min(1), k - 1, axis=1)[:, k - 1]
    cols = [np.flatnonzero(u[i] <= limit[i]) for i in range(n)]
    counts = np.fromiter(map(len, cols), dtype=np.int64, count=n)
    if not n or counts.min() < k:  # no rows, or NaN (no value is <= NaN): sort the rows
        return np.argsort(u, axis=1, kind="stable")[:, :k]
    rows, cols = np.repeat(np.arange(n), counts), np.concatenate(cols)
    order = np.lexsort((cols, u[rows, cols], rows))
    return cols[order][(np.cumsum(counts) - counts)[:, None] + np.arange(k)]


def exact_searcher(base: np.ndarray, block_rows: int = 4096) -> Searcher:
    """Exact nearest items of ``base`` (rows already prepared: unit for cosine), by squared L2 distance."""
    b = np.ascontiguousarray(base, dtype=np.float32)
    bias = (b * b).sum(1)

    def search(x: np.ndarray, k: int) -> np.ndarray:
        k = min(k, len(b))
        out = np.full((len(x), k), -1, dtype=np.int64)
        if k == 0:
            return out
        xt = np.ascontiguousarray(x, dtype=np.float32)
        for s in range(0, len(x), block_rows):
            u = xt[s : s + block_rows] @ b.T
            u *= -2
            u += bias[None, :]
            out[s : s + block_rows] = _smallest(u, k)
        return out

    return search


def index_searcher(index, ids: Sequence[str]) -> Searcher:
    """The search of an index (anything with ``search(vectors, k) -> [[hit.id, ...], ...]``: VideoIndex,
    MilvusIndex) as gallery positions, ``ids`` being the gallery's ids in position order."""
    pos = {str(v): i for i, v in enumerate(ids)}

    def search(x: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(x), k), -1, dtype=np.int64)
        for r, hits in enumerate(index.search(np.ascontiguousarray(x, dtype=np.float32), k)):
            found = [pos[h.id] for h in hits if h.id in pos][:k]
            out[r, : len(found)] = found
        return out

    return search


# ---- the neighbourhoods and V ------------------------------------------------------------------------------------
def _pair_dist(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: float, chunk_mb: float = 16) -> np.ndarray:
    """d(rows[i], cols[i, j]) (``x`` float64; cols -1: inf), gathered in chunks of about ``chunk_mb``."""
    out = np.empty(cols.shape, dtype=np.float64)
    step = max(1, int(chunk_mb * 2**20 // max(1, cols.shape[1] * x.shape[1] * 8)))
    for a in range(0, len(rows), step):
        xc = x[np.maximum(cols[a : a + step], 0)] - x[rows[a : a + step], None, :]
        out[a : a + step] = np.einsum("bwd,bwd->bw", xc, xc) / scale
    out[cols < 0] = np.inf
    return out


def neighbours(
    x: np.ndarray, k: int, parts: Sequence[tuple[int, Searcher]], scale: float, block_rows: int = 2048
) -> np.ndarray:
    """``N(i, k)`` of every row of ``x``: (n, k+1) positions, nearest first by the exact distance, ties by position.
    ``parts``: (offset, search) of each part of ``x`` (its rows ``offset:``...), whose results are merged."""
    n, kk = len(x), min(k + 1, len(x))
    cands = np.concatenate(
        [np.where((s := search(x, kk + _MARGIN)) >= 0, s + off, -1) for off, search in parts], axis=1
    )
    out = np.empty((n, kk), dtype=np.int64)
    for a in range(0, n, block_rows):
        rows = np.arange(a, min(n, a + block_rows))
        c = cands[rows]
        d = _pair_dist(x, rows, c, scale)
        order = np.lexsort((np.where(c < 0, n, c), d), axis=-1)[:, :kk]
        out[rows] = np.take_along_axis(c, order, 1)
    return out


def _reciprocal(nbr: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``N(i, k)`` and the mask of its k-reciprocal members."""
    f = nbr[:, : k + 1]
    back = f[np.maximum(f, 0)]  # (n, k+1, k+1)
    mask = (back == np.arange(len(f))[:, None, None]).any(-1) & (f >= 0)
    return f, mask


def _expansion_block(f, m, fh, mh, rows: np.ndarray) -> np.ndarray:
    """``R*(i)`` of ``rows`` as a (b, w) array of positions, -1 padded (duplicates removed)."""
    r = np.where(m[rows], f[rows], -1)  # R(i, k1), (b, k+1)
    cand = np.maximum(r, 0)
    h = np.where(mh[cand], fh[cand], -1)  # R(c, k1/2) of each candidate, (b, k+1, kh+1)
    inside = ((h[..., None] == r[:, None, None, :]) & (h[..., None] >= 0)).any(-1).sum(-1)
    size = (h >= 0).sum(-1)
    take = (inside > 2.0 / 3.0 * size) & (r >= 0)
    h = np.where(take[..., None], h, -1).reshape(len(rows), -1)
    allc = np.sort(np.concatenate([r, h], 1), axis=1)
    dup = np.zeros_like(allc, dtype=bool)
    dup[:, 1:] = allc[:, 1:] == allc[:, :-1]
    return np.where(dup, -1, allc)


def reciprocal_weights(x: np.ndarray, nbr: np.ndarray, k1: int, scale: float, block_rows: int = 1024) -> sp.csr_matrix:
    """V (steps 1-3, before query expansion) as a sparse (n, n) matrix."""
    n = len(x)
    f, m = _reciprocal(nbr, k1)
    fh, mh = _reciprocal(nbr, int(np.around(k1 / 2.0)))
    rows_all, cols_all, vals_all = [], [], []
    for a in range(0, n, block_rows):
        rows = np.arange(a, min(n, a + block_rows))
        sup = _expansion_block(f, m, fh, mh, rows)
        w = np.exp(-_pair_dist(x, rows, sup, scale))  # exp(-inf) = 0 on the padding
        w /= w.sum(1, keepdims=True)
        ok = sup >= 0
        rows_all.append(np.broadcast_to(rows[:, None], sup.shape)[ok])
        cols_all.append(sup[ok])
        vals_all.append(w[ok])
    return sp.csr_matrix((np.concatenate(vals_all), (np.concatenate(rows_all), np.concatenate(cols_all))), shape=(n, n))


def query_expansion(v: sp.csr_matrix, nbr: np.ndarray, k2: int) -> sp.csr_matrix:
    """Each row of V replaced by the mean of the rows of its first k2 neighbours."""
    if k2 <= 1:
        return v
    top = nbr[:, :k2]
    ok = top >= 0
    rows = np.broadcast_to(np.arange(len(top))[:, None], top.shape)[ok]
    w = np.broadcast_to(1.0 / ok.sum(1, keepdims=True), top.shape)[ok]
    a = sp.csr_matrix((w, (rows, top[ok])), shape=(len(top), v.shape[0]))
    return (a @ v).tocsr()


def _overlap(vq: sp.csr_matrix, vg_csc: sp.csc_matrix) -> np.ndarray:
    """``s[i, j] = sum_n min(vq[i, n], vg[j, n])``, dense (b, g), through the columns of vg (an inverted index)."""
    coo = vq.tocoo()
    starts, ends = vg_csc.indptr[coo.col], vg_csc.indptr[coo.col + 1]
    lens = ends - starts
    total = int(lens.sum())
    b, g = vq.shape[0], vg_csc.shape[0]
    if total == 0:
        return np.zeros((b, g))
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(total)
    j = vg_csc.indices[offs]
    w = np.minimum(np.repeat(coo.data, lens), vg_csc.data[offs])
    return np.bincount(np.repeat(coo.row, lens) * g + j, weights=w, minlength=b * g).reshape(b, g)


# ---- the protocol on a dense block of final distances -----------------------------------------------------------
def _codes(values: Sequence, table: dict) -> np.ndarray:
    return np.fromiter((table.setdefault(str(v), len(table)) for v in values), dtype=np.int64, count=len(values))


def _camera_codes(q_cams, g_cams, nq: int, ng: int) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery camera codes from one table; unknown (empty, None, nan) -1 / -2, so never equal."""
    table: dict = {}
    out = []
    for values, n, unknown in ((q_cams, nq, -1), (g_cams, ng, -2)):
        if values is None:
            out.append(np.full(n, unknown, dtype=np.int64))
            continue
        c = _codes(values, table)
        c[np.isin(np.asarray(values, dtype=object).astype(str), ["", "None", "nan"])] = unknown
        out.append(c)
    return out[0], out[1]


def _ap_block(dist: np.ndarray, qi, ql, qc, gi, gl, gc) -> tuple[np.ndarray, np.ndarray]:
    """AP (nan: no relevant item) and first relevant rank of each row, ranking ascending, ties by gallery order."""
    order = np.argsort(dist, axis=1, kind="stable")
    same = gl[order] == ql[:, None]
    junk = (gi[order] == qi[:, None]) | (same & (gc[order] == qc[:, None]))
    rel = same & ~junk
    rank = np.cumsum(~junk, axis=1)
    hits = np.cumsum(rel, axis=1)
    n_rel = rel.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(rel, hits / rank, 0.0).sum(1) / n_rel
        first = np.where(rel, rank, np.iinfo(np.int64).max).min(1)
    ap[n_rel == 0] = np.nan
    return ap, first


def _scores(aps: np.ndarray, firsts: np.ndarray, ks: list[int]) -> RetrievalScores:
    ok = ~np.isnan(aps)
    skipped = int((~ok).sum())
    if not ok.any():
        return RetrievalScores(mAP=0.0, cmc={k: 0.0 for k in ks}, num_queries=0, skipped=skipped)
    return RetrievalScores(
        mAP=float(aps[ok].mean()),
        cmc={k: float((firsts[ok] <= k).mean()) for k in ks},
        num_queries=int(ok.sum()),
        skipped=skipped,
        ap=aps[ok],
    )


# ---- the whole evaluation ------------------------------------------------------------------------------------------
def _prepared(vectors: np.ndarray, metric: str) -> tuple[np.ndarray, float]:
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    scale = 4.0 * float((x.astype(np.float64) ** 2).sum(1).max()) if len(x) else 1.0
    return x, scale if scale > 0 else 1.0


def _rerank_eval(
    x: np.ndarray,
    scale: float,
    q_rows: np.ndarray,
    g_rows: np.ndarray,
    meta: tuple,
    parts: Sequence[tuple[int, Searcher]],
    params: RerankParams,
    ks: list[int],
    memory_budget_mb: float,
) -> tuple[RetrievalScores, RerankStats]:
    qi, ql, qc, gi, gl, gc = meta
    x64 = x.astype(np.float64)  # the distances of the neighbourhoods and weights, exactly
    nbr = neighbours(x64, params.k1, parts, scale)
    v = query_expansion(v0 := reciprocal_weights(x64, nbr, params.k1, scale), nbr, params.k2)
    del x64
    vq, vg = v[q_rows], v[g_rows].tocsc()
    xq, xg = x[q_rows], x[g_rows]
    nq_, ng = len(q_rows), len(g_rows)
    bs = int(max(1, min(8192, (memory_budget_mb * 2**20) // max(1, ng * 56))))
    lam = params.lambda_value
    aps, firsts = np.empty(nq_), np.empty(nq_, dtype=np.int64)
    gsq = (xg.astype(np.float64) ** 2).sum(1)
    for s in range(0, nq_, bs):
        e = min(nq_, s + bs)
        qb = xq[s:e]
        d = (qb.astype(np.float64) ** 2).sum(1)[:, None] + gsq[None, :] - 2 * (qb @ xg.T).astype(np.float64)
        d = np.maximum(d, 0, out=d) / scale
        ov = _overlap(vq[s:e], vg)
        final = (1 - lam) * (1 - ov / (2 - ov)) + lam * d
        aps[s:e], firsts[s:e] = _ap_block(final, qi[s:e], ql[s:e], qc[s:e], gi, gl, gc)
    n = len(x)
    est = (
        x.size * 8
        + n * nbr.shape[1] * 16 * 2
        + (v0.nnz + v.nnz + vg.nnz) * 12
        + bs * ng * 56
        + n * len(parts) * 8 * nbr.shape[1]
    ) / 2**20
    stats = RerankStats(n, nbr.shape[1] - 1, int(v0.nnz), int(v.nnz), bs, est)
    return _scores(aps, firsts, ks), stats


def _checked_ks(ks: Sequence[int]) -> list[int]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise UserError(f"CMC ranks must be >= 1, got {out}")
    return out


def rerank_evaluate(
    q_emb: np.ndarray,
    q_ids: Sequence[str],
    q_labels: Sequence[str],
    q_cams: Sequence[str] | None,
    g_emb: np.ndarray,
    g_ids: Sequence[str],
    g_labels: Sequence[str],
    g_cams: Sequence[str] | None,
    ks: Sequence[int] = (1, 5, 10),
    metric: str = "cosine",
    params: RerankParams | None = None,
    gallery_search: Searcher | None = None,
    memory_budget_mb: float = 256,
) -> tuple[RetrievalScores, RerankStats]:
    """mAP/CMC of the queries against the gallery after k-reciprocal re-ranking of queries + gallery together.
    ``gallery_search``: the gallery side of the neighbourhoods (e.g. ``index_searcher``); exact when None."""
    params = (params or RerankParams()).check()
    q = np.asarray(q_emb)
    g = np.asarray(g_emb)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise UserError(f"query embeddings {q.shape} and gallery embeddings {g.shape} do not match")
    nq, ng = len(q), len(g)
    if len(q_ids) != nq or len(q_labels) != nq or len(g_ids) != ng or len(g_labels) != ng:
        raise UserError("ids and labels must have one entry per embedding")
    x, scale = _prepared(np.concatenate([q, g]), metric)
    search = gallery_search or exact_searcher(x[nq:])
    parts = [(nq, search), (0, exact_searcher(x[:nq]))]
    ids, labels = {}, {}
    qc, gc = _camera_codes(q_cams, g_cams, nq, ng)
    meta = (_codes(q_ids, ids), _codes(q_labels, labels), qc, _codes(g_ids, ids), _codes(g_labels, labels), gc)
    rows = np.arange(nq + ng)
    return _rerank_eval(x, scale, rows[:nq], rows[nq:], meta, parts, params, _checked_ks(ks), memory_budget_mb)


def rerank_evaluate_within(
    vecs: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[str],
    cams: Sequence[str] | None,
    query_rows: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    metric: str = "cosine",
    params: RerankParams | None = None,
    gallery_search: Searcher | None = None,
    memory_budget_mb: float = 256,
) -> tuple[RetrievalScores, RerankStats]:
    """As ``rerank_evaluate`` where the queries are gallery items (``query_rows``): the items are the gallery alone
    (``POST /v1/evaluate``)."""
    params = (params or RerankParams()).check()
    x, scale = _prepared(np.asarray(vecs), metric)
    search = gallery_search or exact_searcher(x)
    gi, gl = _codes(ids, {}), _codes(labels, {})
    _, gc = _camera_codes(None, cams, 0, len(x))
    qr = np.asarray(query_rows, dtype=np.int64)
    qc = np.where(gc[qr] == -2, -1, gc[qr])
    meta = (gi[qr], gl[qr], qc, gi, gl, gc)
    return _rerank_eval(x, scale, qr, np.arange(len(x)), meta, [(0, search)], params, _checked_ks(ks), memory_budget_mb)

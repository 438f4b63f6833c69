"""Retrieval metrics with the re-identification protocol: AP, mAP and CMC, exact and blockwise.

Protocol (docs/evaluation.md, as Market-1501 / MARS): for each query the gallery is ranked by similarity (cosine = inner
product of L2-normalised embeddings, or negative L2 distance); removed from the ranking are the query itself (same
id) and, where cameras are known, gallery items with the query's label AND camera. Relevant = same label.
AP is the mean over the relevant items of the precision at each one's rank; mAP averages AP over the queries
with at least one relevant item (the others are counted as ``skipped``); CMC@k is the share of those queries with
a relevant item in the top k. Ties break by gallery order.

Exact without sorting the gallery: AP needs only the rank of each relevant item. The gallery is grouped by
label once, so a query's same-label items (relevant, or junk: itself / same camera) are gathered without comparing
labels across the whole gallery. For a block of queries the relevant items' scores (a handful per query) are
sorted, every gallery item is located among them with one binary search (``searchsorted``), and a histogram of
those positions, minus the query's own same-label and self items, gives for the m-th relevant item the number of
other items ranked above it: rank_m = m + that count. Cost per query O(G log R) instead of O(G log G); memory
bounded by the block size (about 8 bytes per query x gallery item: the block's float64 scores; the positions are
found one query at a time). numpy only (no torch: the API image has none).

Independent of the grouping: a matrix product's rounding depends on the block's shape, so the ranking is defined
by each pair's score of record (``_canonical_scores``: exact float64 products, a fixed summation tree), ties by
gallery order. The block's scores are float64; the items within their rounding bound (``_rounding_bound``) of a
relevant item's score (exact ties included) are placed again by their scores of record; every other item is too
far for the rounding to reorder it. A query's AP is thus the same alone, in any block and behind any route."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexing.errors import UserError

METRICS = ("cosine", "l2")


@dataclass
class RetrievalScores:
    mAP: float
    cmc: dict[int, float]
    num_queries: int
    skipped: int
    ap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per evaluated query

    def to_json(self) -> dict:
        return {
            "mAP": float(self.mAP),
            "cmc": {str(k): float(v) for k, v in sorted(self.cmc.items())},
            "num_queries": int(self.num_queries),
            "skipped": int(self.skipped),
        }


def _codes(*arrays: Sequence[str] | np.ndarray) -> list[np.ndarray]:
    """Map strings shared across arrays to the same integer codes."""
    table: dict[str, int] = {}
    return [
        np.fromiter((table.setdefault(str(v), len(table)) for v in a), dtype=np.int64, count=len(a)) for a in arrays
    ]


def _camera_codes(q_cams, g_cams, nq: int, ng: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q_cams if q_cams is not None else [""] * nq, dtype=object)
    g = np.asarray(g_cams if g_cams is not None else [""] * ng, dtype=object)
    qc, gc = _codes(q, g)
    empty = {str(v) for v in ("", "None", "nan")}
    qc[np.isin(q.astype(str), list(empty))] = -1
    gc[np.isin(g.astype(str), list(empty))] = -2  # unknown never equals unknown
    return qc, gc


def _members(g_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery indices sorted by code (ascending index within a code) and the codes in that order."""
    order = np.argsort(g_codes, kind="stable")
    return order, g_codes[order]


def _group_block(order: np.ndarray, sorted_codes: np.ndarray, q_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, W) gallery indices sharing each query's code, ascending, and the validity mask (padding: index 0)."""
    lo = np.searchsorted(sorted_codes, q_codes, side="left")
    cnt = np.searchsorted(sorted_codes, q_codes, side="right") - lo
    width = max(1, int(cnt.max())) if len(cnt) else 1
    offs = np.arange(width)
    valid = offs[None, :] < cnt[:, None]
    if not len(order):
        return np.zeros((len(q_codes), width), dtype=np.int64), valid
    idx = order[np.minimum(lo[:, None] + offs[None, :], len(order) - 1)]
    return np.where(valid, idx, 0), valid


def _checked(
    q_emb: np.ndarray,
    q_ids: Sequence[str],
    q_labels: Sequence[str],
    g_emb: np.ndarray,
    g_ids: Sequence[str],
    g_labels: Sequence[str],
    ks: Sequence[int],
    metric: str,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The query and gallery embeddings as float32 arrays and the sorted CMC ranks, or a UserError."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    q = np.ascontiguousarray(q_emb, dtype=np.float32)
    g = np.ascontiguousarray(g_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise UserError(f"query embeddings {tuple(q.shape)} and gallery embeddings {tuple(g.shape)} do not match")
    nq, ng = q.shape[0], g.shape[0]
    if len(q_ids) != nq or len(q_labels) != nq or len(g_ids) != ng or len(g_labels) != ng:
        raise UserError("ids and labels must have one entry per embedding")
    ranks = sorted({int(k) for k in ks})
    if not ranks or ranks[0] < 1:
        raise UserError(f"CMC ranks must be >= 1, got {ranks}")
    return q, g, ranks


def _canonical_scores(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """Each pair's score of record, ``u`` (smaller ranks first): one function of the two vectors alone, whatever
    the block, the batch or the machine's matrix kernels.

    The products of float32 components are exact in float64; they are summed by a fixed pairwise tree of
    element-wise float64 additions (each correctly rounded, so the order is fixed and the result reproducible)."""
    q64, g64 = np.asarray(q, dtype=np.float64), np.asarray(g, dtype=np.float64)
    prods = q64 * g64  # (P, D), exact
    terms = np.concatenate([-2.0 * prods, g64 * g64], 1) if metric == "l2" else -prods
    width = 1 << max(0, int(terms.shape[1] - 1).bit_length())
    if width != terms.shape[1]:
        terms = np.concatenate([terms, np.zeros((terms.shape[0], width - terms.shape[1]))], 1)
    while terms.shape[1] > 1:
        half = terms.shape[1] // 2
        terms = terms[:, :half] + terms[:, half:]
    return terms[:, 0]


def _rounding_bound(q: np.ndarray, g_max: float, metric: str, unit: float = 2.0**-53) -> np.ndarray:
    """Per query: a bound on |computed score - exact score| for any gallery item and any summation order, with
    ``unit`` the unit roundoff (float32: 2^-24, float64: 2^-53): gamma_D times the sum of |terms| (by
    Cauchy-Schwarz), taken twice over for safety."""
    d = q.shape[1]
    q_norm = np.linalg.norm(q.astype(np.float64), axis=-1)
    magnitude = (2.0 * q_norm * g_max + g_max * g_max) if metric == "l2" else q_norm * g_max
    return 2.0 * (d + 2) * unit * magnitude


def _relevant_ahead(q: np.ndarray, items: np.ndarray, rel: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """For each of one query's ``items``: how many of its relevant items ``rel`` rank ahead of it by the score of
    record (ties: smaller gallery index first)."""
    mine = _canonical_scores(np.broadcast_to(q, (len(items), len(q))), g[items], metric)[:, None]
    theirs = _canonical_scores(np.broadcast_to(q, (len(rel), len(q))), g[rel], metric)[None, :]
    return ((theirs < mine) | ((theirs == mine) & (rel[None, :] < items[:, None]))).sum(1)


def _row_bins(
    u: np.ndarray, edges: np.ndarray, own: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's histogram of its other items over ``edges`` (position ``2k``: in the gap after k windows, ``2k+1``:
    in window k; ``own``: each row's relevant and junk items, left out), and the items found in a window: their
    rows, gallery indices and the number of relevant items certainly ahead of them. One binary search per item."""
    raw = np.empty((len(u), edges.shape[1] + 1), dtype=np.int64)
    near: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i in range(len(u)):  # one row at a time: a row's positions are never held for the whole block
        b = np.searchsorted(edges[i], u[i])
        raw[i] = np.bincount(b, minlength=raw.shape[1]) - np.bincount(b[own[i]], minlength=raw.shape[1])
        if raw[i, 1::2].any():
            cols = np.flatnonzero(b & 1)
            cols = cols[~np.isin(cols, own[i])]
            near.append((i, cols, b[cols] >> 1))
    if not near:
        empty = np.zeros(0, dtype=np.int64)
        return raw, empty, empty, empty
    rows = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c, _ in near])
    return raw, rows, np.concatenate([c for _, c, _ in near]), np.concatenate([b for _, _, b in near])


def _block_ranks(
    u: np.ndarray,
    cand: np.ndarray,
    cvalid: np.ndarray,
    crel: np.ndarray,
    n_rel: np.ndarray,
    selfs: np.ndarray,
    svalid: np.ndarray,
    q_rows: np.ndarray,
    g: np.ndarray,
    g_max: float,
    metric: str,
) -> np.ndarray:
    """(B, r_max) float64: the rank of each query's m-th relevant item among the items that count (the module
    docstring); ``u`` is the block's scores (float64)."""
    cu = np.take_along_axis(u, cand, 1)
    r_max = int(n_rel.max())
    key = np.where(crel, cu, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :r_max]
    rel_u, rel_idx = np.take_along_axis(key, order, 1), np.take_along_axis(cand, order, 1)
    band = 2.0 * _rounding_bound(q_rows, g_max, metric)[:, None]
    # each relevant score's rounding window [u_r - band, u_r + band], overlapping windows merged by cummax: an item
    # in a gap (even position 2k) surely has k relevant items ahead of it; one in a window (odd) is placed exactly
    edges = np.maximum.accumulate(np.stack([rel_u - band, rel_u + band], 2).reshape(len(u), -1), axis=1)
    own = [np.concatenate([cand[i][cvalid[i]], selfs[i][svalid[i]]]) for i in range(len(u))]
    raw, rows, cols, bins = _row_bins(u, edges, own)
    hist = raw[:, 0::2].copy()
    hist[:, :r_max] += raw[:, 1::2]
    if len(rows):  # each item in a window moves from its block-score bin to the bin of the scores of record
        exact = np.empty_like(rows)
        bounds = np.flatnonzero(np.diff(rows, prepend=-1, append=len(u)))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            row = rows[a]
            exact[a:b] = _relevant_ahead(q_rows[row], cols[a:b], rel_idx[row, : n_rel[row]], g, metric)
        np.add.at(hist, (rows, bins), -1)
        np.add.at(hist, (rows, exact), 1)
    m = np.arange(1, r_max + 1, dtype=np.float64)[None, :]
    return m + np.cumsum(hist, axis=1)[:, :r_max].astype(np.float64)


def _gallery_side(g: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The gallery as the block product needs it: (D, G) float64 with u = q @ gt + bias ranking ascending (ties by
    gallery index; u = -score, for l2 ||q-g||^2 - ||q||^2), the bias (l2) and max ||g|| (for the rounding bound).
    One float64 copy of the gallery, filled in place."""
    gt = np.empty((g.shape[1], g.shape[0]), dtype=np.float64)
    gt[...] = g.T
    gt *= -2.0 if metric == "l2" else -1.0  # exact
    sq = np.einsum("ij,ij->j", gt, gt)  # ||g||^2, times 4 for l2 (exact)
    g_bias = sq / 4.0 if metric == "l2" else None
    g_max = float(np.sqrt(sq.max()) / (2.0 if metric == "l2" else 1.0)) if len(sq) else 0.0
    return gt, g_bias, g_max


def evaluate_retrieval(
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
    memory_budget_mb: int = 256,
    block_size: int | None = None,
) -> RetrievalScores:
    """Exact mAP and CMC@ks of the queries against the gallery (see the module docstring). ``block_size``: queries
    scored per matrix product (default: what ``memory_budget_mb`` allows); it changes no result."""
    q, g, ks = _checked(q_emb, q_ids, q_labels, g_emb, g_ids, g_labels, ks, metric)
    nq, ng = q.shape[0], g.shape[0]
    qi, gi = _codes(q_ids, g_ids)
    ql, gl = _codes(q_labels, g_labels)
    qc, gc = _camera_codes(q_cams, g_cams, nq, ng)
    by_label, by_id = _members(gl), _members(gi)
    gt, g_bias, g_max = _gallery_side(g, metric)
    aps: list[np.ndarray] = []
    first_ranks: list[np.ndarray] = []
    skipped = 0
    bs = int(max(1, min(8192, (memory_budget_mb << 20) // max(1, ng * 8)))) if block_size is None else block_size
    if bs < 1:
        raise UserError(f"block_size must be >= 1, got {bs}")
    for s in range(0, nq, bs):
        e = min(nq, s + bs)
        cand, cvalid = _group_block(*by_label, ql[s:e])  # same label: relevant, or junk (self / same camera)
        cjunk = (gc[cand] == qc[s:e, None]) | (gi[cand] == qi[s:e, None])
        crel = cvalid & ~cjunk
        n_rel = crel.sum(1)
        has = n_rel > 0
        skipped += int((~has).sum())
        if not has.any():
            continue
        rows = np.flatnonzero(has) + s
        cand, cvalid, crel, n_rel = cand[has], cvalid[has], crel[has], n_rel[has]
        selfs, svalid = _group_block(*by_id, qi[rows])  # the query itself under another label: junk too
        svalid &= gl[selfs] != ql[rows, None]
        u = q[rows].astype(np.float64) @ gt  # float32 vectors, float64 scores: rounding far below float32's
        if g_bias is not None:
            u += g_bias
        ranks = _block_ranks(u, cand, cvalid, crel, n_rel, selfs, svalid, q[rows], g, g_max, metric)
        del u
        # precision at each relevant item, summed in order (a running sum: the block's padding changes nothing)
        m = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)[None, :]
        total = np.take_along_axis(np.cumsum(m / ranks, axis=1), n_rel[:, None] - 1, 1)[:, 0]
        aps.append(total / n_rel)
        first_ranks.append(ranks[:, 0])
    if not aps:
        return RetrievalScores(mAP=0.0, cmc={k: 0.0 for k in ks}, num_queries=0, skipped=skipped)
    ap = np.concatenate(aps)
    first = np.concatenate(first_ranks)
    return RetrievalScores(
        mAP=float(ap.mean()),
        cmc={k: float((first <= k).mean()) for k in ks},
        num_queries=int(ap.size),
        skipped=skipped,
        ap=ap,
    )


def evaluate_ranked_lists(
    ranked_ids: Sequence[Sequence[str]],
    q_ids: Sequence[str],
    q_labels: Sequence[str],
    q_cams: Sequence[str] | None,
    g_ids: Sequence[str],
    g_labels: Sequence[str],
    g_cams: Sequence[str] | None,
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalScores:
    """mAP/CMC from top-K lists (``--depth K``, e.g. from an approximate index): relevant items beyond the lists
    count as not retrieved (AP@K divides by all relevant items, so it is a lower bound of the exact AP)."""
    label = dict(zip(map(str, g_ids), map(str, g_labels), strict=True))
    cam = dict(zip(map(str, g_ids), map(str, g_cams), strict=True)) if g_cams is not None else {}
    n_rel_total: dict[tuple[str, str, str], int] = {}
    ks = sorted({int(k) for k in ks})
    aps, firsts, skipped = [], [], 0
    for qi, ql, qc, lst in zip(
        q_ids, q_labels, q_cams if q_cams is not None else [""] * len(q_ids), ranked_ids, strict=True
    ):
        ql, qc, qi = str(ql), str(qc), str(qi)
        key = (qi, ql, qc)
        if key not in n_rel_total:
            n_rel_total[key] = sum(
                1 for gid, gl in label.items() if gl == ql and gid != qi and not (qc and cam.get(gid, "") == qc)
            )
        total = n_rel_total[key]
        if total == 0:
            skipped += 1
            continue
        hits, rank, ap, first = 0, 0, 0.0, None
        for gid in lst:
            gid = str(gid)
            if gid == qi or (qc and label.get(gid) == ql and cam.get(gid, "") == qc):
                continue
            rank += 1
            if label.get(gid) == ql:
                hits += 1
                ap += hits / rank
                first = first or rank
        aps.append(ap / total)
        firsts.append(first if first is not None else np.inf)
    if not aps:
        return RetrievalScores(mAP=0.0, cmc={k: 0.0 for k in ks}, num_queries=0, skipped=skipped)
    first_arr = np.asarray(firsts)
    return RetrievalScores(
        mAP=float(np.mean(aps)),
        cmc={k: float(np.mean(first_arr <= k)) for k in ks},
        num_queries=len(aps),
        skipped=skipped,
        ap=np.asarray(aps),
    )

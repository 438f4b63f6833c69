"""Retrieval metrics with the re-identification protocol: AP, mAP and CMC, exact and blockwise.

Protocol (SPEC §5, as Market-1501 / MARS): for each query the gallery is ranked by similarity (cosine = inner
product of L2-normalised embeddings, or negative L2 distance); removed from the ranking are the query itself (same
id) and, where cameras are known, gallery items with the query's label AND camera. Relevant = same label.
AP is the mean over the relevant items of the precision at each one's rank; mAP averages AP over the queries
with at least one relevant item (the others are counted as ``skipped``); CMC@k is the share of those queries with
a relevant item in the top k. Ties break by gallery order.

Exact without sorting the gallery: AP needs only the rank of each relevant item. For a block of queries the
relevant items' scores (a handful per query) are sorted, every other valid gallery item is located among them
with a binary search (``searchsorted``), and a histogram of those positions gives, for the m-th relevant item,
the number of non-relevant items ranked above it: rank_m = m + that count. Cost per query O(G log R) instead of
O(G log G), memory bounded by the block size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

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
        return {"mAP": float(self.mAP), "cmc": {str(k): float(v) for k, v in sorted(self.cmc.items())},
                "num_queries": int(self.num_queries), "skipped": int(self.skipped)}


def _codes(*arrays: Sequence[str] | np.ndarray) -> list[np.ndarray]:
    """Map strings shared across arrays to the same integer codes."""
    table: dict[str, int] = {}
    return [np.fromiter((table.setdefault(str(v), len(table)) for v in a), dtype=np.int64, count=len(a))
            for a in arrays]


def _camera_codes(q_cams, g_cams, nq: int, ng: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    q = np.asarray(q_cams if q_cams is not None else [""] * nq, dtype=object)
    g = np.asarray(g_cams if g_cams is not None else [""] * ng, dtype=object)
    qc, gc = _codes(q, g)
    empty = {str(v) for v in ("", "None", "nan")}
    qc[np.isin(q.astype(str), list(empty))] = -1
    gc[np.isin(g.astype(str), list(empty))] = -2  # unknown never equals unknown
    return qc, gc


def _block_size(ng: int, budget_bytes: int) -> int:
    return int(max(1, min(4096, budget_bytes // max(1, ng * 160))))  # temporaries per (query, item), measured


def evaluate_retrieval(q_emb: np.ndarray, q_ids: Sequence[str], q_labels: Sequence[str],
                       q_cams: Sequence[str] | None, g_emb: np.ndarray, g_ids: Sequence[str],
                       g_labels: Sequence[str], g_cams: Sequence[str] | None, ks: Sequence[int] = (1, 5, 10),
                       metric: str = "cosine", memory_budget_mb: int = 256) -> RetrievalScores:
    """Exact mAP and CMC@ks of the queries against the gallery (see the module docstring)."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    q = torch.as_tensor(np.ascontiguousarray(q_emb, dtype=np.float32))
    g = torch.as_tensor(np.ascontiguousarray(g_emb, dtype=np.float32))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise UserError(f"query embeddings {tuple(q.shape)} and gallery embeddings {tuple(g.shape)} do not match")
    nq, ng = q.shape[0], g.shape[0]
    if len(q_ids) != nq or len(q_labels) != nq or len(g_ids) != ng or len(g_labels) != ng:
        raise UserError("ids and labels must have one entry per embedding")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UserError(f"CMC ranks must be >= 1, got {ks}")
    qi, gi = (torch.from_numpy(a) for a in _codes(q_ids, g_ids))
    ql, gl = (torch.from_numpy(a) for a in _codes(q_labels, g_labels))
    qc, gc = (torch.from_numpy(a) for a in _camera_codes(q_cams, g_cams, nq, ng))
    g_sq = (g * g).sum(1) if metric == "l2" else None
    g_index = torch.arange(ng)
    aps: list[torch.Tensor] = []
    first_ranks: list[torch.Tensor] = []
    skipped = 0
    bs = _block_size(ng, memory_budget_mb << 20)
    for s in range(0, nq, bs):
        qb = q[s:s + bs]
        scores = qb @ g.T
        if g_sq is not None:
            scores = 2 * scores - g_sq[None, :]  # -||q - g||^2 up to a per-query constant: same ranking
        u = -scores  # rank order = ascending u, ties by gallery index
        same_label = ql[s:s + bs, None] == gl[None, :]
        junk = (qi[s:s + bs, None] == gi[None, :]) | (same_label & (qc[s:s + bs, None] == gc[None, :]))
        relevant = same_label & ~junk
        n_rel = relevant.sum(1)
        has = n_rel > 0
        skipped += int((~has).sum())
        if not bool(has.any()):
            continue
        u, relevant, junk, n_rel = u[has], relevant[has], junk[has], n_rel[has]
        r_max = int(n_rel.max())
        # the relevant items of each query, ordered by (u, gallery index); padding = +inf
        key = torch.where(relevant, u, torch.full_like(u, float("inf")))
        rel_u, rel_idx = torch.topk(key, r_max, dim=1, largest=False, sorted=True)
        order = torch.argsort(rel_idx, dim=1, stable=True)  # ties among relevant items: by gallery index
        rel_u, rel_idx = rel_u.gather(1, order), rel_idx.gather(1, order)
        order = torch.argsort(rel_u, dim=1, stable=True)
        rel_u, rel_idx = rel_u.gather(1, order), rel_idx.gather(1, order)
        # position of every non-relevant valid item among the relevant ones
        pos = torch.searchsorted(rel_u.contiguous(), u.contiguous(), right=False)
        at = rel_u.gather(1, pos.clamp(max=r_max - 1))
        tied = (pos < r_max) & (at == u) & ~relevant & ~junk
        if bool(tied.any()):  # equal scores: relevant items with a smaller gallery index come first
            for row, col in tied.nonzero().tolist():
                lo = int(pos[row, col])
                hi = int(torch.searchsorted(rel_u[row], u[row, col], right=True))
                pos[row, col] = lo + int((rel_idx[row, lo:hi] < g_index[col]).sum())
        dump = r_max + 1
        pos = torch.where(relevant | junk, torch.full_like(pos, dump), pos)
        hist = torch.zeros(pos.shape[0], r_max + 2, dtype=torch.int64).scatter_add_(1, pos, torch.ones_like(pos))
        before = hist.cumsum(1)[:, :r_max]  # non-relevant items ranked above the m-th relevant item (b <= m-1)
        m = torch.arange(1, r_max + 1, dtype=torch.float64)[None, :]
        ranks = m + before.double()
        valid_m = m <= n_rel[:, None]
        aps.append(torch.where(valid_m, m / ranks, torch.zeros_like(ranks)).sum(1) / n_rel.double())
        first_ranks.append(ranks[:, 0])
    if not aps:
        return RetrievalScores(mAP=0.0, cmc={k: 0.0 for k in ks}, num_queries=0, skipped=skipped)
    ap = torch.cat(aps)
    first = torch.cat(first_ranks)
    return RetrievalScores(mAP=float(ap.mean()), cmc={k: float((first <= k).double().mean()) for k in ks},
                           num_queries=int(ap.numel()), skipped=skipped, ap=ap.numpy())


def evaluate_ranked_lists(ranked_ids: Sequence[Sequence[str]], q_ids: Sequence[str], q_labels: Sequence[str],
                          q_cams: Sequence[str] | None, g_ids: Sequence[str], g_labels: Sequence[str],
                          g_cams: Sequence[str] | None, ks: Sequence[int] = (1, 5, 10)) -> RetrievalScores:
    """mAP/CMC from top-K lists (``--depth K``, e.g. from an approximate index): relevant items beyond the lists
    count as not retrieved (AP@K divides by all relevant items, so it is a lower bound of the exact AP)."""
    label = dict(zip(map(str, g_ids), map(str, g_labels), strict=True))
    cam = dict(zip(map(str, g_ids), map(str, g_cams), strict=True)) if g_cams is not None else {}
    n_rel_total: dict[tuple[str, str, str], int] = {}
    ks = sorted({int(k) for k in ks})
    aps, firsts, skipped = [], [], 0
    for qi, ql, qc, lst in zip(q_ids, q_labels, q_cams if q_cams is not None else [""] * len(q_ids), ranked_ids,
                               strict=True):
        ql, qc, qi = str(ql), str(qc), str(qi)
        key = (qi, ql, qc)
        if key not in n_rel_total:
            n_rel_total[key] = sum(1 for gid, gl in label.items()
                                   if gl == ql and gid != qi and not (qc and cam.get(gid, "") == qc))
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
    return RetrievalScores(mAP=float(np.mean(aps)), cmc={k: float(np.mean(first_arr <= k)) for k in ks},
                           num_queries=len(aps), skipped=skipped, ap=np.asarray(aps))

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
other items ranked above it: rank_m = m + that count. Exact ties with a relevant item's score (rare with float
embeddings) are found by one comparison pass and resolved by gallery order. Cost per query O(G log R) instead of
O(G log G); memory bounded by the block size (about 24 bytes per query x gallery item).
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


def _members(g_codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery indices sorted by code (ascending index within a code) and the codes in that order."""
    order = np.argsort(g_codes, kind="stable")
    return torch.from_numpy(order), torch.from_numpy(g_codes[order])


def _group_block(
    order: torch.Tensor, sorted_codes: torch.Tensor, q_codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) gallery indices sharing each query's code, ascending, and the validity mask (padding: index 0)."""
    lo = torch.searchsorted(sorted_codes, q_codes, right=False)
    cnt = torch.searchsorted(sorted_codes, q_codes, right=True) - lo
    width = max(1, int(cnt.max())) if cnt.numel() else 1
    offs = torch.arange(width)
    valid = offs[None, :] < cnt[:, None]
    idx = (
        order[(lo[:, None] + offs[None, :]).clamp(max=max(0, order.numel() - 1))]
        if order.numel()
        else torch.zeros(len(q_codes), width, dtype=torch.int64)
    )
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def _checked(
    q_emb: np.ndarray,
    q_ids: Sequence[str],
    q_labels: Sequence[str],
    g_emb: np.ndarray,
    g_ids: Sequence[str],
    g_labels: Sequence[str],
    ks: Sequence[int],
    metric: str,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The query and gallery embeddings as float32 tensors and the sorted CMC ranks, or a UserError."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    q = torch.as_tensor(np.ascontiguousarray(q_emb, dtype=np.float32))
    g = torch.as_tensor(np.ascontiguousarray(g_emb, dtype=np.float32))
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise UserError(f"query embeddings {tuple(q.shape)} and gallery embeddings {tuple(g.shape)} do not match")
    nq, ng = q.shape[0], g.shape[0]
    if len(q_ids) != nq or len(q_labels) != nq or len(g_ids) != ng or len(g_labels) != ng:
        raise UserError("ids and labels must have one entry per embedding")
    ranks = sorted({int(k) for k in ks})
    if not ranks or ranks[0] < 1:
        raise UserError(f"CMC ranks must be >= 1, got {ranks}")
    return q, g, ranks


def _break_exact_ties(
    hist: torch.Tensor,
    tied: torch.Tensor,
    pos: torch.Tensor,
    rel_u: torch.Tensor,
    rel_idx: torch.Tensor,
    u: torch.Tensor,
) -> None:
    """Move the other items whose score equals a relevant item's exactly to the side the gallery order puts them on
    (ties: smaller gallery index first), in ``hist`` (in place)."""
    for row in tied.any(1).nonzero().squeeze(1).tolist() if bool(tied.any()) else []:
        for col in tied[row].nonzero().squeeze(1).tolist():
            lo = int(pos[row, col])
            hi = int(torch.searchsorted(rel_u[row], u[row, col], right=True))
            at = lo + int((rel_idx[row, lo:hi] < col).sum())
            hist[row, lo] -= 1
            hist[row, at] += 1


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
) -> RetrievalScores:
    """Exact mAP and CMC@ks of the queries against the gallery (see the module docstring)."""
    q, g, ks = _checked(q_emb, q_ids, q_labels, g_emb, g_ids, g_labels, ks, metric)
    nq, ng = q.shape[0], g.shape[0]
    qi_np, gi_np = _codes(q_ids, g_ids)
    ql_np, gl_np = _codes(q_labels, g_labels)
    qi, gi, ql, gl = (torch.from_numpy(a) for a in (qi_np, gi_np, ql_np, gl_np))
    qc, gc = (torch.from_numpy(a) for a in _camera_codes(q_cams, g_cams, nq, ng))
    by_label, by_id = _members(gl_np), _members(gi_np)
    # rank order = ascending u, ties by gallery index; u = -score
    if metric == "l2":
        gt, g_bias = (-2 * g).T.contiguous(), (g * g).sum(1)  # ||q-g||^2 - ||q||^2
    else:
        gt, g_bias = (-g).T.contiguous(), None
    aps: list[torch.Tensor] = []
    first_ranks: list[torch.Tensor] = []
    skipped = 0
    bs = int(max(1, min(8192, (memory_budget_mb << 20) // max(1, ng * 24))))
    for s in range(0, nq, bs):
        e = min(nq, s + bs)
        cand, cvalid = _group_block(*by_label, ql[s:e])  # same label: relevant, or junk (self / same camera)
        cjunk = (gc[cand] == qc[s:e, None]) | (gi[cand] == qi[s:e, None])
        crel = cvalid & ~cjunk
        n_rel = crel.sum(1)
        has = n_rel > 0
        skipped += int((~has).sum())
        if not bool(has.any()):
            continue
        rows = has.nonzero().squeeze(1) + s
        cand, cvalid, crel, n_rel = cand[has], cvalid[has], crel[has], n_rel[has]
        selfs, svalid = _group_block(*by_id, qi[rows])  # the query itself under another label: junk too
        svalid &= gl[selfs] != ql[rows, None]
        u = q[rows] @ gt
        if g_bias is not None:
            u += g_bias
        cu, su = u.gather(1, cand), u.gather(1, selfs)
        r_max = int(n_rel.max())
        key, order = torch.sort(torch.where(crel, cu, torch.full_like(cu, float("inf"))), dim=1, stable=True)
        rel_u, rel_idx = key[:, :r_max].contiguous(), cand.gather(1, order)[:, :r_max]
        pos = torch.searchsorted(rel_u, u)  # relevant items with a strictly smaller u
        hist = torch.zeros(len(rows), r_max + 1, dtype=torch.int64)
        hist.scatter_add_(1, pos, torch.ones(1, 1, dtype=torch.int64).expand_as(pos))
        for items, ok in ((cu, cvalid), (su, svalid)):  # relevant and junk items are not "other" items
            hist.scatter_add_(1, torch.searchsorted(rel_u, items.contiguous()), -ok.long())
        line = torch.arange(len(rows))[:, None]
        for items, ok in ((cand, cvalid), (selfs, svalid)):  # NaN equals nothing: only other items can tie
            u[line.expand_as(items)[ok], items[ok]] = float("nan")
        rel_ext = torch.cat([rel_u, torch.full((len(rows), 1), float("nan"))], 1)
        tied = rel_ext.gather(1, pos) == u  # another item with exactly a relevant item's score
        _break_exact_ties(hist, tied, pos, rel_u, rel_idx, u)
        before = hist.cumsum(1)[:, :r_max]
        m = torch.arange(1, r_max + 1, dtype=torch.float64)[None, :]
        ranks = m + before.double()
        aps.append(torch.where(m <= n_rel[:, None], m / ranks, torch.zeros_like(ranks)).sum(1) / n_rel.double())
        first_ranks.append(ranks[:, 0])
    if not aps:
        return RetrievalScores(mAP=0.0, cmc={k: 0.0 for k in ks}, num_queries=0, skipped=skipped)
    ap = torch.cat(aps)
    first = torch.cat(first_ranks)
    return RetrievalScores(
        mAP=float(ap.mean()),
        cmc={k: float((first <= k).double().mean()) for k in ks},
        num_queries=int(ap.numel()),
        skipped=skipped,
        ap=ap.numpy(),
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

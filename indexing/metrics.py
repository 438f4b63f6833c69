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
bounded by the block size (about 32 bytes per query x gallery item).

Independent of the grouping: a matrix product's rounding depends on the block's shape, so the ranking is defined
by each pair's score of record (``_canonical_scores``: exact float64 products, a fixed summation tree), ties by
gallery order. The block's scores are float64; the items within their rounding bound (``_rounding_bound``) of a
relevant item's score (exact ties included) are placed again by their scores of record; every other item is too
far for the rounding to reorder it. A query's AP is thus the same alone, in any block and behind any route."""

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


def _canonical_scores(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """Each pair's score of record, ``u`` (smaller ranks first): one function of the two vectors alone, whatever
    the block, the batch or the machine's matrix kernels.

    The products of float32 components are exact in float64; they are summed by a fixed pairwise tree of
    element-wise float64 additions (each correctly rounded, so the order is fixed and the result reproducible)."""
    q64, g64 = q.double(), g.double()
    prods = q64 * g64  # (P, D), exact
    terms = torch.cat([-2.0 * prods, g64 * g64], 1) if metric == "l2" else -prods
    width = 1 << max(0, int(terms.shape[1] - 1).bit_length())
    if width != terms.shape[1]:
        terms = torch.cat([terms, terms.new_zeros(terms.shape[0], width - terms.shape[1])], 1)
    while terms.shape[1] > 1:
        half = terms.shape[1] // 2
        terms = terms[:, :half] + terms[:, half:]
    return terms[:, 0]


def _rounding_bound(q: torch.Tensor, g_max: float, metric: str, unit: float = 2.0**-53) -> torch.Tensor:
    """Per query: a bound on |computed score - exact score| for any gallery item and any summation order, with
    ``unit`` the unit roundoff (float32: 2^-24, float64: 2^-53): gamma_D times the sum of |terms| (by
    Cauchy-Schwarz), taken twice over for safety."""
    d = q.shape[1]
    q_norm = q.double().norm(dim=-1)
    magnitude = (2.0 * q_norm * g_max + g_max * g_max) if metric == "l2" else q_norm * g_max
    return 2.0 * (d + 2) * unit * magnitude


def _relevant_ahead(
    q: torch.Tensor, items: torch.Tensor, rel: torch.Tensor, g: torch.Tensor, metric: str
) -> torch.Tensor:
    """For each of one query's ``items``: how many of its relevant items ``rel`` rank ahead of it by the score of
    record (ties: smaller gallery index first)."""
    q_rep = q[None, :].expand(len(items), -1)
    mine = _canonical_scores(q_rep, g[items], metric)[:, None]
    theirs = _canonical_scores(q[None, :].expand(len(rel), -1), g[rel], metric)[None, :]
    return ((theirs < mine) | ((theirs == mine) & (rel[None, :] < items[:, None]))).sum(1)


def _place_near_items(
    hist: torch.Tensor,
    bins: torch.Tensor,
    near: torch.Tensor,
    rel_idx: torch.Tensor,
    n_rel: torch.Tensor,
    q_rows: torch.Tensor,
    g: torch.Tensor,
    metric: str,
) -> None:
    """Move each ``near`` item (within the rounding of a relevant item's block score) from its block-score bin of
    ``hist`` to the bin of the scores of record (``_relevant_ahead``), in place."""
    rows, cols = near.nonzero(as_tuple=True)  # row-major: each row's items together
    if not len(rows):
        return
    exact = torch.empty_like(rows)
    start = 0
    for row, k in enumerate(torch.bincount(rows, minlength=len(hist)).tolist()):
        if k:
            items, rel = cols[start : start + k], rel_idx[row, : int(n_rel[row])]
            exact[start : start + k] = _relevant_ahead(q_rows[row], items, rel, g, metric)
            start += k
    hist.index_put_((rows, bins[rows, cols]), torch.full_like(rows, -1), accumulate=True)
    hist.index_put_((rows, exact), torch.ones_like(rows), accumulate=True)


def _block_ranks(
    u: torch.Tensor,
    cand: torch.Tensor,
    cvalid: torch.Tensor,
    crel: torch.Tensor,
    n_rel: torch.Tensor,
    selfs: torch.Tensor,
    svalid: torch.Tensor,
    q_rows: torch.Tensor,
    g: torch.Tensor,
    g_max: float,
    metric: str,
) -> torch.Tensor:
    """(B, r_max) float64: the rank of each query's m-th relevant item among the items that count (the module
    docstring); ``u`` is the block's scores (float64, changed in place)."""
    cu, su = u.gather(1, cand), u.gather(1, selfs)
    r_max = int(n_rel.max())
    key, order = torch.sort(torch.where(crel, cu, torch.full_like(cu, float("inf"))), dim=1, stable=True)
    rel_u, rel_idx = key[:, :r_max], cand.gather(1, order)[:, :r_max]
    band = 2.0 * _rounding_bound(q_rows, g_max, metric)[:, None]
    # each relevant score's rounding window [u_r - band, u_r + band], overlapping windows merged by cummax: an item
    # in a gap (even position 2k) surely has k relevant items ahead of it; one in a window (odd) is placed exactly
    edges = torch.stack([rel_u - band, rel_u + band], 2).flatten(1).cummax(1).values.contiguous()
    bins = torch.searchsorted(edges, u)
    near = (bins & 1).bool()
    bins >>= 1
    hist = torch.zeros(len(u), r_max + 1, dtype=torch.int64)
    hist.scatter_add_(1, bins, torch.ones(1, 1, dtype=torch.int64).expand_as(bins))
    for items, ok in ((cu, cvalid), (su, svalid)):  # relevant and junk items are not "other" items
        hist.scatter_add_(1, torch.searchsorted(edges, items.contiguous()) >> 1, -ok.long())
    line = torch.arange(len(u))[:, None]
    for items, ok in ((cand, cvalid), (selfs, svalid)):
        near[line.expand_as(items)[ok], items[ok]] = False
    _place_near_items(hist, bins, near, rel_idx, n_rel, q_rows, g, metric)
    m = torch.arange(1, r_max + 1, dtype=torch.float64)[None, :]
    return m + hist.cumsum(1)[:, :r_max].double()


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
    qi_np, gi_np = _codes(q_ids, g_ids)
    ql_np, gl_np = _codes(q_labels, g_labels)
    qi, gi, ql, gl = (torch.from_numpy(a) for a in (qi_np, gi_np, ql_np, gl_np))
    qc, gc = (torch.from_numpy(a) for a in _camera_codes(q_cams, g_cams, nq, ng))
    by_label, by_id = _members(gl_np), _members(gi_np)
    # rank order = ascending u, ties by gallery index; u = -score
    if metric == "l2":
        gt, g_bias = (-2 * g.double()).T.contiguous(), (g.double() ** 2).sum(1)  # ||q-g||^2 - ||q||^2
    else:
        gt, g_bias = (-g.double()).T.contiguous(), None
    g_max = float(g.double().norm(dim=1).max()) if ng else 0.0  # for the rounding bound of the block scores
    aps: list[torch.Tensor] = []
    first_ranks: list[torch.Tensor] = []
    skipped = 0
    bs = int(max(1, min(8192, (memory_budget_mb << 20) // max(1, ng * 32)))) if block_size is None else block_size
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
        if not bool(has.any()):
            continue
        rows = has.nonzero().squeeze(1) + s
        cand, cvalid, crel, n_rel = cand[has], cvalid[has], crel[has], n_rel[has]
        selfs, svalid = _group_block(*by_id, qi[rows])  # the query itself under another label: junk too
        svalid &= gl[selfs] != ql[rows, None]
        u = q[rows].double() @ gt  # float32 vectors, float64 scores: rounding far below float32's resolution
        if g_bias is not None:
            u += g_bias
        ranks = _block_ranks(u, cand, cvalid, crel, n_rel, selfs, svalid, q[rows], g, g_max, metric)
        m = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)[None, :]
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

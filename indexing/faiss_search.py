"""The FAISS backend's search path, as array operations: ID selectors for filters, the exact re-ranking of IVF-PQ
candidates from the raw vectors (``refine``), and FAISS's rows turned into hits in one pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from indexing.backend import Hit
from indexing.faiss_factory import faiss_module
from indexing.idmap import IdMap
from indexing.planning import HNSW_EF_SEARCH

REFINE_QUERIES = 16  # queries searched and re-ranked at a time (their candidates' vectors are gathered)
BITMAP_FROM = 4096  # selections of more rows use a bitmap (one bit per row) instead of a hashed batch


def id_selector(rows: np.ndarray) -> tuple[Any, Any]:
    """A FAISS ID selector of ``rows``, and what must stay alive while it is used."""
    faiss = faiss_module()
    if len(rows) < BITMAP_FROM:
        sel = faiss.IDSelectorBatch(rows)
        return sel, sel
    bits = np.zeros(int(rows.max()) + 1, bool)
    bits[rows] = True
    packed = np.packbits(bits, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    return sel, (sel, packed)


def search_parameters(index: Any, kind: str, params: dict[str, Any], sel: Any) -> Any:
    """FAISS search parameters carrying ``sel``, with the index's own nprobe / efSearch."""
    faiss = faiss_module()
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=sel, efSearch=int(params.get("efSearch", HNSW_EF_SEARCH)))
    if kind in ("ivf", "ivfpq"):
        return faiss.SearchParametersIVF(sel=sel, nprobe=int(faiss.extract_index_ivf(index).nprobe))
    return faiss.SearchParameters(sel=sel)


def refined_search(
    index: Any,
    q: np.ndarray,
    k: int,
    refine: int,
    metric: str,
    take: Callable[[np.ndarray], np.ndarray],
    params: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(q, k)``; with ``refine`` > 1, its top ``k * refine`` re-ranked by the exact inner product or
    squared L2 distance to the raw vectors (``take(rows)``: e.g. the memory-mapped vectors.npy), as FAISS's
    IndexRefine does, without holding the raw vectors in memory."""
    kw = {} if params is None else {"params": params}
    if refine <= 1:
        return index.search(q, k, **kw)
    kk = min(k * refine, max(1, index.ntotal))
    k = min(k, kk)
    scores, rows = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    for s in range(0, len(q), REFINE_QUERIES):  # bounded: a block's candidates and their vectors at a time
        e = min(len(q), s + REFINE_QUERIES)
        _, found = index.search(q[s:e], kk, **kw)
        scores[s:e], rows[s:e] = _rerank(q[s:e], found, k, metric, take)
    return scores, rows


def _rerank(
    q: np.ndarray, found: np.ndarray, k: int, metric: str, take: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    ok = found >= 0
    uniq, inv = np.unique(np.where(ok, found, found[ok].max(initial=0)), return_inverse=True)
    vecs = take(uniq)[inv.reshape(found.shape)]  # (n, kk, d): only the candidates are read
    if metric == "cosine":
        exact = np.einsum("nd,nkd->nk", q, vecs)
        exact[~ok] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    else:
        exact = np.einsum("nkd,nkd->nk", vecs, vecs) - 2 * np.einsum("nd,nkd->nk", q, vecs)
        exact += np.einsum("nd,nd->n", q, q)[:, None]
        exact[~ok] = np.inf
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(np.where(ok, found, -1), order, 1)
    return np.take_along_axis(exact, order, 1).astype(np.float32), rows


def make_hits(idmap: IdMap, scores: np.ndarray, pos: np.ndarray, valid: np.ndarray, k: int) -> list[list[Hit]]:
    """The first ``k`` valid entries of each query (``pos``: positions in ``idmap``, in rank order), as hits."""
    if valid[:, :k].all():  # the common case: the first k are all valid
        keep = valid[:, :k]
        p, s = pos[:, :k].ravel(), scores[:, :k].ravel().tolist()
    else:
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # valid ones first, in rank order
        keep = np.take_along_axis(valid, order, 1)
        p = np.take_along_axis(pos, order, 1)[keep]
        s = np.take_along_axis(scores, order, 1)[keep].tolist()
    hits = list(map(Hit, idmap.ids_at(p), s, idmap.labels_at(p), idmap.cameras_at(p)))
    ends = np.cumsum(keep.sum(1)).tolist()
    return [hits[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]

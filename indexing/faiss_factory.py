"""FAISS itself: the module (imported on first use), GPU detection, the metric mapping, the ``index_factory`` string of
each type, search parameters (nprobe, efSearch) and their tuning to a recall target against exact search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from indexing.embeddings import EmbeddingSource
from indexing.errors import UserError
from indexing.planning import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, PQ_BITS, default_nlist, pq_m

TARGET_RECALL = 0.95
REFINE_FACTORS = (2, 4, 8, 16)  # IVF-PQ: candidates re-ranked exactly, per hit asked for
SEARCH_PARAMS = ("nprobe", "efSearch")  # the entries of index.json's params that are FAISS search parameters


def faiss_module():
    import faiss

    return faiss


def gpu_available() -> bool:
    faiss = faiss_module()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def use_gpu(requested: bool | None) -> bool:
    """None: the GPU when faiss-gpu and a GPU are present; True without them is an error."""
    available = gpu_available()
    if requested and not available:
        raise UserError("--gpu: no GPU FAISS here (install the `gpu` extra, faiss-gpu, on a machine with a GPU)")
    return available if requested is None else bool(requested)


def faiss_metric(metric: str) -> int:
    """The one mapping of a metric name to FAISS's: cosine (of L2-normalised vectors) is the inner product."""
    faiss = faiss_module()
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def factory_string(kind: str, dim: int, n: int, nlist: int | None = None) -> str:
    """The ``faiss.index_factory`` string of a ``kind`` index for ``n`` vectors of dimension ``dim``.

    Flat and HNSW sit in an IDMap2 (int64 ids); IVF indexes store int64 ids natively (and an id map over them would
    break on remove_ids). IVF-PQ's ``np`` turns off polysemous training, which the factory would otherwise turn on
    (IndexIVFPQ's own default is off): it only renumbers the codes, and it makes training many times slower."""
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return f"IDMap2,HNSW{HNSW_M}"
    nlist = default_nlist(n) if nlist is None else nlist
    if kind == "ivf":
        return f"IVF{nlist},Flat"
    if kind == "ivfpq":
        return f"IVF{nlist},PQ{pq_m(dim)}x{PQ_BITS}np"
    raise ValueError(f"unknown index type {kind!r}")


def new_index(kind: str, dim: int, metric: str, n: int, nlist: int | None = None) -> tuple[Any, str, dict[str, int]]:
    """An empty index of ``kind`` (IVF ones untrained), its factory string, and its initial params."""
    faiss = faiss_module()
    factory = factory_string(kind, dim, n, nlist)
    index = faiss.index_factory(dim, factory, faiss_metric(metric))
    if kind == "hnsw":  # efConstruction is not part of a factory string
        set_parameter(index, "efConstruction", HNSW_EF_CONSTRUCTION)
        return index, factory, {"efSearch": HNSW_EF_SEARCH}
    if kind == "flat":
        return index, factory, {}
    return index, factory, {"nlist": int(faiss.extract_index_ivf(index).nlist), "nprobe": 1}


def set_parameter(index: Any, name: str, value: float) -> None:
    """Set a FAISS parameter (it reaches through IDMap2); a GPU index (faiss-gpu) needs GpuParameterSpace."""
    faiss = faiss_module()
    on_gpu = isinstance(index, getattr(faiss, "GpuIndex", ()))
    (faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()).set_index_parameter(index, name, value)


def apply_params(index: Any, params: dict[str, Any]) -> None:
    """Set the search parameters (nprobe, efSearch) that ``params`` (index.json's) holds; the other entries are
    records (nlist, the tuned recall), and a search parameter that the index lacks is skipped, as before."""
    for name in SEARCH_PARAMS:
        if name in params:
            try:
                set_parameter(index, name, int(params[name]))
            except RuntimeError:  # FAISS: "could not set parameter" (e.g. nprobe of an HNSW index)
                pass


def recall_at_10(search: Callable[[np.ndarray, int], tuple], queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = search(queries, truth.shape[1])
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def exact_search(source: EmbeddingSource, queries: np.ndarray, k: int, metric: str, chunk_rows: int) -> np.ndarray:
    """The exact top-``k`` rows of each query, a block of rows at a time (the rows are never all in memory)."""
    faiss = faiss_module()
    best_d = np.full((len(queries), 0), 0, np.float32)
    best_i = np.full((len(queries), 0), -1, np.int64)
    for start, block in source.chunks(chunk_rows):
        flat = faiss.IndexFlat(source.dim, faiss_metric(metric))
        flat.add(block)
        d, i = flat.search(queries, min(k, len(block)))
        best_d, best_i = np.hstack([best_d, d]), np.hstack([best_i, i + start])
        keep = np.argsort(-best_d if metric == "cosine" else best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def tune(
    index: Any,
    kind: str,
    params: dict[str, int],
    source: EmbeddingSource,
    metric: str,
    chunk_rows: int,
    seed: int = 0,
    refined: Callable[[int], Callable[[np.ndarray, int], tuple]] | None = None,
) -> dict[str, int]:
    """Smallest nprobe / efSearch reaching the target recall@10 vs exact search on a sample of the data. IVF-PQ's
    recall is bounded by its compression: when it stays short and ``refined`` is given (``refined(factor)``: a
    search that re-ranks the top ``k * factor`` exactly), the smallest of REFINE_FACTORS that reaches the target
    is tuned too and recorded as ``refine``."""
    n = len(source)
    if kind == "flat" or n < 20:
        return params
    rng = np.random.default_rng(seed)
    sample = source.take(rng.choice(n, size=min(500, n), replace=False))
    k = min(10, n)
    truth = exact_search(source, sample, k, metric, chunk_rows)
    if kind == "hnsw":
        grid, key = [16, 32, 64, 128, 256, 512, 1024], "efSearch"
    else:
        grid, key = sorted({min(params["nlist"], 2**i) for i in range(0, 16)}), "nprobe"
    factors = (0, *REFINE_FACTORS) if kind == "ivfpq" and refined is not None else (0,)
    for factor in factors:
        search = refined(factor) if factor else index.search
        chosen, recall = grid[-1], 0.0
        for value in grid:
            apply_params(index, {key: value})
            recall = recall_at_10(search, sample, truth)
            if recall >= TARGET_RECALL + 0.02:  # margin for unseen queries
                chosen = value
                break
        if recall >= TARGET_RECALL + 0.02:
            break
    # the reached recall is recorded either way
    params = {**params, key: chosen, "tuned_recall_at_10": round(recall, 4), **({"refine": factor} if factor else {})}
    apply_params(index, params)
    return params

"""Index type and memory planning, with no FAISS: what each index type takes in memory (``index_bytes``), the type
``--type auto`` picks under a budget (``choose_type``), and how a build spends the budget (``plan_build``). The
FAISS backend and the Milvus one both size their indexes from here (docs/formats.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from indexing.errors import UserError

INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
FLAT_MAX = 20_000  # below this, exact search is fast enough
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64
PQ_BITS = 8
IVF_GROWTH = 2  # inverted lists hold up to twice their contents while they grow (std::vector doubling)


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str) -> float:
    """``--max-memory``: ``512MB``, ``4GB``, ``1.5GiB``, ``800M``, ``2048`` (bytes) -> MiB. K, M, G and T are powers of
    1024, with or without ``B`` / ``iB``."""
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise UserError(f"--max-memory {text!r}: not a size such as 512MB or 4GB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 2**20:
        raise UserError(f"--max-memory {text!r}: at least 1MB is needed")
    return value / 2**20


def index_bytes(kind: str, n: int, dim: int, nlist: int | None = None) -> int:
    """What an index of ``kind`` holding ``n`` vectors takes in memory, about: flat and IVF-Flat store the vectors
    (4 bytes a value) and an 8-byte id each, IVF-PQ a code of ``pq_m(dim)`` bytes and the id, HNSW the vector and
    its graph links; IVF adds its ``nlist`` centroids and IVF-PQ its codebooks. An IVF index's inverted lists grow
    as the build adds to them (each list a vector that doubles its capacity when full): up to IVF_GROWTH times
    what they hold, which is what the OS sees during the build."""
    nlist = default_nlist(n) if nlist is None else nlist
    if kind == "flat":
        return n * (4 * dim + 16)
    if kind == "hnsw":
        return n * (4 * dim + 8 * HNSW_M + 16)
    if kind == "ivf":
        return IVF_GROWTH * n * (4 * dim + 8) + 4 * nlist * dim
    if kind == "ivfpq":
        return IVF_GROWTH * n * (pq_m(dim) + 8) + 4 * nlist * dim + 4 * 2**PQ_BITS * dim
    raise ValueError(f"unknown index type {kind!r}")


def choose_type(n: int, dim: int, memory_budget_mb: float = 4096) -> str:
    """flat for small collections (up to FLAT_MAX) whose index fits the budget; else IVF-Flat while its index (the raw
    vectors) fits the budget; else IVF-PQ when its codes fit; else an error that says what would fit."""
    budget = memory_budget_mb * 2**20
    if n <= FLAT_MAX and index_bytes("flat", n, dim) <= budget:
        return "flat"
    for kind in ("ivf", "ivfpq"):
        if index_bytes(kind, n, dim) <= budget:
            return kind
    need = index_bytes("ivfpq", n, dim) / 2**20
    raise UserError(
        f"--max-memory {memory_budget_mb:.0f}MB is too small for {n} vectors of dimension {dim}: the smallest index "
        f"(IVF-PQ) takes about {need:.0f}MB"
    )


@dataclass(frozen=True)
class BuildPlan:
    """How a build uses its memory budget: the index type, its nlist (IVF; None: the default), how many rows
    train it (a seeded sample), and how many rows are read and added at a time."""

    kind: str
    nlist: int | None
    train_rows: int
    chunk_rows: int


def plan_build(
    kind: str,
    n: int,
    dim: int,
    memory_budget_mb: float,
    nlist: int | None = None,
    train_rows: int | None = None,
    held_bytes: int = 0,
) -> BuildPlan:
    """The budget left after the index (``index_bytes``) and ``held_bytes`` (what the build holds besides: the
    embeddings' ids, labels, cameras and paths) is the build's working memory: an eighth of it for each block of
    rows read and added (a sixteenth for IVF-PQ; at least 1024 rows) and half of it for the training sample, which
    is at most 256 rows per IVF list (IVF-PQ: a quarter, as its training also holds the sample's residuals). When
    that sample is smaller than FAISS's 39 rows per list, nlist is lowered to fit it.
    ``nlist`` and ``train_rows`` (``--nlist``, ``--train-rows``) override the rule (the sample still fits the
    budget: a UserError says what does)."""
    kind = choose_type(n, dim, memory_budget_mb) if kind == "auto" else kind
    row = 4 * dim
    work = max(0.0, memory_budget_mb * 2**20 - index_bytes(kind, n, dim) - held_bytes)  # held: ids, labels, ...
    per_block = 16 if kind == "ivfpq" else 8  # IVF-PQ's add also holds the block's residuals and their codes
    chunk_rows = int(min(max(n, 1), max(1024, work // per_block // row)))  # a block and its successor being read
    if kind not in ("ivf", "ivfpq"):
        return BuildPlan(kind, None, 0, chunk_rows)
    fit = int(work // 2 // row // (2 if kind == "ivfpq" else 1))  # IVF-PQ trains its codebooks on a copy: residuals
    if nlist is None:
        nlist = default_nlist(n)
        if fit < 39 * nlist:
            nlist = max(1, min(nlist, fit // 39))
    elif not 1 <= nlist <= n:
        raise UserError(f"--nlist {nlist}: must be between 1 and the number of vectors ({n})")
    if train_rows is None:
        return BuildPlan(kind, nlist, int(min(n, 256 * nlist, max(39 * nlist, fit))), chunk_rows)
    if not nlist <= train_rows <= min(n, max(fit, nlist)):
        raise UserError(
            f"--train-rows {train_rows}: must be at least --nlist ({nlist}) and at most {min(n, max(fit, nlist))} "
            "(the vectors, and what the memory budget leaves for the training sample)"
        )
    return BuildPlan(kind, nlist, int(train_rows), chunk_rows)


def pq_m(dim: int) -> int:
    for m in (dim // 4, dim // 8, dim // 2, 16, 8, 4, 2, 1):
        if m >= 1 and dim % m == 0 and m <= 96:
            return m
    return 1


def default_nlist(n: int) -> int:
    return int(max(1, min(n // 39, 4 * np.sqrt(max(n, 1)))))

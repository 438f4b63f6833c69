"""The one interface of an index backend (``IndexBackend``), the checks and score conversion both backends share,
and the one place a backend is chosen: ``open_index`` and ``build_index``.

Backends: ``faiss`` (indexing/faiss_index.py, an index folder) and ``milvus`` (indexing/milvus.py, a Milvus
collection). Each is imported only when chosen, so a Milvus-only install never imports FAISS.

Errors every backend raises: ``UserError`` for bad input (dimension, k, vectors), ``DuplicateIdError`` /
``UnknownIdError`` on add / remove, ``ReadOnlyIndexError`` on a write to a read-only index (HTTP 409); the Milvus
backend adds ``MilvusError`` when Milvus fails a request (HTTP 503)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from indexing.errors import UserError
from indexing.filters import SearchFilter
from indexing.store import VideoMeta

BACKENDS = ("faiss", "milvus")


class DuplicateIdError(UserError):
    pass


class UnknownIdError(UserError):
    pass


class ReadOnlyIndexError(UserError):
    """A write to an index opened memory-mapped (``mmap=True``, ``vidret serve --mmap``): the service answers 409."""

    http_status = 409


class Hit(NamedTuple):
    """One search result (a named tuple: made per hit on the search path, it costs a tuple)."""

    id: str
    score: float
    label: str
    camera: str


class RWLock:
    """Many readers or one writer; a waiting writer goes before readers that arrive after it (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def checked_vectors(vectors: np.ndarray, n: int, dim: int) -> np.ndarray:
    """``vectors`` to add as (n, dim) contiguous float32, or a UserError saying what is wrong with them."""
    vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if vectors.shape != (n, dim):
        raise UserError(f"expected {n} vectors of dimension {dim}, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise UserError("vectors contain NaN or inf")
    return vectors


class IndexInfo:
    """What a backend's ``info`` record (index.json, or the Milvus record) says of its index, as properties."""

    info: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def type(self) -> str:
        return str(self.info["type"])

    @property
    def metric(self) -> str:
        return str(self.info["metric"])

    @property
    def created(self) -> str:
        return str(self.info["created"])

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.info.get("checkpoint_sha256")


def checked_queries(vectors: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Search queries as (n, dim) contiguous float32, or a UserError naming what is wrong (dimension, k)."""
    q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise UserError(f"query vectors have dimension {q.shape[-1]}, the index has {dim}")
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    return q


def to_scores(raw: np.ndarray, metric: str) -> np.ndarray:
    """What an engine returns (inner product; squared L2 distance) as the score a hit carries: the cosine, or minus
    the L2 distance, so that higher is better for both metrics."""
    raw = np.asarray(raw, dtype=np.float32)
    return raw if metric == "cosine" else -np.sqrt(np.maximum(raw, 0.0))


@runtime_checkable
class IndexBackend(Protocol):
    """What the service, the CLI and the review export use of an index, whichever backend holds it."""

    info: dict[str, Any]
    read_only: bool  # writes raise ReadOnlyIndexError (a memory-mapped FAISS index)

    @property
    def dim(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def created(self) -> str: ...
    @property
    def checkpoint_sha256(self) -> str | None: ...
    @property
    def count(self) -> int: ...
    @property
    def dirty(self) -> bool:
        """Writes were made since the last ``save``."""

    def get(self, vid: str) -> VideoMeta | None: ...
    def vector(self, vid: str) -> np.ndarray | None: ...
    def ids(self) -> list[str]: ...
    def page(self, offset: int = 0, limit: int | None = None) -> list[VideoMeta]:
        """The entries from ``offset`` on (at most ``limit``), in the order of ``ids()``."""

    def snapshot(self) -> tuple[list[VideoMeta], np.ndarray]:
        """All entries and their vectors, consistently (for exact evaluation)."""

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude_ids: Sequence[str | None] | None = None,
        filter: SearchFilter | dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest entries of each query, best first, without the query's ``exclude_ids`` entry; with a
        ``filter``, only entries whose metadata match (fewer than ``k`` when fewer match)."""

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        labels: Sequence[str],
        cameras: Sequence[str],
        paths: Sequence[str],
    ) -> None:
        """Durable on return; DuplicateIdError for an id present (or repeated)."""

    def remove(self, ids: Sequence[str]) -> None:
        """Durable on return; UnknownIdError for an id not present."""

    def save(self) -> None: ...
    def close(self) -> None: ...


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"--backend must be faiss or milvus, got {backend!r}")
    return backend


def open_index(
    backend: str,
    path: str | Path | None = None,
    *,
    mmap: bool = False,
    gpu: bool | None = False,
    milvus_uri: str | None = None,
    milvus_collection: str = "vidret",
    milvus_token: str | None = None,
) -> IndexBackend:
    """Open an index: ``faiss``, the index folder ``path`` (``mmap``: memory-mapped, read-only); ``milvus``, the
    collection ``milvus_collection`` at ``milvus_uri``."""
    if check_backend(backend) == "milvus":
        from indexing.milvus import MilvusIndex

        if not milvus_uri:
            raise UserError("--milvus-uri is required with --backend milvus")
        return MilvusIndex.open(milvus_uri, milvus_collection, token=milvus_token)
    if path is None:
        raise UserError("an index folder is required with --backend faiss")
    from indexing.faiss_index import VideoIndex

    return VideoIndex.load(path, gpu=gpu, mmap=mmap)


def build_index(
    backend: str,
    embeddings: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    type: str = "auto",
    metric: str = "cosine",
    memory_budget_mb: float = 4096,
    overwrite: bool = False,
    gpu: bool | None = None,
    milvus_uri: str | None = None,
    milvus_collection: str = "vidret",
    milvus_token: str | None = None,
    nlist: int | None = None,
    train_rows: int | None = None,
) -> IndexBackend:
    """Build an index of embeddings files (``.npz``, shard lists, shard folders): ``faiss``, the folder ``out``
    (read a block at a time within ``memory_budget_mb``, returned memory-mapped); ``milvus``, a collection."""
    from indexing.embeddings import EmbeddingSource, expand_sources

    if check_backend(backend) == "milvus":
        from indexing.embeddings import load_embeddings

        if nlist is not None or train_rows is not None:
            raise UserError("--nlist and --train-rows are for --backend faiss (Milvus sizes its own index)")
        from indexing.milvus import MilvusIndex

        if not milvus_uri:
            raise UserError("--milvus-uri is required with --backend milvus")
        files = expand_sources(embeddings)
        return MilvusIndex.build(
            (load_embeddings(p) for p in files),
            milvus_uri,
            milvus_collection,
            type=type,
            metric=metric,
            memory_budget_mb=memory_budget_mb,
            overwrite=overwrite,
            token=milvus_token,
        )
    if out is None:
        raise UserError("--out is required (the index folder to create)")
    from indexing.faiss_index import VideoIndex

    source = EmbeddingSource.open(embeddings)
    return VideoIndex.build(
        source,
        out,
        type=type,
        metric=metric,
        gpu=gpu,
        checkpoint_sha256=source.checkpoint_sha256,
        memory_budget_mb=memory_budget_mb,
        overwrite=overwrite,
        mmap=True,
        nlist=nlist,
        train_rows=train_rows,
    )

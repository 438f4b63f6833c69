"""FAISS indexes of video embeddings, with string ids, metadata, durable adds/removes and crash-atomic snapshots.

An index folder holds::

    index.json          the published snapshot: type, metric, dim, count, the checkpoint's sha256, created, search
                        parameters, ``generation`` (which gen-<n>/ holds the snapshot) and ``snapshot_seq`` (the
                        journal position the snapshot holds)
    gen-<n>/            one snapshot: index.faiss (the FAISS index, int64 ids), vectors.npy + rows.npy (the raw
                        embeddings and their int64 ids, for exact evaluation and rebuilds)
    metadata.sqlite     id, label, camera, path, added_at, and the journal of adds/removes (see indexing/store.py)

A snapshot is written as a new generation: its files are written and fsynced, then its folder, and it is published
by replacing ``index.json`` atomically (the one rename that matters). Only then is the journal trimmed and the
previous generation removed, so a crash at any moment leaves the previous snapshot or the new one, each with the
journal entries that follow it. Folders of the first layout (the snapshot's files next to ``index.json``, no
``generation``) still load; the next save moves them to a generation.

Types: ``flat`` (exact), ``ivf`` (IVF-Flat), ``ivfpq`` (IVF-PQ), ``hnsw``, made by ``faiss.index_factory`` from the
string that ``factory_string`` gives (recorded in index.json as ``factory``); ``auto`` picks by collection size and a
memory budget (``choose_type``), which also sizes the build's training sample and blocks (``plan_build``): the build
reads its embeddings a block at a time (``EmbeddingSource``) and never holds them all. ``load(mmap=True)`` maps
vectors.npy and the inverted lists of IVF indexes (``faiss.IO_FLAG_MMAP``) instead of reading them; such an index is
read-only. IVF and HNSW indexes have nprobe / efSearch tuned on a held-out sample so that recall@10 against
exact search is >= 0.95; they are set with FAISS's ParameterSpace.
Searches run concurrently (one at a time on a GPU index: FAISS GPU indexes are not thread-safe); an add or remove
takes the write side of a readers-writer lock; a snapshot holds the read side only while it copies the index.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from indexing.atomic import atomic_write, atomic_write_text, fsync_dir
from indexing.embeddings import Embeddings, EmbeddingSource
from indexing.errors import UserError
from indexing.filters import SearchFilter
from indexing.store import MetadataStore, VideoMeta

INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
FLAT_MAX = 20_000  # below this, exact search is fast enough
TARGET_RECALL = 0.95
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64
PQ_BITS = 8
SEARCH_PARAMS = ("nprobe", "efSearch")  # the entries of index.json's params that are FAISS search parameters
POINTER = "index.json"  # the published snapshot: replaced atomically, last
STORE = "metadata.sqlite"
SNAPSHOT_FILES = ("vectors.npy", "rows.npy", "index.faiss")  # inside gen-<n>/ (at the top in the first layout)
LAYOUT_VERSION = 2  # 1: the snapshot's files next to index.json
_GEN = re.compile(r"gen-(\d+)")


_GPU_RESOURCES: list[Any] = []


class DuplicateIdError(UserError):
    pass


class UnknownIdError(UserError):
    pass


class ReadOnlyIndexError(UserError):
    """A write to an index opened memory-mapped (``mmap=True``, ``vidret serve --mmap``): the service answers 409."""

    http_status = 409


@dataclass(frozen=True)
class Hit:
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


def _faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def use_gpu(requested: bool | None) -> bool:
    """None: the GPU when faiss-gpu and a GPU are present; True without them is an error."""
    available = gpu_available()
    if requested and not available:
        raise UserError("--gpu: no GPU FAISS here (install the `gpu` extra, faiss-gpu, on a machine with a GPU)")
    return available if requested is None else bool(requested)


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
    (4 bytes a value) and an 8-byte id each, IVF-PQ a code of ``_pq_m(dim)`` bytes and the id, HNSW the vector and
    its graph links; IVF adds its ``nlist`` centroids and IVF-PQ its codebooks."""
    nlist = _nlist(n) if nlist is None else nlist
    if kind == "flat":
        return n * (4 * dim + 16)
    if kind == "hnsw":
        return n * (4 * dim + 8 * HNSW_M + 16)
    if kind == "ivf":
        return n * (4 * dim + 8) + 4 * nlist * dim
    if kind == "ivfpq":
        return n * (_pq_m(dim) + 8) + 4 * nlist * dim + 4 * 2**PQ_BITS * dim
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


def plan_build(kind: str, n: int, dim: int, memory_budget_mb: float) -> BuildPlan:
    """The budget left after the index (``index_bytes``) is the build's working memory: an eighth of it for each
    block of rows read and added (at least 1024 rows) and half of it for the training sample, which is at most 256
    rows per IVF list. When that sample is smaller than FAISS's 39 rows per list, nlist is lowered to fit it."""
    kind = choose_type(n, dim, memory_budget_mb) if kind == "auto" else kind
    row = 4 * dim
    work = max(0.0, memory_budget_mb * 2**20 - index_bytes(kind, n, dim))
    chunk_rows = int(min(max(n, 1), max(1024, work // 8 // row)))  # a block and its successor while it is read
    if kind not in ("ivf", "ivfpq"):
        return BuildPlan(kind, None, 0, chunk_rows)
    fit = int(work // 2 // row)
    nlist = _nlist(n)
    if fit < 39 * nlist:
        nlist = max(1, min(nlist, fit // 39))
    return BuildPlan(kind, nlist, int(min(n, 256 * nlist, max(39 * nlist, fit))), chunk_rows)


def _pq_m(dim: int) -> int:
    for m in (dim // 4, dim // 8, dim // 2, 16, 8, 4, 2, 1):
        if m >= 1 and dim % m == 0 and m <= 96:
            return m
    return 1


def _nlist(n: int) -> int:
    return int(max(1, min(n // 39, 4 * np.sqrt(max(n, 1)))))


def _faiss_metric(metric: str) -> int:
    """The one mapping of a metric name to FAISS's: cosine (of L2-normalised vectors) is the inner product."""
    faiss = _faiss()
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
    nlist = _nlist(n) if nlist is None else nlist
    if kind == "ivf":
        return f"IVF{nlist},Flat"
    if kind == "ivfpq":
        return f"IVF{nlist},PQ{_pq_m(dim)}x{PQ_BITS}np"
    raise ValueError(f"unknown index type {kind!r}")


def _new_index(kind: str, dim: int, metric: str, n: int, nlist: int | None = None) -> tuple[Any, str, dict[str, int]]:
    """An empty index of ``kind`` (IVF ones untrained), its factory string, and its initial params."""
    faiss = _faiss()
    factory = factory_string(kind, dim, n, nlist)
    index = faiss.index_factory(dim, factory, _faiss_metric(metric))
    if kind == "hnsw":  # efConstruction is not part of a factory string
        _set_parameter(index, "efConstruction", HNSW_EF_CONSTRUCTION)
        return index, factory, {"efSearch": HNSW_EF_SEARCH}
    if kind == "flat":
        return index, factory, {}
    return index, factory, {"nlist": int(faiss.extract_index_ivf(index).nlist), "nprobe": 1}


def _set_parameter(index: Any, name: str, value: float) -> None:
    """Set a FAISS parameter (it reaches through IDMap2); a GPU index (faiss-gpu) needs GpuParameterSpace."""
    faiss = _faiss()
    on_gpu = isinstance(index, getattr(faiss, "GpuIndex", ()))
    (faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()).set_index_parameter(index, name, value)


def _apply_params(index: Any, params: dict[str, Any]) -> None:
    """Set the search parameters (nprobe, efSearch) that ``params`` (index.json's) holds; the other entries are
    records (nlist, the tuned recall), and a search parameter that the index lacks is skipped, as before."""
    for name in SEARCH_PARAMS:
        if name in params:
            try:
                _set_parameter(index, name, int(params[name]))
            except RuntimeError:  # FAISS: "could not set parameter" (e.g. nprobe of an HNSW index)
                pass


def _recall_at_10(index: Any, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, truth.shape[1])
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def _exact_search(source: EmbeddingSource, queries: np.ndarray, k: int, metric: str, chunk_rows: int) -> np.ndarray:
    """The exact top-``k`` rows of each query, a block of rows at a time (the rows are never all in memory)."""
    faiss = _faiss()
    best_d = np.full((len(queries), 0), 0, np.float32)
    best_i = np.full((len(queries), 0), -1, np.int64)
    for start, block in source.chunks(chunk_rows):
        flat = faiss.IndexFlat(source.dim, _faiss_metric(metric))
        flat.add(block)
        d, i = flat.search(queries, min(k, len(block)))
        best_d, best_i = np.hstack([best_d, d]), np.hstack([best_i, i + start])
        keep = np.argsort(-best_d if metric == "cosine" else best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def _tune(
    index: Any, kind: str, params: dict[str, int], source: EmbeddingSource, metric: str, chunk_rows: int, seed: int = 0
) -> dict[str, int]:
    """Smallest nprobe / efSearch reaching the target recall@10 vs exact search on a sample of the data."""
    n = len(source)
    if kind == "flat" or n < 20:
        return params
    rng = np.random.default_rng(seed)
    sample = source.take(rng.choice(n, size=min(500, n), replace=False))
    k = min(10, n)
    truth = _exact_search(source, sample, k, metric, chunk_rows)
    if kind == "hnsw":
        grid, key = [16, 32, 64, 128, 256, 512, 1024], "efSearch"
    else:
        nlist = params["nlist"]
        grid, key = sorted({min(nlist, 2**i) for i in range(0, 16)}), "nprobe"
    chosen, recall = grid[-1], 0.0
    for value in grid:
        _apply_params(index, {key: value})
        recall = _recall_at_10(index, sample, truth)
        if recall >= TARGET_RECALL + 0.02:  # margin for unseen queries
            chosen = value
            break
    # IVF-PQ's recall is bounded by its compression: the reached recall is recorded either way
    params = {**params, key: chosen, "tuned_recall_at_10": round(recall, 4)}
    _apply_params(index, params)
    return params


@dataclass(frozen=True)
class _Copy:
    """An index's contents at one journal position, to be written without holding its lock."""

    seq: int
    vectors: np.ndarray
    rows: np.ndarray
    faiss_data: np.ndarray  # faiss.serialize_index


def _gen_dir(root: Path, gen: int) -> Path:
    return root / f"gen-{gen}"


def _generations(root: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _GEN.fullmatch(p.name)))


def _write_vectors(fh: Any, source: EmbeddingSource, chunk_rows: int) -> None:
    """vectors.npy of ``source``, a block of rows at a time: the .npy header, then the rows (never all in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(fh, {**header, "shape": (len(source), source.dim)})
    for _, block in source.chunks(chunk_rows):
        fh.write(memoryview(block).cast("B"))


def _write_generation(
    root: Path,
    gen: int,
    vectors: np.ndarray | Any,
    rows: np.ndarray,
    faiss_data: np.ndarray | Any,
    info: dict[str, Any],
) -> None:
    """Write gen-<gen>/ (each file fsynced, then the folders) and publish it by replacing index.json: before that
    rename readers see the previous snapshot, after it this one. ``vectors`` is an array or a function that writes
    vectors.npy to a file object (the build streams it); ``faiss_data`` is ``faiss.serialize_index``'s bytes or the
    index itself, written through FAISS's writer without a serialised copy in memory."""
    folder = _gen_dir(root, gen)
    folder.mkdir()  # a new name: a generation is never written over
    write_vectors = vectors if callable(vectors) else (lambda fh: np.save(fh, vectors, allow_pickle=False))
    atomic_write(folder / "vectors.npy", write_vectors)
    atomic_write(folder / "rows.npy", lambda fh: np.save(fh, rows, allow_pickle=False))
    if isinstance(faiss_data, np.ndarray):
        atomic_write(folder / "index.faiss", lambda fh: fh.write(memoryview(faiss_data)))
    else:
        faiss = _faiss()
        write_index = partial(faiss.write_index, faiss_data)
        atomic_write(folder / "index.faiss", lambda fh: write_index(faiss.PyCallbackIOWriter(fh.write)))
    fsync_dir(root)  # the folder's own entry, before the pointer that names it
    atomic_write_text(root / POINTER, json.dumps({**info, "generation": gen}, indent=2))


def _insert_metadata(path: Path, source: EmbeddingSource, now: float, chunk_rows: int) -> None:
    """A new metadata store holding row i = the source's i-th embedding, inserted a block at a time."""
    store = MetadataStore(path, create=True)
    try:
        paths = source.paths if source.paths is not None else np.full(len(source), "")
        for start in range(0, len(source), chunk_rows):
            part = slice(start, start + chunk_rows)
            store.insert_initial(
                [
                    VideoMeta(str(i), start + k, str(lab), str(cam), str(p), now)
                    for k, (i, lab, cam, p) in enumerate(
                        zip(source.ids[part], source.labels[part], source.cameras[part], paths[part], strict=True)
                    )
                ]
            )
    finally:
        store.close()


def _remove_unpublished(root: Path, published: int) -> None:
    """Remove the generations other than the published one (older ones, and any a crash left half-written), the
    snapshot files of the first layout, and temporaries of interrupted writes."""
    for gen in _generations(root):
        if gen != published:
            shutil.rmtree(_gen_dir(root, gen))
    for name in SNAPSHOT_FILES:
        (root / name).unlink(missing_ok=True)
    for tmp in (t for name in (*SNAPSHOT_FILES, POINTER) for t in root.glob(f".{name}.*")):
        tmp.unlink(missing_ok=True)
    fsync_dir(root)


def _new_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/<prefix><random>``, mode 0755 less the umask (tempfile.mkdtemp's are 0700: a web
    server or container user of another uid could not read the index published from it)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o755)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free name for {prefix}*")


def _move_into_place(new: Path, out: Path) -> None:
    """Rename the folder ``new`` to ``out``. An existing ``out`` is first renamed aside (``.<name>.old-<random>``)
    and deleted only once ``new`` is in place, so a crash never leaves a half-deleted index: ``out`` holds the old
    index or the new one (or, between the two renames, the old one is whole under its aside name). If the second
    rename fails, the old one is put back."""
    aside = None
    if out.exists():
        aside = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, aside)
    try:
        os.rename(new, out)
    except BaseException:
        if aside is not None:
            os.rename(aside, out)
        raise
    fsync_dir(out.parent)
    if aside is not None:
        shutil.rmtree(aside)


class _RowVectors(MutableMapping):
    """row -> vector: the snapshot's rows.npy and vectors.npy (in memory, or memory-mapped) plus the adds and removes
    made since, without a Python object per stored row."""

    def __init__(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self._order = np.argsort(rows, kind="stable")
        self._rows = np.asarray(rows, dtype=np.int64)[self._order]
        self._vectors = vectors
        self._removed: set[int] = set()
        self._added: dict[int, np.ndarray] = {}

    def _pos(self, row: int) -> int | None:
        i = int(np.searchsorted(self._rows, row))
        if i < len(self._rows) and self._rows[i] == row and row not in self._removed:
            return int(self._order[i])
        return None

    def __getitem__(self, row: int) -> np.ndarray:
        if row in self._added:
            return self._added[row]
        pos = self._pos(row)
        if pos is None:
            raise KeyError(row)
        return self._vectors[pos]

    def __setitem__(self, row: int, vector: np.ndarray) -> None:
        if self._pos(row) is not None:
            self._removed.add(row)
        self._added[row] = vector

    def __delitem__(self, row: int) -> None:
        if self._added.pop(row, None) is None:
            if self._pos(row) is None:
                raise KeyError(row)
            self._removed.add(row)

    def __iter__(self) -> Iterator[int]:
        for r in self._rows.tolist():
            if r not in self._removed:
                yield r
        yield from list(self._added)

    def __len__(self) -> int:
        return len(self._rows) - len(self._removed) + len(self._added)

    def stack(self, rows: Sequence[int], dim: int) -> np.ndarray:
        """The vectors of ``rows`` (all present) as one array, in that order."""
        if not len(rows):
            return np.zeros((0, dim), np.float32)
        if not self._added and not self._removed:  # one fancy index instead of a lookup per row
            pos = self._order[np.searchsorted(self._rows, np.asarray(rows, dtype=np.int64))]
            return np.asarray(self._vectors[pos], dtype=np.float32)
        return np.stack([self[r] for r in rows])


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


class VideoIndex(IndexInfo):
    """A FAISS index with string ids and metadata; use ``build`` or ``load``."""

    def __init__(
        self,
        path: Path,
        index: Any,
        info: dict[str, Any],
        store: MetadataStore,
        metas: list[VideoMeta],
        vectors: np.ndarray,
        rows: np.ndarray,
        gpu: bool,
    ) -> None:
        self.path, self._index, self.info, self.store = path, index, info, store
        self._lock = RWLock()
        self._gpu = gpu
        self._by_id: dict[str, VideoMeta] = {m.id: m for m in metas}
        self._by_row: dict[int, VideoMeta] = {m.row: m for m in metas}
        self._vec_by_row = _RowVectors(rows, vectors)
        self.read_only = False  # opened memory-mapped: writes raise ReadOnlyIndexError
        self._tombstones: set[int] = set()  # HNSW cannot remove: filtered at search time until the next save
        self._search_index = self._to_gpu(index) if gpu else index
        self._save_lock = threading.Lock()  # one snapshot at a time
        self._gpu_search_lock = threading.Lock()  # FAISS GPU indexes are not thread-safe, even for search

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self._by_id)

    # ---- build / load / save ----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        emb: Embeddings | EmbeddingSource,
        out_dir: str | Path,
        type: str = "auto",
        metric: str = "cosine",
        gpu: bool | None = None,
        checkpoint_sha256: str | None = None,
        memory_budget_mb: float = 4096,
        overwrite: bool = False,
        mmap: bool = False,
    ) -> VideoIndex:
        """Build an index folder from embeddings in memory or an ``EmbeddingSource`` (many files, read a block at a
        time). The vectors are never all in memory at once, except inside a flat, IVF-Flat or HNSW index itself:
        the index is trained on a seeded sample, the rows are added and vectors.npy is written a block at a time
        (``plan_build``). ``mmap``: open the result memory-mapped (read-only, as ``load``)."""
        if type not in INDEX_TYPES:
            raise UserError(f"--type must be one of {', '.join(INDEX_TYPES)}, got {type!r}")
        if metric not in ("cosine", "l2"):
            raise UserError(f"--metric must be cosine or l2, got {metric!r}")
        source = emb if isinstance(emb, EmbeddingSource) else EmbeddingSource.from_embeddings(emb)
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise UserError(f"{out}: the folder exists and is not empty (choose another --out or remove it)")
        if not len(source):
            raise UserError("embeddings: no vectors to index")
        on_gpu = use_gpu(gpu)
        n, dim = len(source), source.dim
        plan = plan_build(type, n, dim, memory_budget_mb)
        index, factory, params = _new_index(plan.kind, dim, metric, n, plan.nlist)
        if not index.is_trained:
            train_index = cls._to_gpu(index) if on_gpu else index
            train_index.train(source.take(np.random.default_rng(0).choice(n, size=plan.train_rows, replace=False)))
            index = cls._to_cpu(train_index) if on_gpu else index
        for start, block in source.chunks(plan.chunk_rows):
            index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        params = _tune(index, plan.kind, params, source, metric, plan.chunk_rows)
        now = time.time()
        info = {
            "type": plan.kind,
            "metric": metric,
            "dim": dim,
            "count": n,
            "checkpoint_sha256": checkpoint_sha256,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "factory": factory,
            "params": params,
            "snapshot_seq": 0,
            "format": "vidret-index",
            "version": LAYOUT_VERSION,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_dir(out.parent, f".{out.name}.")
        try:
            _insert_metadata(tmp / STORE, source, now, plan.chunk_rows)
            rows = np.arange(n, dtype=np.int64)
            vectors = partial(_write_vectors, source=source, chunk_rows=plan.chunk_rows)
            _write_generation(tmp, 1, vectors, rows, index, info)
            del index  # the written index is loaded again below (memory-mapped with ``mmap``)
            _move_into_place(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return cls.load(out, gpu=gpu, mmap=mmap)

    @staticmethod
    def _published(path: Path) -> tuple[dict[str, Any], Path]:
        """index.json and the folder holding the snapshot it names (the index folder itself in the first layout)."""
        if not (path / POINTER).is_file():
            raise UserError(f"{path}: not a vidret index (missing {POINTER})")
        try:
            info = json.loads((path / POINTER).read_text())
            int(info["dim"])
            gen = info.get("generation")
            if gen is not None and (isinstance(gen, bool) or not isinstance(gen, int) or gen < 1):
                raise ValueError(f"generation {gen!r} is not a positive integer")
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path / POINTER}: corrupt ({exc})") from None
        return info, path if gen is None else _gen_dir(path, gen)

    @staticmethod
    def _missing(path: Path, folder: Path) -> list[str]:
        names = [(folder / f).relative_to(path).as_posix() for f in SNAPSHOT_FILES if not (folder / f).is_file()]
        return names + ([STORE] if not (path / STORE).is_file() else [])

    @classmethod
    def load(cls, index_dir: str | Path, gpu: bool | None = None, mmap: bool = False) -> VideoIndex:
        """Open an index folder (the published snapshot, then the journal replayed). ``mmap``: vectors.npy and, for
        IVF and IVF-PQ, the FAISS index's inverted lists are memory-mapped (``faiss.IO_FLAG_MMAP``) instead of read,
        so an index larger than RAM can be searched; the index is then read-only (adds and removes raise
        ``ReadOnlyIndexError``), and a journal that is not in the snapshot yet is refused."""
        path = Path(index_dir)
        if not path.is_dir():
            raise UserError(f"{path}: index folder not found")
        info, folder = cls._published(path)
        missing = cls._missing(path, folder)
        if missing:  # another process may have published a newer generation and removed this one meanwhile
            info, folder = cls._published(path)
            missing = cls._missing(path, folder)
        if missing:
            raise UserError(f"{path}: not a vidret index (missing {', '.join(missing)})")
        dim = int(info["dim"])
        index, vectors, rows = cls._read_snapshot(folder, info, mmap)
        _apply_params(index, info.get("params", {}))
        store = MetadataStore(path / STORE)
        obj = cls(path, index, info, store, [], vectors, rows, gpu=False)
        pending = store.journal_since(int(info.get("snapshot_seq", 0)), dim)
        if mmap and pending:
            store.close()
            raise UserError(
                f"{path}: {len(pending)} adds/removes are in the journal but not in the snapshot, and a memory-mapped "
                "index cannot apply them: open it once without --mmap (the server writes a snapshot when it stops)"
            )
        obj.read_only = mmap
        for e in pending:  # replay (idempotent)
            if e.op == "add":
                if e.meta.row not in obj._vec_by_row:
                    obj._apply_add([e.meta], e.vector[None, :])
            else:
                obj._apply_remove_rows([e.row])
        metas = store.all()
        obj._by_id = {m.id: m for m in metas}
        obj._by_row = {m.row: m for m in metas}
        if set(obj._by_row) != set(obj._vec_by_row):
            raise UserError(
                f"{path}: metadata and vectors disagree ({len(obj._by_row)} vs {len(obj._vec_by_row)} "
                f"entries); the index folder was modified outside vidret"
            )
        obj._gpu = use_gpu(gpu)
        obj._search_index = cls._to_gpu(obj._index) if obj._gpu else obj._index
        return obj

    @staticmethod
    def _read_snapshot(folder: Path, info: dict[str, Any], mmap: bool) -> tuple[Any, np.ndarray, np.ndarray]:
        """The snapshot's FAISS index, vectors and rows; with ``mmap``, mapped rather than read where FAISS can
        (the inverted lists of IVF indexes) and the vectors always."""
        faiss = _faiss()
        ivf = str(info.get("type")) in ("ivf", "ivfpq")
        try:
            index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP if mmap and ivf else 0)
        except RuntimeError as exc:
            raise UserError(
                f"{folder / 'index.faiss'}: corrupt FAISS index ({str(exc).splitlines()[0][:120]})"
            ) from None
        try:
            vectors = np.load(folder / "vectors.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
            rows = np.load(folder / "rows.npy", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{folder}: corrupt vectors.npy / rows.npy ({exc})") from None
        dim = int(info["dim"])
        if index.d != dim or vectors.ndim != 2 or vectors.shape[1] != dim or len(rows) != len(vectors):
            raise UserError(f"{folder}: index.faiss, vectors.npy and index.json disagree on the shape")
        return index, vectors, rows

    @property
    def dirty(self) -> bool:
        """Whether adds or removes were made since the published snapshot (they are in the journal)."""
        return self.store.last_seq() > int(self.info.get("snapshot_seq", 0))

    def save(self) -> None:
        """Compact: write a snapshot as a new generation, publish it (index.json), then trim the journal and remove
        the previous generation. One save at a time; the index's lock is held (read side) only while its contents
        are copied, so searches and writes go on while the files are written. When a write fails this raises and
        the previous snapshot stays published, with the journal entries after it."""
        self._check_writable()  # a mapped index is the published snapshot already
        with self._save_lock:
            copy = self._copy()
            gen = max([int(self.info.get("generation") or 0), *_generations(self.path)]) + 1
            info = {k: v for k, v in self.info.items() if k != "generation"}
            info.update(count=len(copy.rows), snapshot_seq=copy.seq, version=LAYOUT_VERSION)
            _write_generation(self.path, gen, copy.vectors, copy.rows, copy.faiss_data, info)
            self.info.update(info, generation=gen)
            self.store.truncate_journal(copy.seq)  # only now: the published snapshot holds these entries
            _remove_unpublished(self.path, gen)

    def _copy(self) -> _Copy:
        """The contents at one journal position: every write committed up to ``seq`` and none after it."""
        faiss = _faiss()
        with self._lock.read():  # no write is half-applied while this is held
            seq = self.store.last_seq()
            rows = np.array(sorted(self._vec_by_row), dtype=np.int64)
            vectors = self._vec_by_row.stack(rows, self.dim)
            stale = bool(self._tombstones)
            data = None if stale else faiss.serialize_index(self._index)
        if stale:  # HNSW cannot remove: a fresh index of the copy, built without the lock, replaces the live one
            index = self._fresh_index(vectors, rows)
            data = faiss.serialize_index(index)
            self._swap_in(index, rows)
        return _Copy(seq, vectors, rows, data)

    def close(self) -> None:
        with self._save_lock:  # a save in progress finishes first
            self.store.close()

    # ---- GPU -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _to_gpu(index: Any) -> Any:
        faiss = _faiss()
        if not _GPU_RESOURCES:  # one set of GPU resources per process, kept alive for the indexes using it
            _GPU_RESOURCES.append(faiss.StandardGpuResources())
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)

    @staticmethod
    def _to_cpu(index: Any) -> Any:
        return _faiss().index_gpu_to_cpu(index)

    # ---- reads ----------------------------------------------------------------------------------------------
    def get(self, vid: str) -> VideoMeta | None:
        return self._by_id.get(vid)

    def vector(self, vid: str) -> np.ndarray | None:
        m = self._by_id.get(vid)
        return None if m is None else self._vec_by_row.get(m.row)

    def ids(self) -> list[str]:
        return list(self._by_id)

    def page(self, offset: int = 0, limit: int | None = None) -> list[VideoMeta]:
        """The entries from ``offset`` on (at most ``limit``; all with None), in the order of ``ids()``: a listing's
        page without copying every id."""
        with self._lock.read():
            return list(islice(self._by_id.values(), offset, None if limit is None else offset + limit))

    def snapshot(self) -> tuple[list[VideoMeta], np.ndarray]:
        """All entries and their vectors, consistently (for exact evaluation)."""
        with self._lock.read():
            metas = sorted(self._by_id.values(), key=lambda m: m.row)
            vecs = self._vec_by_row.stack([m.row for m in metas], self.dim)
        return metas, vecs

    def _selection(self, flt: SearchFilter) -> tuple[Any, int, Any]:
        """The search parameters that carry a FAISS ID selector over the rows whose metadata match ``flt``, with the
        index's own nprobe / efSearch (None when no row matches); how many rows match; and the selector itself
        (the parameters do not keep it alive). The caller holds the read lock. Removed HNSW rows are out of
        ``_by_row``, so the selection leaves them out too."""
        faiss = _faiss()
        rows = np.fromiter(
            (r for r, m in self._by_row.items() if flt.matches(m.label, m.camera)), dtype=np.int64, count=-1
        )
        if not len(rows):
            return None, 0, None
        sel = faiss.IDSelectorBatch(rows)
        if self.type == "hnsw":
            ef = int(self.info.get("params", {}).get("efSearch", HNSW_EF_SEARCH))
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        elif self.type in ("ivf", "ivfpq"):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(faiss.extract_index_ivf(self._index).nprobe))
        else:
            params = faiss.SearchParameters(sel=sel)
        return params, len(rows), sel

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude_ids: Sequence[str | None] | None = None,
        filter: SearchFilter | dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest entries of each query, best first, without the query's ``exclude_ids`` entry. With a
        ``filter`` (indexing/filters.py), only entries whose metadata match are searched, through a FAISS ID
        selector on the CPU index (also when a GPU copy answers the unfiltered searches); fewer than ``k`` hits
        when fewer match."""
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise UserError(f"query vectors have dimension {q.shape[1]}, the index has {self.dim}")
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        flt = SearchFilter.of(filter)
        with self._lock.read():
            if flt is None:
                extra = len(self._tombstones) + (1 if exclude_ids is not None else 0)
                kk = min(k + extra, max(1, self._index.ntotal))
                with self._gpu_search_lock if self._gpu else nullcontext():
                    scores, found = self._search_index.search(q, kk)
            else:
                params, matching, _sel = self._selection(flt)
                if not matching:
                    return [[] for _ in range(len(q))]
                kk = min(k + (1 if exclude_ids is not None else 0), matching)
                scores, found = self._index.search(q, kk, params=params)
            out = []
            for qi in range(len(q)):
                skip = exclude_ids[qi] if exclude_ids is not None else None
                hits = []
                for s, r in zip(scores[qi], found[qi], strict=True):
                    m = self._by_row.get(int(r))
                    if r < 0 or m is None or int(r) in self._tombstones or m.id == skip:
                        continue
                    hits.append(
                        Hit(
                            m.id,
                            float(s) if self.metric == "cosine" else -float(np.sqrt(max(s, 0.0))),
                            m.label,
                            m.camera,
                        )
                    )
                    if len(hits) == k:
                        break
                out.append(hits)
        return out

    # ---- writes (durable on return) -----------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        labels: Sequence[str],
        cameras: Sequence[str],
        paths: Sequence[str],
    ) -> None:
        vectors = checked_vectors(vectors, len(ids), self.dim)
        self._check_writable()
        with self._lock.write():
            dup = [i for i in ids if i in self._by_id]
            if dup or len(set(ids)) != len(ids):
                raise DuplicateIdError(f"id {dup[0] if dup else ids[0]!r} already exists")
            metas, _ = self.store.add(ids, labels, cameras, paths, vectors)  # committed: durable from here
            self._apply_add(metas, vectors)

    def remove(self, ids: Sequence[str]) -> None:
        self._check_writable()
        with self._lock.write():
            unknown = [i for i in ids if i not in self._by_id]
            if unknown:
                raise UnknownIdError(f"unknown id {unknown[0]!r}")
            rows = [self._by_id[i].row for i in ids]
            self.store.remove(ids, rows)  # committed: durable from here
            self._apply_remove_rows(rows)

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyIndexError(
                "the index is served memory-mapped (read-only): adds and deletes are refused; serve it without "
                "--mmap to change it"
            )

    def _apply_add(self, metas: list[VideoMeta], vectors: np.ndarray) -> None:
        rows = np.array([m.row for m in metas], dtype=np.int64)
        self._index.add_with_ids(vectors, rows)
        if self._search_index is not self._index:
            self._search_index.add_with_ids(vectors, rows)
        for m, v in zip(metas, vectors, strict=True):
            self._by_id[m.id], self._by_row[m.row], self._vec_by_row[m.row] = m, m, v.copy()

    def _apply_remove_rows(self, rows: list[int]) -> None:
        if not rows:
            return
        arr = np.array(rows, dtype=np.int64)
        if self.type == "hnsw":
            self._tombstones.update(int(r) for r in rows if r in self._vec_by_row)
        else:
            self._index.remove_ids(arr)
            if self._search_index is not self._index:
                self._search_index.remove_ids(arr)
        for r in rows:
            if r not in self._vec_by_row:
                continue
            m = self._by_row.pop(r, None)
            if m is not None:
                self._by_id.pop(m.id, None)
            self._vec_by_row.pop(r, None)

    def _fresh_index(self, vectors: np.ndarray, rows: np.ndarray) -> Any:
        """A new index of this type holding exactly ``vectors`` (for HNSW, which cannot remove)."""
        index, _, _ = _new_index(self.type, self.dim, self.metric, len(rows))
        _apply_params(index, self.info.get("params", {}))
        if len(rows):
            index.add_with_ids(vectors, rows)
        return index

    def _swap_in(self, index: Any, rows: np.ndarray) -> None:
        """Make ``index`` (built from a copy holding ``rows``) the live index, with the writes made since the copy."""
        with self._lock.write():
            had = set(rows.tolist())
            added = [r for r in self._vec_by_row if r not in had]
            if added:
                index.add_with_ids(np.stack([self._vec_by_row[r] for r in added]), np.array(added, dtype=np.int64))
            gone = had - self._vec_by_row.keys()
            if gone and self.type != "hnsw":
                index.remove_ids(np.array(sorted(gone), dtype=np.int64))
            self._index = index
            self._search_index = self._to_gpu(index) if self._gpu else index
            self._tombstones = gone if self.type == "hnsw" else set()

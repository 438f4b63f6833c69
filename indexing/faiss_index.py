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
import shutil
import threading
import time
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from indexing.backend import (
    DuplicateIdError,
    Hit,
    IndexInfo,
    ReadOnlyIndexError,
    RWLock,
    UnknownIdError,
    checked_queries,
    checked_vectors,
    to_scores,
)
from indexing.embeddings import Embeddings, EmbeddingSource
from indexing.errors import UserError
from indexing.faiss_factory import apply_params, faiss_module, new_index, tune, use_gpu
from indexing.faiss_search import id_selector, make_hits, refined_search, search_parameters
from indexing.filters import SearchFilter
from indexing.idmap import IdMap
from indexing.layout import (
    LAYOUT_VERSION,
    POINTER,
    SNAPSHOT_FILES,
    STORE,
    gen_dir,
    generations,
    insert_metadata,
    move_into_place,
    new_dir,
    remove_unpublished,
    write_generation,
    write_vectors,
)
from indexing.planning import INDEX_TYPES, plan_build
from indexing.store import MetadataStore, VideoMeta

_GPU_RESOURCES: list[Any] = []


@dataclass(frozen=True)
class _Copy:
    """An index's contents at one journal position, to be written without holding its lock."""

    seq: int
    vectors: np.ndarray
    rows: np.ndarray
    faiss_data: np.ndarray  # faiss.serialize_index


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

    def row_array(self) -> np.ndarray:
        """The rows held, sorted, as an array (no Python object per row when nothing was added or removed)."""
        rows = self._rows
        if self._removed:
            rows = rows[~np.isin(rows, np.fromiter(self._removed, np.int64, len(self._removed)))]
        if self._added:
            rows = np.union1d(rows, np.fromiter(self._added, np.int64, len(self._added)))
        return rows

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (all present), any shape of rows -> that shape + (dim,)."""
        rows = np.asarray(rows, np.int64)
        return self.stack(rows.ravel(), self._vectors.shape[1]).reshape(*rows.shape, -1)

    def stack(self, rows: Sequence[int], dim: int) -> np.ndarray:
        """The vectors of ``rows`` (all present) as one array, in that order."""
        if not len(rows):
            return np.zeros((0, dim), np.float32)
        if not self._added and not self._removed:  # one fancy index instead of a lookup per row
            pos = self._order[np.searchsorted(self._rows, np.asarray(rows, dtype=np.int64))]
            return np.asarray(self._vectors[pos], dtype=np.float32)
        return np.stack([self[r] for r in rows])


def _refiner(index: Any, metric: str, source: EmbeddingSource) -> Any:
    """``factor`` -> a search of ``index`` re-ranked exactly from ``source`` (the build's tuning of IVF-PQ)."""
    return lambda factor: partial(refined_search, index, refine=factor, metric=metric, take=source.take)


class VideoIndex(IndexInfo):
    """A FAISS index with string ids and metadata; use ``build`` or ``load``."""

    def __init__(
        self,
        path: Path,
        index: Any,
        info: dict[str, Any],
        store: MetadataStore,
        vectors: np.ndarray,
        rows: np.ndarray,
        gpu: bool,
    ) -> None:
        self.path, self._index, self.info, self.store = path, index, info, store
        self._lock = RWLock()
        self._gpu = gpu
        self._map = IdMap()  # rows -> ids, labels, cameras, in arrays (indexing/idmap.py); the rest is in the store
        self._vec_by_row = _RowVectors(rows, vectors)
        self.read_only = False  # opened memory-mapped: writes raise ReadOnlyIndexError
        self._tombstones: set[int] = set()  # HNSW cannot remove: filtered at search time until the next save
        self._search_index = self._to_gpu(index) if gpu else index
        self._save_lock = threading.Lock()  # one snapshot at a time
        self._gpu_search_lock = threading.Lock()  # FAISS GPU indexes are not thread-safe, even for search

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._map.count

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
        nlist: int | None = None,
        train_rows: int | None = None,
        refine: bool = True,
    ) -> VideoIndex:
        """Build an index folder from embeddings in memory or an ``EmbeddingSource`` (many files, read a block at a
        time). The vectors are never all in memory at once, except inside a flat, IVF-Flat or HNSW index itself:
        the index is trained on a seeded sample, the rows are added and vectors.npy is written a block at a time
        (``plan_build``). ``mmap``: open the result memory-mapped (read-only, as ``load``). ``nlist`` and
        ``train_rows`` override the plan's; ``refine``: let IVF-PQ re-rank exactly when PQ alone misses the
        recall target (``params.refine``)."""
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
        held = sum(a.nbytes for a in (source.ids, source.labels, source.cameras, source.paths) if a is not None)
        plan = plan_build(type, n, dim, memory_budget_mb, nlist, train_rows, held_bytes=held)
        index, factory, params = new_index(plan.kind, dim, metric, n, plan.nlist)
        if not index.is_trained:
            train_index = cls._to_gpu(index) if on_gpu else index
            train_index.train(source.take(np.random.default_rng(0).choice(n, size=plan.train_rows, replace=False)))
            index = cls._to_cpu(train_index) if on_gpu else index
            del train_index  # the index alone from here: freed once written
        for start, block in source.chunks(plan.chunk_rows):
            index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
        refined = _refiner(index, metric, source) if refine else None  # IVF-PQ's exact re-rank, where needed
        params = tune(index, plan.kind, params, source, metric, plan.chunk_rows, refined=refined)
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
        tmp = new_dir(out.parent, f".{out.name}.")
        try:
            insert_metadata(tmp / STORE, source, now, plan.chunk_rows)
            rows = np.arange(n, dtype=np.int64)
            vectors = partial(write_vectors, source=source, chunk_rows=plan.chunk_rows)
            write_generation(tmp, 1, vectors, rows, index, info)
            del index, refined  # the written index is loaded again below (memory-mapped with ``mmap``)
            move_into_place(tmp, out)
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
        return info, path if gen is None else gen_dir(path, gen)

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
        apply_params(index, info.get("params", {}))
        store = MetadataStore(path / STORE)
        obj = cls(path, index, info, store, vectors, rows, gpu=False)
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
        obj._map = IdMap.from_store(store)  # after the replay: the store holds every committed write
        if not np.array_equal(obj._map.alive_rows(), obj._vec_by_row.row_array()):
            raise UserError(
                f"{path}: metadata and vectors disagree ({obj._map.count} vs {len(obj._vec_by_row)} "
                f"entries); the index folder was modified outside vidret"
            )
        obj._gpu = use_gpu(gpu)
        obj._search_index = cls._to_gpu(obj._index) if obj._gpu else obj._index
        return obj

    @staticmethod
    def _read_snapshot(folder: Path, info: dict[str, Any], mmap: bool) -> tuple[Any, np.ndarray, np.ndarray]:
        """The snapshot's FAISS index, vectors and rows; with ``mmap``, mapped rather than read where FAISS can
        (the inverted lists of IVF indexes) and the vectors always."""
        faiss = faiss_module()
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
            gen = max([int(self.info.get("generation") or 0), *generations(self.path)]) + 1
            info = {k: v for k, v in self.info.items() if k != "generation"}
            info.update(count=len(copy.rows), snapshot_seq=copy.seq, version=LAYOUT_VERSION)
            write_generation(self.path, gen, copy.vectors, copy.rows, copy.faiss_data, info)
            self.info.update(info, generation=gen)
            self.store.truncate_journal(copy.seq)  # only now: the published snapshot holds these entries
            remove_unpublished(self.path, gen)

    def _copy(self) -> _Copy:
        """The contents at one journal position: every write committed up to ``seq`` and none after it."""
        faiss = faiss_module()
        with self._lock.read():  # no write is half-applied while this is held
            seq = self.store.last_seq()
            rows = self._vec_by_row.row_array()
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
        faiss = faiss_module()
        if not _GPU_RESOURCES:  # one set of GPU resources per process, kept alive for the indexes using it
            _GPU_RESOURCES.append(faiss.StandardGpuResources())
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)

    @staticmethod
    def _to_cpu(index: Any) -> Any:
        return faiss_module().index_gpu_to_cpu(index)

    # ---- reads ----------------------------------------------------------------------------------------------
    def get(self, vid: str) -> VideoMeta | None:
        return self.store.get(vid)

    def vector(self, vid: str) -> np.ndarray | None:
        m = self.store.get(vid)
        return None if m is None else self._vec_by_row.get(m.row)

    def ids(self) -> list[str]:
        with self._lock.read():
            return self._map.ids_at(np.flatnonzero(self._map.alive))

    def page(self, offset: int = 0, limit: int | None = None) -> list[VideoMeta]:
        """The entries from ``offset`` on (at most ``limit``; all with None), in the order of ``ids()`` (row order):
        a listing's page, read from the metadata store."""
        return self.store.page(offset, limit)

    def snapshot(self) -> tuple[list[VideoMeta], np.ndarray]:
        """All entries and their vectors, consistently (for exact evaluation)."""
        with self._lock.read():
            metas = self.store.all()
            vecs = self._vec_by_row.stack([m.row for m in metas], self.dim)
        return metas, vecs

    def _selection(self, flt: SearchFilter) -> tuple[Any, int, Any]:
        """The search parameters that carry a FAISS ID selector over the rows whose metadata match ``flt``, with the
        index's own nprobe / efSearch (None when no row matches); how many rows match; and what must stay alive
        while they are used (the parameters do not keep the selector alive). The caller holds the read lock."""
        rows = self._map.matching_rows(flt)  # removed rows (HNSW's too) are not alive, so not selected
        if not len(rows):
            return None, 0, None
        sel, keep = id_selector(rows)
        return search_parameters(self._index, self.type, self.info.get("params", {}), sel), len(rows), keep

    def _exclude_rows(self, exclude_ids: Sequence[str | None] | None, n: int) -> np.ndarray | None:
        """The row of each query's excluded id (-1: none or unknown), in one metadata query."""
        if exclude_ids is None:
            return None
        if len(exclude_ids) != n:
            raise UserError(f"{len(exclude_ids)} exclude ids for {n} queries")
        known = self.store.rows_of([i for i in dict.fromkeys(exclude_ids) if i is not None])
        return np.array([known.get(i, -1) if i is not None else -1 for i in exclude_ids], np.int64)

    def _engine_search(self, q: np.ndarray, kk: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top ``kk``, re-ranked exactly from the raw vectors when the index has a ``refine`` factor."""
        refine = int(self.info.get("params", {}).get("refine", 0) or 0)
        if params is None:
            with self._gpu_search_lock if self._gpu else nullcontext():
                return refined_search(self._search_index, q, kk, refine, self.metric, self._vec_by_row.take)
        return refined_search(self._index, q, kk, refine, self.metric, self._vec_by_row.take, params)

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
        when fewer match. Rows become hits with array operations (indexing/idmap.py)."""
        q = checked_queries(vectors, k, self.dim)
        flt = SearchFilter.of(filter)
        skip = self._exclude_rows(exclude_ids, len(q))
        extra = 1 if skip is not None else 0
        with self._lock.read():
            if flt is None:
                kk = min(k + extra + len(self._tombstones), max(1, self._index.ntotal))
                scores, found = self._engine_search(q, kk, None)
            else:
                params, matching, _keep = self._selection(flt)
                if not matching:
                    return [[] for _ in range(len(q))]
                scores, found = self._engine_search(q, min(k + extra, matching), params)
            pos = self._map.positions(found)
            valid = pos >= 0
            if skip is not None:
                valid &= found != skip[:, None]
            return make_hits(self._map, to_scores(scores, self.metric), pos, valid, k)

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
            dup = list(self.store.rows_of(ids))
            if dup or len(set(ids)) != len(ids):
                raise DuplicateIdError(f"id {dup[0] if dup else ids[0]!r} already exists")
            metas, _ = self.store.add(ids, labels, cameras, paths, vectors)  # committed: durable from here
            self._apply_add(metas, vectors)

    def remove(self, ids: Sequence[str]) -> None:
        self._check_writable()
        with self._lock.write():
            known = self.store.rows_of(ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise UnknownIdError(f"unknown id {unknown[0]!r}")
            rows = [known[i] for i in ids]
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
        self._map.append(rows, [m.id for m in metas], [m.label for m in metas], [m.camera for m in metas])
        for m, v in zip(metas, vectors, strict=True):
            self._vec_by_row[m.row] = v.copy()

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
        self._map.remove(arr)
        for r in rows:
            self._vec_by_row.pop(r, None)

    def _fresh_index(self, vectors: np.ndarray, rows: np.ndarray) -> Any:
        """A new index of this type holding exactly ``vectors`` (for HNSW, which cannot remove)."""
        index, _, _ = new_index(self.type, self.dim, self.metric, len(rows))
        apply_params(index, self.info.get("params", {}))
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

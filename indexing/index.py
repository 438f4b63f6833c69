"""FAISS indexes of video embeddings, with string ids, metadata, durable adds/removes and atomic snapshots.

An index directory holds ``index.faiss`` (the FAISS index, int64 ids), ``vectors.npy`` + ``rows.npy`` (the raw
embeddings and their int64 ids, for exact evaluation and rebuilds), ``metadata.sqlite`` (id, label, camera,
path, added_at, and the journal of adds/removes — see indexing/store.py) and ``index.json`` (type, metric, dim,
count, the checkpoint's sha256, created, search parameters, and the journal position of the snapshot).

Types: ``flat`` (exact), ``ivf`` (IVF-Flat), ``ivfpq`` (IVF-PQ), ``hnsw``; ``auto`` picks by collection size and a
memory budget and tunes nprobe / efSearch on a held-out sample so that recall@10 against exact search is >= 0.95.
Searches run concurrently; an add or remove takes the write side of a readers-writer lock.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing.embeddings import Embeddings
from indexing.errors import UserError
from indexing.store import MetadataStore, VideoMeta

INDEX_TYPES = ("auto", "flat", "ivf", "ivfpq", "hnsw")
FLAT_MAX = 20_000  # below this, exact search is fast enough
TARGET_RECALL = 0.95
FILES = ("index.faiss", "vectors.npy", "rows.npy", "metadata.sqlite", "index.json")


_GPU_RESOURCES: list[Any] = []


class DuplicateIdError(UserError):
    pass


class UnknownIdError(UserError):
    pass


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


def _faiss():  # noqa: ANN202
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


def choose_type(n: int, dim: int, memory_budget_mb: float = 4096) -> str:
    """flat for small collections; IVF-Flat while the raw vectors fit the budget; IVF-PQ beyond."""
    if n <= FLAT_MAX:
        return "flat"
    if n * dim * 4 <= memory_budget_mb * 2**20:
        return "ivf"
    return "ivfpq"


def _pq_m(dim: int) -> int:
    for m in (dim // 4, dim // 8, dim // 2, 16, 8, 4, 2, 1):
        if m >= 1 and dim % m == 0 and m <= 96:
            return m
    return 1


def _new_index(kind: str, dim: int, metric: str, n: int) -> tuple[Any, dict[str, int]]:
    faiss = _faiss()
    mt = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    if kind == "flat":
        base = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
        return faiss.IndexIDMap2(base), {}
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, 32, mt)
        base.hnsw.efConstruction = 80
        return faiss.IndexIDMap2(base), {"efSearch": 64}
    nlist = int(max(1, min(n // 39, 4 * np.sqrt(max(n, 1)))))
    quantizer = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    # IVF indexes store arbitrary int64 ids natively (and an id map over them would break on remove_ids)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, mt)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, _pq_m(dim), 8, mt)
    return index, {"nlist": nlist, "nprobe": 1}


def _apply_params(index: Any, params: dict[str, int]) -> None:
    faiss = _faiss()
    base = faiss.downcast_index(index.index) if hasattr(index, "index") else faiss.downcast_index(index)
    if "nprobe" in params and hasattr(base, "nprobe"):
        base.nprobe = int(params["nprobe"])
    if "efSearch" in params and hasattr(base, "hnsw"):
        base.hnsw.efSearch = int(params["efSearch"])


def _recall_at_10(index: Any, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, truth.shape[1])
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def _tune(index: Any, kind: str, params: dict[str, int], vectors: np.ndarray, rows: np.ndarray, metric: str,
          seed: int = 0) -> dict[str, int]:
    """Smallest nprobe / efSearch reaching the target recall@10 vs exact search on a sample of the data."""
    if kind == "flat" or len(vectors) < 20:
        return params
    faiss = _faiss()
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(500, len(vectors)), replace=False)]
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]) if metric == "cosine"
                              else faiss.IndexFlatL2(vectors.shape[1]))
    exact.add_with_ids(vectors, rows)
    k = min(10, len(vectors))
    _, truth = exact.search(sample, k)
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


class VideoIndex:
    """A FAISS index with string ids and metadata; use ``build`` or ``load``."""

    def __init__(self, path: Path, index: Any, info: dict[str, Any], store: MetadataStore, metas: list[VideoMeta],
                 vectors: np.ndarray, rows: np.ndarray, gpu: bool) -> None:
        self.path, self._index, self.info, self.store = path, index, info, store
        self._lock = RWLock()
        self._gpu = gpu
        self._by_id: dict[str, VideoMeta] = {m.id: m for m in metas}
        self._by_row: dict[int, VideoMeta] = {m.row: m for m in metas}
        self._vec_by_row: dict[int, np.ndarray] = dict(zip(rows.tolist(), vectors, strict=True))
        self._tombstones: set[int] = set()  # HNSW cannot remove: filtered at search time until the next rebuild
        self._search_index = self._to_gpu(index) if gpu else index

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self._by_id)

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

    # ---- build / load / save ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, emb: Embeddings, out_dir: str | Path, type: str = "auto", metric: str = "cosine",
              gpu: bool | None = None, checkpoint_sha256: str | None = None, memory_budget_mb: float = 4096,
              overwrite: bool = False) -> VideoIndex:
        if type not in INDEX_TYPES:
            raise UserError(f"--type must be one of {', '.join(INDEX_TYPES)}, got {type!r}")
        if metric not in ("cosine", "l2"):
            raise UserError(f"--metric must be cosine or l2, got {metric!r}")
        emb.validate("embeddings")
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise UserError(f"{out}: the folder exists and is not empty (choose another --out or remove it)")
        on_gpu = use_gpu(gpu)
        n, dim = emb.embeddings.shape
        kind = choose_type(n, dim, memory_budget_mb) if type == "auto" else type
        vectors = np.ascontiguousarray(emb.embeddings, dtype=np.float32)
        rows = np.arange(n, dtype=np.int64)
        index, params = _new_index(kind, dim, metric, n)
        if not index.is_trained:
            train_index = cls._to_gpu(index) if on_gpu else index
            sample = vectors[np.random.default_rng(0).choice(n, size=min(n, 256 * params.get("nlist", 1)),
                                                             replace=False)]
            train_index.train(sample)
            index = cls._to_cpu(train_index) if on_gpu else index
        index.add_with_ids(vectors, rows)
        params = _tune(index, kind, params, vectors, rows, metric)
        now = time.time()
        paths = emb.paths if emb.paths is not None else [""] * n
        metas = [VideoMeta(str(i), int(r), str(lab), str(cam), str(p), now)
                 for i, r, lab, cam, p in zip(emb.ids, rows, emb.labels, emb.cameras, paths, strict=True)]
        info = {"type": kind, "metric": metric, "dim": dim, "count": n, "checkpoint_sha256": checkpoint_sha256,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "params": params,
                "snapshot_seq": 0, "format": "vidret-index", "version": 1}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            store = MetadataStore(tmp / "metadata.sqlite", create=True)
            store.insert_initial(metas)
            store.close()
            cls._write_snapshot(tmp, index, vectors, rows, info)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return cls.load(out, gpu=gpu)

    @staticmethod
    def _write_snapshot(folder: Path, index: Any, vectors: np.ndarray, rows: np.ndarray, info: dict) -> None:
        """Each file to a temporary name, then renamed; index.json last: it names the journal position the
        snapshot holds (replaying from an older position is harmless: replay is idempotent)."""
        faiss = _faiss()
        writers = {"vectors.npy": lambda p: np.save(p, vectors), "rows.npy": lambda p: np.save(p, rows),
                   "index.faiss": lambda p: faiss.write_index(index, p),
                   "index.json": lambda p: Path(p).write_text(json.dumps(info, indent=2))}
        for name, write in writers.items():
            tmp = folder / f".{name}.tmp"
            write(str(tmp))
            if name.endswith(".npy") and not tmp.exists():  # np.save appends .npy to names without it
                os.replace(f"{tmp}.npy", tmp)
            os.replace(tmp, folder / name)

    @classmethod
    def load(cls, index_dir: str | Path, gpu: bool | None = None) -> VideoIndex:
        path = Path(index_dir)
        if not path.is_dir():
            raise UserError(f"{path}: index folder not found")
        missing = [f for f in FILES if not (path / f).is_file()]
        if missing:
            raise UserError(f"{path}: not a vidret index (missing {', '.join(missing)})")
        try:
            info = json.loads((path / "index.json").read_text())
            dim = int(info["dim"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path / 'index.json'}: corrupt ({exc})") from None
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as exc:
            raise UserError(f"{path / 'index.faiss'}: corrupt FAISS index ({str(exc).splitlines()[0][:120]})") from None
        try:
            vectors = np.load(path / "vectors.npy", allow_pickle=False)
            rows = np.load(path / "rows.npy", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{path}: corrupt vectors.npy / rows.npy ({exc})") from None
        if index.d != dim or vectors.ndim != 2 or vectors.shape[1] != dim or len(rows) != len(vectors):
            raise UserError(f"{path}: index.faiss, vectors.npy and index.json disagree on the shape")
        _apply_params(index, info.get("params", {}))
        store = MetadataStore(path / "metadata.sqlite")
        obj = cls(path, index, info, store, [], vectors, rows, gpu=False)
        for e in store.journal_since(int(info.get("snapshot_seq", 0)), dim):  # replay (idempotent)
            if e.op == "add":
                if e.meta.row not in obj._vec_by_row:
                    obj._apply_add([e.meta], e.vector[None, :])
            else:
                obj._apply_remove_rows([e.row])
        metas = store.all()
        obj._by_id = {m.id: m for m in metas}
        obj._by_row = {m.row: m for m in metas}
        if set(obj._by_row) != set(obj._vec_by_row):
            raise UserError(f"{path}: metadata and vectors disagree ({len(obj._by_row)} vs {len(obj._vec_by_row)} "
                            f"entries); the index folder was modified outside vidret")
        obj._gpu = use_gpu(gpu)
        obj._search_index = cls._to_gpu(obj._index) if obj._gpu else obj._index
        return obj

    def save(self) -> None:
        """Compact: write a fresh snapshot (atomic file by file, index.json last) and trim the journal."""
        with self._lock.write():
            rows = np.array(sorted(self._vec_by_row), dtype=np.int64)
            vectors = np.stack([self._vec_by_row[r] for r in rows]) if len(rows) else np.zeros((0, self.dim),
                                                                                                np.float32)
            if self._tombstones:
                self._rebuild(vectors, rows)
            seq = self.store.last_seq()
            self.info.update(count=len(rows), snapshot_seq=seq)
            self._write_snapshot(self.path, self._index, vectors, rows, self.info)
            self.store.truncate_journal(seq)

    def close(self) -> None:
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

    def snapshot(self) -> tuple[list[VideoMeta], np.ndarray]:
        """All entries and their vectors, consistently (for exact evaluation)."""
        with self._lock.read():
            metas = sorted(self._by_id.values(), key=lambda m: m.row)
            vecs = np.stack([self._vec_by_row[m.row] for m in metas]) if metas else np.zeros((0, self.dim), np.float32)
        return metas, vecs

    def search(self, vectors: np.ndarray, k: int, exclude_ids: Sequence[str | None] | None = None) -> list[list[Hit]]:
        q = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise UserError(f"query vectors have dimension {q.shape[1]}, the index has {self.dim}")
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        with self._lock.read():
            extra = len(self._tombstones) + (1 if exclude_ids is not None else 0)
            kk = min(k + extra, max(1, self._index.ntotal))
            scores, found = self._search_index.search(q, kk)
            out = []
            for qi in range(len(q)):
                skip = exclude_ids[qi] if exclude_ids is not None else None
                hits = []
                for s, r in zip(scores[qi], found[qi], strict=True):
                    m = self._by_row.get(int(r))
                    if r < 0 or m is None or int(r) in self._tombstones or m.id == skip:
                        continue
                    hits.append(Hit(m.id, float(s) if self.metric == "cosine" else -float(np.sqrt(max(s, 0.0))),
                                    m.label, m.camera))
                    if len(hits) == k:
                        break
                out.append(hits)
        return out

    # ---- writes (durable on return) -----------------------------------------------------------------------------
    def add(self, ids: Sequence[str], vectors: np.ndarray, labels: Sequence[str], cameras: Sequence[str],
            paths: Sequence[str]) -> None:
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise UserError(f"expected {len(ids)} vectors of dimension {self.dim}, got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise UserError("vectors contain NaN or inf")
        with self._lock.write():
            dup = [i for i in ids if i in self._by_id]
            if dup or len(set(ids)) != len(ids):
                raise DuplicateIdError(f"id {dup[0] if dup else ids[0]!r} already exists")
            metas, _ = self.store.add(ids, labels, cameras, paths, vectors)  # committed: durable from here
            self._apply_add(metas, vectors)

    def remove(self, ids: Sequence[str]) -> None:
        with self._lock.write():
            unknown = [i for i in ids if i not in self._by_id]
            if unknown:
                raise UnknownIdError(f"unknown id {unknown[0]!r}")
            rows = [self._by_id[i].row for i in ids]
            self.store.remove(ids, rows)  # committed: durable from here
            self._apply_remove_rows(rows)

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

    def _rebuild(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        index, _ = _new_index(self.type, self.dim, self.metric, len(rows))
        _apply_params(index, self.info.get("params", {}))
        if len(rows):
            index.add_with_ids(vectors, rows)
        self._index = index
        self._search_index = self._to_gpu(index) if self._gpu else index
        self._tombstones.clear()

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
memory budget. IVF and HNSW indexes have nprobe / efSearch tuned on a held-out sample so that recall@10 against
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing.atomic import atomic_write, atomic_write_text, fsync_dir
from indexing.embeddings import Embeddings
from indexing.errors import UserError
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


def _nlist(n: int) -> int:
    return int(max(1, min(n // 39, 4 * np.sqrt(max(n, 1)))))


def _faiss_metric(metric: str) -> int:
    """The one mapping of a metric name to FAISS's: cosine (of L2-normalised vectors) is the inner product."""
    faiss = _faiss()
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def factory_string(kind: str, dim: int, n: int) -> str:
    """The ``faiss.index_factory`` string of a ``kind`` index for ``n`` vectors of dimension ``dim``.

    Flat and HNSW sit in an IDMap2 (int64 ids); IVF indexes store int64 ids natively (and an id map over them would
    break on remove_ids). IVF-PQ's ``np`` turns off polysemous training, which the factory would otherwise turn on
    (IndexIVFPQ's own default is off): it only renumbers the codes, and it makes training many times slower."""
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return f"IDMap2,HNSW{HNSW_M}"
    if kind == "ivf":
        return f"IVF{_nlist(n)},Flat"
    if kind == "ivfpq":
        return f"IVF{_nlist(n)},PQ{_pq_m(dim)}x{PQ_BITS}np"
    raise ValueError(f"unknown index type {kind!r}")


def _new_index(kind: str, dim: int, metric: str, n: int) -> tuple[Any, str, dict[str, int]]:
    """An empty index of ``kind`` (IVF ones untrained), its factory string, and its initial params."""
    faiss = _faiss()
    factory = factory_string(kind, dim, n)
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


def _tune(
    index: Any, kind: str, params: dict[str, int], vectors: np.ndarray, rows: np.ndarray, metric: str, seed: int = 0
) -> dict[str, int]:
    """Smallest nprobe / efSearch reaching the target recall@10 vs exact search on a sample of the data."""
    if kind == "flat" or len(vectors) < 20:
        return params
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(500, len(vectors)), replace=False)]
    exact, _, _ = _new_index("flat", vectors.shape[1], metric, len(vectors))
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


def _write_generation(
    root: Path, gen: int, vectors: np.ndarray, rows: np.ndarray, faiss_data: np.ndarray, info: dict[str, Any]
) -> None:
    """Write gen-<gen>/ (each file fsynced, then the folders) and publish it by replacing index.json: before that
    rename readers see the previous snapshot, after it this one."""
    folder = _gen_dir(root, gen)
    folder.mkdir()  # a new name: a generation is never written over
    atomic_write(folder / "vectors.npy", lambda fh: np.save(fh, vectors, allow_pickle=False))
    atomic_write(folder / "rows.npy", lambda fh: np.save(fh, rows, allow_pickle=False))
    atomic_write(folder / "index.faiss", lambda fh: fh.write(memoryview(faiss_data)))
    fsync_dir(root)  # the folder's own entry, before the pointer that names it
    atomic_write_text(root / POINTER, json.dumps({**info, "generation": gen}, indent=2))


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


class VideoIndex:
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
        self._vec_by_row: dict[int, np.ndarray] = dict(zip(rows.tolist(), vectors, strict=True))
        self._tombstones: set[int] = set()  # HNSW cannot remove: filtered at search time until the next save
        self._search_index = self._to_gpu(index) if gpu else index
        self._save_lock = threading.Lock()  # one snapshot at a time
        self._gpu_search_lock = threading.Lock()  # FAISS GPU indexes are not thread-safe, even for search

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
    def build(
        cls,
        emb: Embeddings,
        out_dir: str | Path,
        type: str = "auto",
        metric: str = "cosine",
        gpu: bool | None = None,
        checkpoint_sha256: str | None = None,
        memory_budget_mb: float = 4096,
        overwrite: bool = False,
    ) -> VideoIndex:
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
        index, factory, params = _new_index(kind, dim, metric, n)
        if not index.is_trained:
            train_index = cls._to_gpu(index) if on_gpu else index
            sample = vectors[
                np.random.default_rng(0).choice(n, size=min(n, 256 * params.get("nlist", 1)), replace=False)
            ]
            train_index.train(sample)
            index = cls._to_cpu(train_index) if on_gpu else index
        index.add_with_ids(vectors, rows)
        params = _tune(index, kind, params, vectors, rows, metric)
        now = time.time()
        paths = emb.paths if emb.paths is not None else [""] * n
        metas = [
            VideoMeta(str(i), int(r), str(lab), str(cam), str(p), now)
            for i, r, lab, cam, p in zip(emb.ids, rows, emb.labels, emb.cameras, paths, strict=True)
        ]
        info = {
            "type": kind,
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
            store = MetadataStore(tmp / STORE, create=True)
            store.insert_initial(metas)
            store.close()
            _write_generation(tmp, 1, vectors, rows, _faiss().serialize_index(index), info)
            _move_into_place(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return cls.load(out, gpu=gpu)

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
    def load(cls, index_dir: str | Path, gpu: bool | None = None) -> VideoIndex:
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
        faiss = _faiss()
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as exc:
            raise UserError(
                f"{folder / 'index.faiss'}: corrupt FAISS index ({str(exc).splitlines()[0][:120]})"
            ) from None
        try:
            vectors = np.load(folder / "vectors.npy", allow_pickle=False)
            rows = np.load(folder / "rows.npy", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{folder}: corrupt vectors.npy / rows.npy ({exc})") from None
        if index.d != dim or vectors.ndim != 2 or vectors.shape[1] != dim or len(rows) != len(vectors):
            raise UserError(f"{folder}: index.faiss, vectors.npy and index.json disagree on the shape")
        _apply_params(index, info.get("params", {}))
        store = MetadataStore(path / STORE)
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
            raise UserError(
                f"{path}: metadata and vectors disagree ({len(obj._by_row)} vs {len(obj._vec_by_row)} "
                f"entries); the index folder was modified outside vidret"
            )
        obj._gpu = use_gpu(gpu)
        obj._search_index = cls._to_gpu(obj._index) if obj._gpu else obj._index
        return obj

    @property
    def dirty(self) -> bool:
        """Whether adds or removes were made since the published snapshot (they are in the journal)."""
        return self.store.last_seq() > int(self.info.get("snapshot_seq", 0))

    def save(self) -> None:
        """Compact: write a snapshot as a new generation, publish it (index.json), then trim the journal and remove
        the previous generation. One save at a time; the index's lock is held (read side) only while its contents
        are copied, so searches and writes go on while the files are written. When a write fails this raises and
        the previous snapshot stays published, with the journal entries after it."""
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
            vectors = (
                np.stack([self._vec_by_row[r] for r in rows.tolist()])
                if len(rows)
                else np.zeros((0, self.dim), np.float32)
            )
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
            with self._gpu_search_lock if self._gpu else nullcontext():
                scores, found = self._search_index.search(q, kk)
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

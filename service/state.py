"""What the app holds at run time: the index, the optional model and its inference batcher, readiness."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import HTTPException

from service.integrity import IdLocks, reconcile
from service.settings import Settings

if TYPE_CHECKING:
    from indexing.backend import IndexBackend

log = logging.getLogger("vidret.service")


class MicroBatcher:
    """Runs ``fn(items) -> results`` in one worker thread; requests that wait while it is busy, or arrive within
    ``window_ms`` of the first, share one call (e.g. one forward pass, one FAISS search). With a window of 0 it
    takes only what is already queued, so an idle service adds no latency.

    An error of ``fn`` goes to the requests of that call and the worker goes on. If the worker itself stops (its
    ``init`` fails, something escapes the loop, or ``close``), the requests waiting for it and every later one
    get a 503 at once instead of waiting forever."""

    def __init__(
        self,
        fn: Callable[[list], list],
        window_ms: float,
        max_batch: int,
        name: str,
        init: Callable[[], None] | None = None,
    ) -> None:
        self.fn, self.window, self.max_batch, self.init, self.name = fn, window_ms / 1000.0, max_batch, init, name
        self._queue: queue.Queue = queue.Queue()
        self._stop_lock = threading.Lock()  # a request is queued before the worker stops, or refused after
        self.stopped: str | None = None  # why the worker no longer takes requests
        self.batches = 0
        self.items = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Any:
        fut: Future = Future()
        with self._stop_lock:
            if self.stopped is not None:
                raise HTTPException(503, self.stopped)
            self._queue.put((item, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        batch: list = []
        try:
            if self.init is not None:
                self.init()
            while True:
                item = self._queue.get()
                if item is None:
                    break
                batch = [item]
                deadline = time.monotonic() + self.window
                while len(batch) < self.max_batch:
                    remaining = deadline - time.monotonic()
                    try:
                        nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)
                        break
                    batch.append(nxt)
                self._call(batch)
                batch = []
        except BaseException as exc:
            log.critical("the %s worker stopped", self.name, exc_info=True)
            self._stop(
                f"the {self.name} worker stopped ({type(exc).__name__}; the server log has the details); "
                f"the service must be restarted",
                batch,
            )
        else:
            self._stop(f"the {self.name} worker has shut down", batch)

    def _call(self, batch: list) -> None:
        try:
            results = self.fn([x for x, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} requests")
        except Exception as exc:  # handed to every request of this call
            for _, fut in batch:
                fut.set_exception(exc)
            return
        self.batches += 1
        self.items += len(batch)
        for (_, fut), r in zip(batch, results, strict=True):
            fut.set_result(r)

    def _stop(self, why: str, in_flight: list) -> None:
        with self._stop_lock:
            self.stopped = why
            waiting = list(in_flight)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    waiting.append(item)
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(HTTPException(503, why))


class Snapshotter:
    """Writes index snapshots in one background thread, one at a time, so no request waits for one: ``request``
    returns at once; requests made while a snapshot is written are served by one more snapshot after it."""

    def __init__(self, index: Any, name: str = "vidret-snapshot") -> None:
        self.index = index
        self._cond = threading.Condition()
        self._pending = False
        self._closing = False
        self.written = 0
        self.error: BaseException | None = None  # of the latest snapshot; None once one succeeds
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def request(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify_all()

    def close(self) -> None:
        """Finish the snapshot being written, then write a last one if the index has unsaved writes; raise if that
        last one failed (the writes stay in the journal and are replayed on the next start)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                pending, self._pending = self._pending, False
            if not pending:  # closing, and nothing more was requested
                self._save(only_if_dirty=True)
                return
            self._save()

    def _save(self, only_if_dirty: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            if only_if_dirty and not self.index.dirty:
                return
            self.index.save()
        except Exception as exc:
            self.error = exc
            log.error("writing an index snapshot failed (the writes stay in the journal)", exc_info=True)
            return
        self.error = None
        self.written += 1
        log.info("index snapshot written in %.2f s", time.perf_counter() - t0)


def embed_batch(loaded: Any) -> Callable[[list], list]:
    def run(clips: list) -> list:
        if getattr(loaded, "runtime", "torch") == "onnx":  # numpy clips, onnxruntime (training/onnx_model.py)
            return list(loaded.embed_clips(clips))
        from training.embed import embed_clips

        return list(embed_clips(loaded, clips))

    return run


def search_batch(index: Any) -> Callable[[list], list]:
    """Concurrent searches as one index call per distinct filter: items are (vectors (n, d), k, exclude ids or
    None, filter dict or None)."""

    def one_call(items: list, flt: dict | None) -> list:
        vecs = np.concatenate([v for v, _, _, _ in items])
        excl = [e for v, _, ex, _ in items for e in (ex if ex is not None else [None] * len(v))]
        kw = {"filter": flt} if flt else {}
        hits = index.search(vecs, max(k for _, k, _, _ in items), exclude_ids=excl if any(excl) else None, **kw)
        out, at = [], 0
        for v, k, _, _ in items:
            out.append([h[:k] for h in hits[at : at + len(v)]])
            at += len(v)
        return out

    def run(items: list) -> list:
        groups: dict[Any, list[int]] = {}
        for i, item in enumerate(items):
            flt = item[3]
            groups.setdefault(tuple(sorted(flt.items())) if flt else None, []).append(i)
        out: list = [None] * len(items)
        for key, members in groups.items():
            for i, r in zip(members, one_call([items[i] for i in members], dict(key) if key else None), strict=True):
                out[i] = r
        return out

    return run


@dataclass
class ServiceState:
    settings: Settings
    index: IndexBackend | None = None
    model: Any = None
    batcher: MicroBatcher | None = None
    searcher: MicroBatcher | None = None
    snapshotter: Snapshotter | None = None
    ready: bool = False
    load_error: str | None = None
    writes_since_snapshot: int = 0
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: Any = None
    id_locks: IdLocks = field(default_factory=IdLocks)  # one write of an id at a time (service/integrity.py)
    folder_lock: Any = None  # the FAISS index folder's lock (indexing/lock.py), held while served
    stale_reviews: set[str] = field(default_factory=set)  # deleted ids whose review removal failed

    def load(self) -> None:
        """Load the index (and model); runs in a background thread so /health answers at once."""
        try:
            self.index = self._open_index()
            self._reconcile()
            if self.settings.checkpoint is not None:
                if Path(self.settings.checkpoint).suffix.lower() == ".onnx":  # vidret export: no torch needed
                    from training.onnx_model import OnnxModel

                    self.model = OnnxModel(self.settings.checkpoint)
                else:
                    from training.embed import load_checkpoint

                    self.model = load_checkpoint(self.settings.checkpoint, self.settings.device)
                if self.model.embedding_dim != self.index.dim:
                    raise ValueError(
                        f"the checkpoint embeds to {self.model.embedding_dim} dimensions, the index "
                        f"holds {self.index.dim}"
                    )
                self.batcher = MicroBatcher(
                    embed_batch(self.model), self.settings.batch_window_ms, max_batch=16, name="vidret-embed"
                )
            if self.settings.search_coalesce > 1:  # FAISS's OpenMP team is set up for the FAISS backend only
                faiss_init = self._search_thread_init if self.settings.backend == "faiss" else None
                self.searcher = MicroBatcher(
                    search_batch(self.index), 0.0, self.settings.search_coalesce, name="vidret-search", init=faiss_init
                )
            self.snapshotter = Snapshotter(self.index)
            self.ready = True
            log.info("ready: %d videos, model %s", self.index.count, self.settings.checkpoint)
        except Exception as exc:  # reported by /ready; the process stays up for inspection
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("failed to load: %s", self.load_error)

    def _reconcile(self) -> None:
        """Sweep what no entry names (service/integrity.py); a failure is logged and serving goes on."""
        from service.review import ReviewStore

        try:
            reconcile(self.index, Path(self.settings.index), ReviewStore(self.settings.index))
        except Exception:
            log.error("start: checking the stored files and reviews against the index failed", exc_info=True)

    def _open_index(self) -> IndexBackend:
        """The index of ``settings.backend``: the FAISS index folder, or a Milvus collection (then the index folder
        holds only the uploaded videos and the review store, and is created if missing)."""
        from indexing.backend import open_index

        s = self.settings
        if s.backend != "milvus":
            from indexing.lock import lock_folder

            self.folder_lock = lock_folder(s.index)  # one server per folder: raises naming the holder
        index = open_index(
            s.backend,
            s.index,
            mmap=s.mmap,
            milvus_uri=s.milvus_uri,
            milvus_collection=s.milvus_collection,
            milvus_token=s.milvus_token,
        )
        if s.backend == "milvus":
            s.index.mkdir(parents=True, exist_ok=True)
        return index

    def note_write(self) -> None:
        """Count a write; every ``snapshot_every`` writes the snapshot thread compacts the journal into a snapshot
        (replay on start stays short). Never waits for the snapshot."""
        with self.write_lock:
            self.writes_since_snapshot += 1
            if self.writes_since_snapshot < self.settings.snapshot_every:
                return
            self.writes_since_snapshot = 0
        self.snapshotter.request()

    def _search_thread_init(self) -> None:
        """FAISS's OpenMP team size for the coalescing thread only (OpenMP keeps it per calling thread); leaving
        cores to the event loop matters: an OpenMP team on busy cores spins at its barriers."""
        import faiss

        faiss.omp_set_num_threads(self.settings.search_threads or max(1, (os.cpu_count() or 2) // 2))

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude_ids: list[str | None] | None = None,
        filter: dict[str, str | None] | None = None,
    ) -> list:
        """Index search; concurrent requests are coalesced into one index call (per distinct ``filter``: label,
        camera, exclude_camera) when the searcher runs."""
        flt = {k_: v for k_, v in (filter or {}).items() if v is not None} or None
        if self.searcher is None:
            kw = {"filter": flt} if flt else {}
            return self.index.search(vectors, k, exclude_ids=exclude_ids, **kw)
        return self.searcher.submit((np.atleast_2d(vectors), k, exclude_ids, flt))

    def close(self) -> None:
        """Stop a running audit job and the workers; finish the snapshot being written and write a last one if writes
        came after it. The index closes last: a job thread that still read it would crash the process (SQLite)."""
        jobs = getattr(self, "audit_jobs", None)
        if jobs is not None:
            jobs.shutdown()
        for b in (self.batcher, self.searcher):
            if b is not None:
                b.close()
        if self.index is not None and self.ready:
            try:
                if self.snapshotter is not None:
                    self.snapshotter.close()
            finally:
                self.index.close()
        if self.folder_lock is not None:
            self.folder_lock.release()

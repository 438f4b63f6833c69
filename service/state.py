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
from typing import Any

import numpy as np

from service.settings import Settings

log = logging.getLogger("vidret.service")


class MicroBatcher:
    """Runs ``fn(items) -> results`` in one worker thread; requests that wait while it is busy, or arrive within
    ``window_ms`` of the first, share one call (e.g. one forward pass, one FAISS search). With a window of 0 it
    takes only what is already queued, so an idle service adds no latency."""

    def __init__(self, fn: Callable[[list], list], window_ms: float, max_batch: int, name: str,
                 init: Callable[[], None] | None = None) -> None:
        self.fn, self.window, self.max_batch, self.init = fn, window_ms / 1000.0, max_batch, init
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.batches = 0
        self.items = 0

    def submit(self, item: Any) -> Any:
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        if self.init is not None:
            self.init()
        while True:
            item = self._queue.get()
            if item is None:
                return
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
            try:
                results = self.fn([x for x, _ in batch])
                self.batches += 1
                self.items += len(batch)
                for (_, fut), r in zip(batch, results, strict=True):
                    fut.set_result(r)
            except Exception as exc:  # handed to every waiting request
                for _, fut in batch:
                    fut.set_exception(exc)


def embed_batch(loaded: Any) -> Callable[[list], list]:
    def run(clips: list) -> list:
        from training.embed import embed_clips

        return list(embed_clips(loaded, clips))

    return run


def search_batch(index: Any) -> Callable[[list], list]:
    """Concurrent searches as one index call: items are (vectors (n, d), k, exclude ids or None)."""

    def run(items: list) -> list:
        vecs = np.concatenate([v for v, _, _ in items])
        excl = [e for v, _, ex in items for e in (ex if ex is not None else [None] * len(v))]
        hits = index.search(vecs, max(k for _, k, _ in items), exclude_ids=excl if any(excl) else None)
        out, at = [], 0
        for v, k, _ in items:
            out.append([h[:k] for h in hits[at:at + len(v)]])
            at += len(v)
        return out

    return run


@dataclass
class ServiceState:
    settings: Settings
    index: Any = None
    model: Any = None
    batcher: MicroBatcher | None = None
    searcher: MicroBatcher | None = None
    ready: bool = False
    load_error: str | None = None
    writes_since_snapshot: int = 0
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    metrics: Any = None

    def load(self) -> None:
        """Load the index (and model); runs in a background thread so /health answers at once."""
        try:
            from indexing.index import VideoIndex

            self.index = VideoIndex.load(self.settings.index)
            if self.settings.checkpoint is not None:
                from training.embed import load_checkpoint

                self.model = load_checkpoint(self.settings.checkpoint, self.settings.device)
                if self.model.embedding_dim != self.index.dim:
                    raise ValueError(f"the checkpoint embeds to {self.model.embedding_dim} dimensions, the index "
                                     f"holds {self.index.dim}")
                self.batcher = MicroBatcher(embed_batch(self.model), self.settings.batch_window_ms, max_batch=16,
                                            name="vidret-embed")
            if self.settings.search_coalesce > 1:
                self.searcher = MicroBatcher(search_batch(self.index), 0.0, self.settings.search_coalesce,
                                             name="vidret-search", init=self._search_thread_init)
            self.ready = True
            log.info("ready: %d videos, model %s", self.index.count, self.settings.checkpoint)
        except Exception as exc:  # reported by /ready; the process stays up for inspection
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("failed to load: %s", self.load_error)

    def note_write(self) -> None:
        """Compact the journal into a snapshot now and then (replay on start stays short)."""
        with self.write_lock:
            self.writes_since_snapshot += 1
            if self.writes_since_snapshot >= self.settings.snapshot_every:
                self.index.save()
                self.writes_since_snapshot = 0

    def _search_thread_init(self) -> None:
        """FAISS's OpenMP team size for the coalescing thread only (OpenMP keeps it per calling thread); leaving
        cores to the event loop matters: an OpenMP team on busy cores spins at its barriers."""
        import faiss

        faiss.omp_set_num_threads(self.settings.search_threads or max(1, (os.cpu_count() or 2) // 2))

    def search(self, vectors: np.ndarray, k: int, exclude_ids: list[str | None] | None = None) -> list:
        """Index search; concurrent requests are coalesced into one index call when the searcher runs."""
        if self.searcher is None:
            return self.index.search(vectors, k, exclude_ids=exclude_ids)
        return self.searcher.submit((np.atleast_2d(vectors), k, exclude_ids))

    def close(self) -> None:
        for b in (self.batcher, self.searcher):
            if b is not None:
                b.close()
        if self.index is not None and self.ready:
            try:
                if self.writes_since_snapshot:
                    self.index.save()
            finally:
                self.index.close()

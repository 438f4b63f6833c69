"""What the app holds at run time: the index, the optional model and its inference batcher, readiness."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.settings import Settings

log = logging.getLogger("vidret.service")


class EmbedBatcher:
    """Runs the model in one thread; requests arriving within ``window_ms`` of each other share a forward pass."""

    def __init__(self, loaded: Any, window_ms: float, max_batch: int = 16) -> None:
        self.loaded, self.window, self.max_batch = loaded, window_ms / 1000.0, max_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vidret-embed", daemon=True)
        self._thread.start()
        self.batches = 0

    def embed(self, clip: Any) -> np.ndarray:
        fut: Future = Future()
        self._queue.put((clip, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        from training.embed import embed_clips

        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            deadline = time.monotonic() + self.window
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                vectors = embed_clips(self.loaded, [c for c, _ in batch])
                self.batches += 1
                for (_, fut), v in zip(batch, vectors, strict=True):
                    fut.set_result(v)
            except Exception as exc:  # handed to every waiting request
                for _, fut in batch:
                    fut.set_exception(exc)


@dataclass
class ServiceState:
    settings: Settings
    index: Any = None
    model: Any = None
    batcher: EmbedBatcher | None = None
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
                self.batcher = EmbedBatcher(self.model, self.settings.batch_window_ms)
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

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.index is not None and self.ready:
            try:
                if self.writes_since_snapshot:
                    self.index.save()
            finally:
                self.index.close()

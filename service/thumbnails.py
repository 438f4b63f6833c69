"""A bounded cache of thumbnails (JPEG bytes), so that views of a video, anonymous ones included, decode it once.

Entries are keyed by the video id and its file's identity (path, size, modification time, inode): a file replaced
under the same id is decoded afresh. ``forget`` drops a deleted video's entries. The cache holds at most
``VIDRET_THUMBNAIL_CACHE_MB`` of JPEG bytes and drops the least recently used first; concurrent first views of one
video wait for a single decode instead of each decoding it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

Key = tuple[str, str, int, int, int]


class ThumbnailCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Key, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._making: dict[Key, threading.Lock] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(video_id: str, path: str) -> Key:
        st = os.stat(path)
        return (video_id, path, st.st_size, st.st_mtime_ns, st.st_ino)

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._items)

    def _get(self, key: Key) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return data

    def _put(self, key: Key, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def get_or_make(self, key: Key, make: Callable[[], bytes]) -> bytes:
        """The cached thumbnail of ``key``, or ``make()``'s (cached); one ``make`` at a time per key."""
        data = self._get(key)
        if data is not None:
            return data
        with self._lock:
            gate = self._making.setdefault(key, threading.Lock())
        with gate:
            data = self._get(key)  # made while this call waited
            if data is not None:
                return data
            with self._lock:
                self.misses += 1
            try:
                data = make()
                self._put(key, data)
            finally:
                with self._lock:
                    self._making.pop(key, None)
        return data

    def forget(self, video_id: str) -> None:
        """Drop every entry of ``video_id`` (its video was deleted)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == video_id]:
                self._size -= len(self._items.pop(key))


_attach = threading.Lock()


def thumbnail_cache(state: Any) -> ThumbnailCache:
    """The server's cache (created on first use, sized by its settings)."""
    cache = getattr(state, "thumbnails", None)
    if cache is None:
        with _attach:
            cache = getattr(state, "thumbnails", None)
            if cache is None:
                cache = ThumbnailCache(int(state.settings.thumbnail_cache_mb * 2**20))
                state.thumbnails = cache
    return cache

"""The FAISS backend's map of its entries, in arrays: no Python object per video.

FAISS returns int64 rows; ``IdMap`` turns them into ids, labels and cameras with array operations. It holds the rows
(sorted), the ids as one UTF-8 buffer with offsets, the labels and cameras as int32 codes into tables of their
distinct values, and whether each entry is still present. At 10 million entries of 10-character ids that is
about 300 MB. The rest of an entry's metadata (path, added_at) stays in SQLite (indexing/store.py), which also maps
an id to its row. Filters (indexing/filters.py) are comparisons of the code arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from indexing.filters import SearchFilter
    from indexing.store import MetadataStore


class _Codes:
    """Distinct strings and their int32 codes."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._code: dict[str, int] = {}

    def encode(self, values: Sequence[str]) -> np.ndarray:
        code, table = self._code, self.values
        out = np.empty(len(values), np.int32)
        for i, v in enumerate(values):
            c = code.get(v)
            if c is None:
                c = code[v] = len(table)
                table.append(v)
            out[i] = c
        return out

    def lookup(self, value: str) -> int:
        """The code of ``value``; -1 (matching no entry) when no entry has it."""
        return self._code.get(value, -1)


class IdMap:
    """Rows -> ids, labels and cameras, with removals; rows are appended in increasing order."""

    def __init__(self) -> None:
        self.rows = np.zeros(0, np.int64)
        self.alive = np.zeros(0, bool)
        self.label_codes = np.zeros(0, np.int32)
        self.camera_codes = np.zeros(0, np.int32)
        self.labels, self.cameras = _Codes(), _Codes()
        self._ids = b""
        self._offsets = np.zeros(1, np.int64)
        self.count = 0
        self._dense = True  # rows == arange(len(rows)): a row is its own position

    @classmethod
    def from_store(cls, store: MetadataStore, chunk: int = 20_000) -> IdMap:
        """The entries of a metadata store, read ``chunk`` at a time (the parts are joined once at the end)."""
        m = cls()
        rows, alive, labels, cameras, ids, offsets = [], [], [], [], [], []
        end = 0
        for r, i, lab, cam in store.columns(chunk):
            enc = [s.encode() for s in i]
            lengths = np.fromiter(map(len, enc), np.int64, len(enc))
            offsets.append(end + np.cumsum(lengths))
            end += int(lengths.sum())
            ids.append(b"".join(enc))
            rows.append(np.asarray(r, np.int64))
            labels.append(m.labels.encode(lab))
            cameras.append(m.cameras.encode(cam))
            alive.append(np.ones(len(r), bool))
        if rows:
            m.rows, m.alive = np.concatenate(rows), np.concatenate(alive)
            m.label_codes, m.camera_codes = np.concatenate(labels), np.concatenate(cameras)
            m._ids, m._offsets = b"".join(ids), np.concatenate([np.zeros(1, np.int64), *offsets])
        m.count = len(m.rows)
        m._dense = bool(len(m.rows) == 0 or (m.rows[0] == 0 and m.rows[-1] == len(m.rows) - 1))
        return m

    def append(self, rows: Sequence[int], ids: Sequence[str], labels: Sequence[str], cameras: Sequence[str]) -> None:
        rows = np.asarray(rows, np.int64)
        if len(self.rows) and len(rows) and rows.min() <= self.rows[-1]:
            raise ValueError("rows must be appended in increasing order")
        enc = [s.encode() for s in ids]
        ends = int(self._offsets[-1]) + np.cumsum([len(e) for e in enc], dtype=np.int64)
        self._ids += b"".join(enc)
        self._offsets = np.concatenate([self._offsets, ends])
        self.rows = np.concatenate([self.rows, rows])
        self.alive = np.concatenate([self.alive, np.ones(len(rows), bool)])
        self.label_codes = np.concatenate([self.label_codes, self.labels.encode(labels)])
        self.camera_codes = np.concatenate([self.camera_codes, self.cameras.encode(cameras)])
        self.count += len(rows)
        self._dense = bool(self._dense and self.rows[-1] == len(self.rows) - 1) if len(self.rows) else True

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """The position of each of ``rows`` (any shape), or -1 where the row is absent or removed."""
        rows = np.asarray(rows, np.int64)
        n = len(self.rows)
        if self._dense:
            pos = np.where((rows >= 0) & (rows < n), rows, -1)
        else:
            pos = np.searchsorted(self.rows, rows)
            hit = (pos < n) & (self.rows[np.minimum(pos, n - 1)] == rows) if n else np.zeros(rows.shape, bool)
            pos = np.where(hit, pos, -1)
        ok = pos >= 0
        ok[ok] = self.alive[pos[ok]]
        return np.where(ok, pos, -1)

    def remove(self, rows: Sequence[int]) -> None:
        pos = self.positions(np.asarray(rows, np.int64))
        pos = np.unique(pos[pos >= 0])
        self.alive[pos] = False
        self.count -= len(pos)

    def ids_at(self, pos: np.ndarray) -> list[str]:
        buf, lo, hi = self._ids, self._offsets[pos].tolist(), self._offsets[np.asarray(pos) + 1].tolist()
        return [buf[a:b].decode() for a, b in zip(lo, hi, strict=True)]

    def labels_at(self, pos: np.ndarray) -> list[str]:
        table = self.labels.values
        return [table[c] for c in self.label_codes[pos].tolist()]

    def cameras_at(self, pos: np.ndarray) -> list[str]:
        table = self.cameras.values
        return [table[c] for c in self.camera_codes[pos].tolist()]

    def alive_rows(self) -> np.ndarray:
        return self.rows[self.alive]

    def matching_rows(self, flt: SearchFilter) -> np.ndarray:
        """The rows (present) whose label and camera match ``flt``."""
        mask = self.alive.copy()
        if flt.label is not None:
            mask &= self.label_codes == self.labels.lookup(flt.label)
        if flt.camera is not None:
            mask &= self.camera_codes == self.cameras.lookup(flt.camera)
        if flt.exclude_camera is not None:
            mask &= self.camera_codes != self.cameras.lookup(flt.exclude_camera)
        return self.rows[mask]

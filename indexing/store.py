"""SQLite metadata store of an index: one row per video (id, label, camera, path, added_at) and a journal.

The journal makes adds and removes durable: each one is committed (WAL, synchronous=FULL) in a single
transaction together with the metadata change and, for adds, the vector itself, before the in-memory FAISS index
changes. Loading an index replays the journal entries newer than its last snapshot, so a kill -9 at any moment
leaves index and metadata in agreement.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing.errors import UserError
from indexing.ids import check_entries

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class VideoMeta:
    id: str
    row: int  # the int64 id inside FAISS
    label: str
    camera: str
    path: str
    added_at: float

    def to_json(self) -> dict:
        return {"id": self.id, "label": self.label, "camera": self.camera, "path": self.path, "added_at": self.added_at}


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    op: str  # "add" | "remove"
    id: str
    row: int
    meta: VideoMeta | None
    vector: np.ndarray | None


class MetadataStore:
    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise UserError(f"{self.path}: metadata store not found")
        self._lock = threading.Lock()
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if create:
                self._create()
            version = self.conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a readable metadata store ({exc})") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise UserError(f"{self.path}: metadata schema version {version and version[0]} is not {SCHEMA_VERSION}")

    def _create(self) -> None:
        self.conn.executescript("""
            CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS videos (id TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE, label TEXT NOT NULL,
                camera TEXT NOT NULL, path TEXT NOT NULL, added_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL,
                id TEXT NOT NULL, row INTEGER, label TEXT, camera TEXT, path TEXT, added_at REAL, vector BLOB);
        """)
        self.conn.execute("INSERT OR IGNORE INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.conn.execute("INSERT OR IGNORE INTO info VALUES ('next_row', '0')")

    def close(self) -> None:
        self.conn.close()

    def next_row(self) -> int:
        return int(self.conn.execute("SELECT value FROM info WHERE key='next_row'").fetchone()[0])

    def insert_initial(self, metas: Sequence[VideoMeta]) -> None:
        check_entries([m.id for m in metas], [m.label for m in metas], [m.camera for m in metas])
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO videos VALUES (?, ?, ?, ?, ?, ?)",
                [(m.id, m.row, m.label, m.camera, m.path, m.added_at) for m in metas],
            )
            self.conn.execute(
                "UPDATE info SET value=? WHERE key='next_row'", (str(max((m.row for m in metas), default=-1) + 1),)
            )
            self.conn.execute("COMMIT")

    def all(self) -> list[VideoMeta]:
        cur = self.conn.execute("SELECT id, row, label, camera, path, added_at FROM videos ORDER BY row")
        return [VideoMeta(*r) for r in cur]

    def add(
        self,
        ids: Sequence[str],
        labels: Sequence[str],
        cameras: Sequence[str],
        paths: Sequence[str],
        vectors: np.ndarray,
    ) -> tuple[list[VideoMeta], int]:
        """Commit metadata + journal (with the vectors) in one transaction; returns the new rows and last seq."""
        check_entries(ids, labels, cameras)  # indexing/ids.py: the same rule as the Milvus backend
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                start = self.next_row()
                now = time.time()
                metas = [
                    VideoMeta(i, start + k, lab, cam, p, now)
                    for k, (i, lab, cam, p) in enumerate(zip(ids, labels, cameras, paths, strict=True))
                ]
                self.conn.executemany(
                    "INSERT INTO videos VALUES (?, ?, ?, ?, ?, ?)",
                    [(m.id, m.row, m.label, m.camera, m.path, m.added_at) for m in metas],
                )
                self.conn.executemany(
                    "INSERT INTO journal (op, id, row, label, camera, path, added_at, vector) "
                    "VALUES ('add', ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            m.id,
                            m.row,
                            m.label,
                            m.camera,
                            m.path,
                            m.added_at,
                            np.ascontiguousarray(v, dtype=np.float32).tobytes(),
                        )
                        for m, v in zip(metas, vectors, strict=True)
                    ],
                )
                self.conn.execute("UPDATE info SET value=? WHERE key='next_row'", (str(start + len(metas)),))
                seq = self.conn.execute("SELECT max(seq) FROM journal").fetchone()[0]
                self.conn.execute("COMMIT")
            except BaseException:  # a duplicate, a full disk: nothing of it stays, and the next write can begin
                self._rollback()
                raise
        return metas, int(seq)

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already (it does itself on some errors, such as a full
        disk)."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def remove(self, ids: Sequence[str], rows: Sequence[int]) -> int:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for i, r in zip(ids, rows, strict=True):
                    self.conn.execute("DELETE FROM videos WHERE id=?", (i,))
                    self.conn.execute("INSERT INTO journal (op, id, row) VALUES ('remove', ?, ?)", (i, int(r)))
                seq = self.conn.execute("SELECT max(seq) FROM journal").fetchone()[0]
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return int(seq)

    def journal_since(self, seq: int, dim: int) -> list[JournalEntry]:
        cur = self.conn.execute(
            "SELECT seq, op, id, row, label, camera, path, added_at, vector FROM journal WHERE seq > ? ORDER BY seq",
            (seq,),
        )
        out = []
        for s, op, i, row, lab, cam, p, at, vec in cur:
            if op == "add":
                v = np.frombuffer(vec, dtype=np.float32)
                if v.shape[0] != dim:
                    raise UserError(f"{self.path}: journal entry {s} has a vector of dimension {v.shape[0]}, not {dim}")
                out.append(JournalEntry(s, op, i, row, VideoMeta(i, row, lab, cam, p, at), v))
            else:
                out.append(JournalEntry(s, op, i, row, None, None))
        return out

    def last_seq(self) -> int:
        """The newest journal position ever used (it survives the journal's truncation). Taken under the store's
        lock: the connection is shared with the snapshot thread, and a read on it inside another thread's open
        transaction would see that transaction's uncommitted rows."""
        with self._lock:
            row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='journal'").fetchone()
        return int(row[0]) if row else 0

    def truncate_journal(self, upto: int) -> None:
        """Drop the journal entries up to ``upto``: call it only once a durable snapshot holds them."""
        with self._lock:
            self.conn.execute("DELETE FROM journal WHERE seq <= ?", (upto,))

    # ---- reads for the FAISS backend, which holds no Python object per video (indexing/idmap.py) -----------------
    # Each takes the store's lock: the connection is shared with writers, and a read inside another thread's open
    # transaction would see its uncommitted rows.
    _COLUMNS = "id, row, label, camera, path, added_at"

    def get(self, vid: str) -> VideoMeta | None:
        with self._lock:
            r = self.conn.execute(f"SELECT {self._COLUMNS} FROM videos WHERE id=?", (vid,)).fetchone()
        return None if r is None else VideoMeta(*r)

    def rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The rows of those of ``ids`` that are present, in one query."""
        if not len(ids):
            return {}
        with self._lock:
            cur = self.conn.execute(
                "SELECT id, row FROM videos WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),)
            )
            return dict(cur.fetchall())

    def page(self, offset: int, limit: int | None) -> list[VideoMeta]:
        """Entries in row order from ``offset`` on, at most ``limit`` (None: all)."""
        with self._lock:
            cur = self.conn.execute(
                f"SELECT {self._COLUMNS} FROM videos ORDER BY row LIMIT ? OFFSET ?",
                (-1 if limit is None else int(limit), int(offset)),
            )
            return [VideoMeta(*r) for r in cur.fetchall()]

    def columns(self, chunk: int = 100_000) -> Iterator[tuple[list[int], list[str], list[str], list[str]]]:
        """(rows, ids, labels, cameras) of every entry in row order, ``chunk`` entries at a time."""
        cur = self.conn.cursor()
        with self._lock:
            cur.execute("SELECT row, id, label, camera FROM videos ORDER BY row")
        while True:
            with self._lock:
                part = cur.fetchmany(chunk)
            if not part:
                return
            rows, ids, labels, cameras = zip(*part, strict=True)
            yield list(rows), list(ids), list(labels), list(cameras)

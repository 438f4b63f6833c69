"""The label review: an audit (which labels look wrong), the reviewers' decisions, and the cleaned manifest.

Everything lives in ``INDEX_DIR/review.sqlite``, next to the index's own metadata store and under the same rules
(indexing/store.py): WAL, ``synchronous=FULL``, and every change committed in one transaction before the call
returns, so a decision that was answered 2xx survives a ``kill -9`` of the server the moment after. Each call opens
its own connection: the store is shared by the server's worker threads and by ``vidret review export``, and holds
nothing in memory.

Tables:

    info       schema_version; the current audit's source ("import" or "computed"), its time and row count
    audit      one row per audited video: id, label, p_label, predicted, p_predicted, suspicion, and its position in
               the audit (ties of suspicion keep the audit's order)
    decisions  the latest decision per video: id, action (keep | relabel | drop), label (for relabel), decided_at

A new audit replaces the previous one; decisions are about videos, not about an audit, so they are kept.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexing.atomic import atomic_write_text, fsync_dir
from indexing.errors import UserError
from indexing.ids import check_text
from training.audit import AUDIT_COLUMNS, AuditRow
from training.data.manifest import escape_cell

REVIEW_FILE = "review.sqlite"
SCHEMA_VERSION = 1
ACTIONS = ("keep", "relabel", "drop")
EXPORT_COLUMNS = ("path", "label", "id", "camera")
SCHEMA = """
    CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, position INTEGER NOT NULL, label TEXT NOT NULL,
        p_label REAL NOT NULL, predicted TEXT NOT NULL, p_predicted REAL NOT NULL, suspicion REAL NOT NULL);
    CREATE TABLE IF NOT EXISTS decisions (id TEXT PRIMARY KEY, action TEXT NOT NULL, label TEXT,
        decided_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class Decision:
    id: str
    action: str
    label: str | None
    decided_at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "label": self.label, "decided_at": self.decided_at}


class AuditFormatError(ValueError):
    """An audit CSV that cannot be imported; the message names the column or the row."""


def _number(value: str, column: str, row: int) -> float:
    try:
        x = float(value)
    except ValueError:
        raise AuditFormatError(f"row {row}: {column} {value[:40]!r} is not a number") from None
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise AuditFormatError(f"row {row}: {column} {value[:40]!r} is not a probability in [0, 1]")
    return x


def parse_audit_csv(data: bytes) -> list[AuditRow]:
    """The rows of an audit CSV (``vidret audit`` output: a header row with at least the columns ``AUDIT_COLUMNS``,
    in any order), in file order. Raises ``AuditFormatError`` naming the missing column or the bad row (rows are
    numbered from 1, the first after the header)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AuditFormatError(f"the audit is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise AuditFormatError(
                "the audit is empty: expected a header row with the columns " + ",".join(AUDIT_COLUMNS)
            )
        header = [h.strip() for h in header]
        for col in AUDIT_COLUMNS:
            if col not in header:
                raise AuditFormatError(
                    f"the audit has no column {col!r} (row 0, the header: "
                    f"{','.join(header)[:120]}; expected {','.join(AUDIT_COLUMNS)})"
                )
        at = {col: header.index(col) for col in AUDIT_COLUMNS}
        rows: list[AuditRow] = []
        seen: dict[str, int] = {}
        for n, rec in enumerate(reader, start=1):
            if not rec or not any(v.strip() for v in rec):
                continue  # a blank line
            if len(rec) != len(header):
                raise AuditFormatError(f"row {n}: {len(rec)} fields, the header has {len(header)} columns")
            vals = {col: rec[i].strip() for col, i in at.items()}
            for col in ("id", "label", "predicted"):
                if not vals[col]:
                    raise AuditFormatError(f"row {n}: missing value in column {col!r}")
            if vals["id"] in seen:
                raise AuditFormatError(f"row {n}: duplicate id {vals['id']!r} (first at row {seen[vals['id']]})")
            seen[vals["id"]] = n
            rows.append(
                AuditRow(
                    vals["id"],
                    vals["label"],
                    _number(vals["p_label"], "p_label", n),
                    vals["predicted"],
                    _number(vals["p_predicted"], "p_predicted", n),
                    _number(vals["suspicion"], "suspicion", n),
                )
            )
    except csv.Error as exc:
        raise AuditFormatError(f"row {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise AuditFormatError("the audit has a header but no rows")
    return rows


def check_decision(action: str, label: str | None) -> str | None:
    """The label a decision stores (None unless relabelling); ValueError when action and label do not fit."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if action != "relabel":
        if label not in (None, ""):
            raise ValueError(f"label is only given with action 'relabel', not {action!r}")
        return None
    label = (label or "").strip()
    if not label:
        raise ValueError("action 'relabel' needs a non-empty label")
    return check_text(label, "label")  # indexing/ids.py: the bounds of every stored label (InvalidIdError)


class ReviewStore:
    """``INDEX_DIR/review.sqlite``; created on the first write, read as empty until then."""

    def __init__(self, index_dir: str | Path) -> None:
        self.folder = Path(index_dir)
        self.path = self.folder / REVIEW_FILE

    @contextmanager
    def _connect(self, write: bool) -> Iterable[sqlite3.Connection]:
        new = not self.path.exists()
        if new and not write:
            yield None  # nothing reviewed yet: read as empty, create nothing
            return
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise UserError(f"{self.path}: cannot open the review store ({exc})") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if write:  # (again) every time: a first write killed half-way left a file without tables
                conn.executescript(SCHEMA)
                conn.execute("INSERT OR IGNORE INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                if new:
                    fsync_dir(self.folder)  # the new file's (and its WAL's) folder entries, before the first answer
            elif conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='info'").fetchone() is None:
                yield None  # created, but nothing was ever stored
                return
            version = conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
            if version is None or int(version[0]) != SCHEMA_VERSION:
                raise UserError(f"{self.path}: review schema version {version and version[0]} is not {SCHEMA_VERSION}")
            yield conn
        except sqlite3.DatabaseError as exc:
            if (
                getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            ):  # a full disk, not a broken store: answered 507
                raise
            raise UserError(f"{self.path}: not a readable review store ({exc})") from None
        finally:
            conn.close()

    # ---- the audit ----------------------------------------------------------------------------------------------
    def replace_audit(self, rows: Sequence[AuditRow], source: str) -> dict[str, Any]:
        """Make ``rows`` (most suspect first or in any order) the current audit, in one committed transaction."""
        now = time.time()
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM audit")
                conn.executemany(
                    "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (r.id, i, r.label, r.p_label, r.predicted, r.p_predicted, r.suspicion)
                        for i, r in enumerate(rows)
                    ],
                )
                for key, value in (("audit_source", source), ("audit_at", repr(now)), ("audit_rows", str(len(rows)))):
                    conn.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (key, value))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    conn.execute("ROLLBACK")
                raise
        return {"source": source, "created_at": now, "rows": len(rows)}

    def audit_info(self) -> dict[str, Any] | None:
        with self._connect(write=False) as conn:
            if conn is None:
                return None
            info = dict(conn.execute("SELECT key, value FROM info WHERE key LIKE 'audit_%'").fetchall())
        if "audit_source" not in info:
            return None
        return {"source": info["audit_source"], "created_at": float(info["audit_at"]), "rows": int(info["audit_rows"])}

    def audit_rows(self) -> list[AuditRow]:
        """The current audit, most suspect first (ties: the audit's own order)."""
        with self._connect(write=False) as conn:
            if conn is None:
                return []
            cur = conn.execute(
                "SELECT id, label, p_label, predicted, p_predicted, suspicion FROM audit "
                "ORDER BY suspicion DESC, position ASC"
            )
            return [AuditRow(*r) for r in cur]

    # ---- decisions ------------------------------------------------------------------------------------------
    def decide(self, vid: str, action: str, label: str | None) -> Decision:
        """Store a decision (replacing the video's previous one); committed when this returns."""
        label = check_decision(action, label)
        d = Decision(vid, action, label, time.time())
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?)", (d.id, d.action, d.label, d.decided_at)
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    conn.execute("ROLLBACK")
                raise
        return d

    def forget(self, vid: str) -> None:
        """Remove a deleted video's audit row and decision (a video added later under its id starts afresh)."""
        if not self.path.exists():
            return
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM decisions WHERE id=?", (vid,))
                conn.execute("DELETE FROM audit WHERE id=?", (vid,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                    conn.execute("ROLLBACK")
                raise

    def decisions(self) -> dict[str, Decision]:
        with self._connect(write=False) as conn:
            if conn is None:
                return {}
            return {r[0]: Decision(*r) for r in conn.execute("SELECT id, action, label, decided_at FROM decisions")}


# ---- the cleaned manifest -----------------------------------------------------------------------------------------
def export_path(path: str, index_dir: Path, relative_to: Path | None) -> str:
    """A manifest path: files under the index folder relative to ``relative_to`` (the folder the manifest is read
    from; by default the index folder itself), any other path as stored."""
    if not path:
        return ""
    p = Path(path)
    root = index_dir.resolve()
    try:
        resolved = p.resolve()
        resolved.relative_to(root)
    except (ValueError, OSError):
        return path
    base = (relative_to or root).resolve()
    return Path(os.path.relpath(resolved, base)).as_posix()


@dataclass
class Export:
    text: str
    rows: int
    dropped: int
    relabelled: int
    without_path: int


def cleaned_manifest(
    metas: Iterable[Any], decisions: dict[str, Decision], index_dir: str | Path, relative_to: Path | None = None
) -> Export:
    """The indexed videos (``VideoMeta``s, in index order) as a manifest CSV (``EXPORT_COLUMNS``) with the decisions
    applied: relabels change the label, drops leave the row out. Videos without a stored path cannot be trained on
    and are left out too. Cells that would start a spreadsheet formula get a ``'`` in front (``escape_cell``;
    ``read_manifest`` takes it off again)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    rows = dropped = relabelled = without_path = 0
    for m in metas:
        d = decisions.get(m.id)
        if d is not None and d.action == "drop":
            dropped += 1
            continue
        if not m.path:
            without_path += 1
            continue
        label = m.label
        if d is not None and d.action == "relabel" and d.label:
            label = d.label
            relabelled += 1
        cells = (export_path(m.path, Path(index_dir), relative_to), label, m.id, m.camera)
        w.writerow([escape_cell(c) for c in cells])  # no spreadsheet formulas; read_manifest reads them back
        rows += 1
    return Export(buf.getvalue(), rows, dropped, relabelled, without_path)


def export_index(index_dir: str | Path, out: str | Path, metas: Sequence[Any] | None = None) -> Export:
    """``vidret review export``: the cleaned manifest of an index folder, written atomically to ``out`` (no server
    needed; the metadata store is read as it stands, journal included). ``metas``: the videos of another backend
    (a Milvus collection), whose index folder then holds only the review."""
    from indexing.layout import STORE
    from indexing.store import MetadataStore

    folder = Path(index_dir)
    if metas is None:
        if not (folder / "index.json").is_file() or not (folder / STORE).is_file():
            raise UserError(f"{folder}: not an index folder (build one with `vidret index build`)")
        store = MetadataStore(folder / STORE)
        try:
            metas = store.all()
        finally:
            store.close()
    out = Path(out)
    res = cleaned_manifest(metas, ReviewStore(folder).decisions(), folder, relative_to=out.resolve().parent)
    atomic_write_text(out, res.text)
    return res


# ---- an audit computed by the server ------------------------------------------------------------------------------
class AuditCancelled(Exception):
    """The computation was cancelled between two chunks; nothing was stored."""


def compute_audit(
    loaded: Any,
    metas: Sequence[Any],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[list[AuditRow], dict[str, int]]:
    """``vidret audit`` for indexed videos: the checkpoint's classifier gives p(given label) for each video whose
    label is one of its classes and whose file exists (the others are counted, not audited). Most suspect first.

    The videos are decoded a chunk of ``batch_size`` at a time: ``progress(done, total)`` after each, and
    ``AuditCancelled`` as soon as ``cancelled()`` is true."""
    import numpy as np

    from training.audit import classify, rank
    from training.data.manifest import VideoRow

    classes = set(loaded.class_names)
    rows, counts = [], {"unknown_label": 0, "missing_file": 0, "undecodable": 0}
    for m in metas:
        if m.label not in classes:
            counts["unknown_label"] += 1
        elif not m.path or not os.path.exists(m.path):
            counts["missing_file"] += 1
        else:
            rows.append(VideoRow(path=m.path, id=m.id, label=m.label, camera=m.camera, row=len(rows) + 1))
    kept_rows, parts = [], []
    for start in range(0, len(rows), batch_size):
        if cancelled is not None and cancelled():
            raise AuditCancelled()
        if progress is not None:
            progress(start, len(rows))
        got, probs = classify(loaded, rows[start : start + batch_size], batch_size, 0)
        if got:
            kept_rows.extend(got)
            parts.append(probs)
    if cancelled is not None and cancelled():
        raise AuditCancelled()
    if progress is not None:
        progress(len(rows), len(rows))
    counts["undecodable"] = len(rows) - len(kept_rows)
    if not kept_rows:
        return [], counts
    return rank(kept_rows, np.concatenate(parts), loaded.class_names)[0], counts

"""Manifests: one video a row (docs/formats.md), as CSV with a header row or JSON Lines.

Columns: ``path`` (required; a video file, a folder of frame images, or a frame-list file — see training/data/video.py),
``label`` (required for training and evaluation), ``id`` (default: ``path`` as written, each ``/`` turned into
``:``), ``camera``, ``clean_label``. Ids follow the one id rule (indexing/ids.py; stored in Unicode NFC), labels
and cameras its length and control-character bounds. Relative paths resolve against the manifest's folder. Every
problem is reported as ``FILE, row N: reason`` before any work starts.

CSV cells that would start a spreadsheet formula (``= + - @``, a tab or a CR first) are written with a ``'`` in front
(``escape_cell``), and read back without it (``unescape_cell``): see docs/formats.md, "Formula escaping".

Column ``outlier_frames``: the 0-based indices of frames known to show background or another identity,
``;``-separated (written by ``vidret data synth --frame-noise``; only statistics read it).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from indexing.ids import InvalidIdError, check_text, normalize_id

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
FRAME_LIST_EXTENSION = ".frames"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
COLUMNS = ("path", "id", "label", "camera", "clean_label", "outlier_frames")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list: a spreadsheet reads these as a formula


def escape_cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: ``'`` before a value that starts with one of ``FORMULA_STARTS``, or
    with quotes and then one of them (so that ``unescape_cell`` can tell the added quote from the value's own)."""
    if value.lstrip("'").startswith(FORMULA_STARTS):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    """The value ``escape_cell`` escaped: one leading ``'`` off a cell of quotes followed by a formula start; any
    other cell as it is (``unescape_cell(escape_cell(v)) == v`` for every ``v``)."""
    if value.startswith("'") and value.lstrip("'").startswith(FORMULA_STARTS):
        return value[1:]
    return value


def default_id(raw_path: str) -> str:
    """The id of a row without one: the path as written, each ``/`` turned into ``:`` (an id is one URL path
    segment)."""
    return raw_path.replace("/", ":")


@dataclass(frozen=True)
class VideoRow:
    path: str  # resolved absolute path
    id: str
    label: str | None
    camera: str = ""
    clean_label: str | None = None
    row: int = 0  # 1-based data-row number, for messages
    raw_path: str = ""  # the path as written in the manifest
    outlier_frames: tuple[int, ...] | None = None  # known outlier frames (None: unknown; () : none)


def _parse_outliers(text: str, where: str) -> tuple[int, ...] | None:
    """``"0;3;7"`` -> (0, 3, 7); an empty field is unknown (None), ``"-"`` is known to have none."""
    text = text.strip()
    if not text:
        return None
    if text == "-":
        return ()
    try:
        values = tuple(sorted({int(v) for v in text.split(";") if v.strip()}))
    except ValueError:
        raise UserError(f"{where}: outlier_frames must be ;-separated frame indices, got {text!r}") from None
    if any(v < 0 for v in values):
        raise UserError(f"{where}: outlier_frames must be >= 0, got {text!r}")
    return values


def format_outliers(values: tuple[int, ...] | None) -> str:
    """The manifest field of ``outlier_frames`` (inverse of the parser)."""
    if values is None:
        return ""
    return ";".join(str(v) for v in values) if values else "-"


def _check_path_kind(path: Path) -> str | None:
    """None if the path's kind is acceptable (a directory counts), else the reason."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS or suffix == FRAME_LIST_EXTENSION or suffix == "":
        return None
    if path.is_dir():
        return None
    return (
        f"unknown extension {suffix!r} (videos: {', '.join(VIDEO_EXTENSIONS)}; "
        f"frame lists: {FRAME_LIST_EXTENSION}; or a folder of frames)"
    )


def _records(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}, row {i}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}, row {i}: expected a JSON object, got {type(obj).__name__}")
            yield i, {k: "" if v is None else str(v) for k, v in obj.items()}
        return
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return
    if "path" not in reader.fieldnames:
        raise UserError(f"{path}: missing required column 'path' (header: {', '.join(reader.fieldnames)})")
    for i, rec in enumerate(reader, start=1):
        if None in rec:
            raise UserError(f"{path}, row {i}: more fields than the header has columns")
        yield i, {k: unescape_cell((v or "").strip()) for k, v in rec.items()}


def read_manifest(path: str | Path, require_label: bool = False) -> list[VideoRow]:
    """Read and validate a manifest; raise UserError naming the file, row and problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"{path}: a manifest must be .csv or .jsonl")
    base = path.resolve().parent
    rows: list[VideoRow] = []
    seen: dict[str, int] = {}
    for i, rec in _records(path):
        raw = rec.get("path", "")
        if not raw:
            raise UserError(f"{path}, row {i}: missing required field 'path'")
        label = rec.get("label") or None
        if require_label and label is None:
            raise UserError(f"{path}, row {i}: missing required field 'label'")
        try:
            vid = normalize_id(rec.get("id") or default_id(raw))
            for field in ("label", "camera", "clean_label"):
                check_text(rec.get(field) or "", field)
        except InvalidIdError as exc:
            raise UserError(f"{path}, row {i}: {exc}") from None
        if vid in seen:
            raise UserError(f"{path}, row {i}: duplicate id {vid!r} (first at row {seen[vid]})")
        seen[vid] = i
        resolved = Path(os.path.normpath(raw if os.path.isabs(raw) else base / raw))
        reason = _check_path_kind(resolved)
        if reason:
            raise UserError(f"{path}, row {i}: {raw}: {reason}")
        rows.append(
            VideoRow(
                path=str(resolved),
                id=vid,
                label=label,
                camera=rec.get("camera", ""),
                clean_label=rec.get("clean_label") or None,
                row=i,
                raw_path=raw,
                outlier_frames=_parse_outliers(rec.get("outlier_frames", ""), f"{path}, row {i}"),
            )
        )
    if not rows:
        raise UserError(f"{path}: the manifest has no rows")
    return rows


def write_manifest(path: str | Path, rows: Sequence[VideoRow], relative_to: str | Path | None = None) -> Path:
    """Write rows as CSV atomically; paths relative to ``relative_to`` (default: the manifest's folder)."""
    path = Path(path)
    base = Path(relative_to) if relative_to is not None else path.resolve().parent
    cols = ["path", "id", "label", "camera"] + (["clean_label"] if any(r.clean_label for r in rows) else [])
    cols += ["outlier_frames"] if any(r.outlier_frames is not None for r in rows) else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        p = os.path.relpath(r.path, base) if os.path.isabs(r.path) else r.path
        values = {"path": p, "id": r.id, "label": r.label or "", "camera": r.camera, "clean_label": r.clean_label or ""}
        values["outlier_frames"] = format_outliers(r.outlier_frames)
        writer.writerow([escape_cell(values[c]) for c in cols])
    return atomic_write_text(path, buf.getvalue())


def class_map(labels: Iterable[str | None]) -> dict[str, int]:
    """Labels to class indices in sorted order (the mapping is saved in the checkpoint)."""
    return {lab: i for i, lab in enumerate(sorted({lab for lab in labels if lab is not None}))}


def scan_folder(root: str | Path) -> list[VideoRow]:
    """``ROOT/<label>/<video file or frame folder>`` -> rows (label = the sub-folder's name)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    rows: list[VideoRow] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for item in sorted(label_dir.iterdir()):
            is_video = item.is_file() and item.suffix.lower() in (*VIDEO_EXTENSIONS, FRAME_LIST_EXTENSION)
            is_frames = item.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in item.iterdir())
            if is_video or is_frames:
                rel = item.relative_to(root).as_posix()
                rows.append(
                    VideoRow(
                        path=str(item.resolve()),
                        id=normalize_id(default_id(rel)),
                        label=label_dir.name,
                        row=len(rows) + 1,
                        raw_path=rel,
                    )
                )
    if not rows:
        raise UserError(f"{root}: no videos found in ROOT/<label>/ sub-folders")
    return rows

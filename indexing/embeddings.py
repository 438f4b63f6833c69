"""The embeddings file (docs/formats.md): ``.npz`` with ``ids`` (str), ``embeddings`` (float32, N x D, L2-normalised),
``labels`` (str), ``cameras`` (str, may be empty) and optionally ``paths`` (str); shard folders of such files with a
``shards.json`` list (``vidret embed --shards``, distributed embedding); and ``EmbeddingSource``, which reads many
files a block of rows at a time (the out-of-core index build)."""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexing.atomic import atomic_write, atomic_write_text
from indexing.errors import UserError


@dataclass
class Embeddings:
    ids: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    cameras: np.ndarray
    paths: np.ndarray | None = None
    checkpoint_sha256: str | None = None  # of the model that computed them, when known

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=str)
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=str)
        self.cameras = np.asarray(self.cameras, dtype=str)
        if self.paths is not None:
            self.paths = np.asarray(self.paths, dtype=str)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def validate(self, source: str = "embeddings") -> None:
        e = self.embeddings
        if e.ndim != 2 or e.shape[1] == 0:
            raise UserError(f"{source}: embeddings must be a 2-D array (N x D), got shape {e.shape}")
        n = e.shape[0]
        for name in ("ids", "labels", "cameras") + (("paths",) if self.paths is not None else ()):
            arr = getattr(self, name)
            if arr.ndim != 1 or arr.shape[0] != n:
                raise UserError(f"{source}: '{name}' has {arr.shape[0] if arr.ndim else 0} entries for {n} embeddings")
        if not np.isfinite(e).all():
            bad = int(np.nonzero(~np.isfinite(e).all(1))[0][0])
            raise UserError(f"{source}: embedding of id {str(self.ids[bad])!r} (row {bad}) has NaN or inf values")
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            raise UserError(f"{source}: duplicate id {str(uniq[counts > 1][0])!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def save_embeddings(path: str | Path, emb: Embeddings, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write atomically (temp file in the same folder, then rename); ``extra`` arrays go in too (shards)."""
    emb.validate(str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": emb.ids, "embeddings": emb.embeddings, "labels": emb.labels, "cameras": emb.cameras}
    if emb.paths is not None:
        arrays["paths"] = emb.paths
    if emb.checkpoint_sha256:
        arrays["checkpoint_sha256"] = np.array(emb.checkpoint_sha256)
    arrays.update(extra or {})
    return atomic_write(path, lambda fh: np.savez(fh, **arrays), suffix=".npz")


def load_embeddings(path: str | Path, normalize_check: bool = True) -> Embeddings:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: embeddings file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("ids", "embeddings", "labels", "cameras") if k not in data.files]
            if missing:
                raise UserError(
                    f"{path}: missing array(s) {', '.join(missing)} (expected ids, embeddings, labels, cameras)"
                )
            emb = Embeddings(
                ids=data["ids"],
                embeddings=data["embeddings"],
                labels=data["labels"],
                cameras=data["cameras"],
                paths=data["paths"] if "paths" in data.files else None,
                checkpoint_sha256=str(data["checkpoint_sha256"]) if "checkpoint_sha256" in data.files else None,
            )
            if data["embeddings"].dtype != np.float32:
                raise UserError(f"{path}: embeddings must be float32, got {data['embeddings'].dtype}")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npz embeddings file ({exc})") from None
    emb.validate(str(path))
    if normalize_check and len(emb):
        norms = np.linalg.norm(emb.embeddings, axis=1)
        if np.abs(norms - 1).max() > 1e-3:
            raise UserError(
                f"{path}: embeddings are not L2-normalised (norms from {norms.min():.3g} to {norms.max():.3g})"
            )
    return emb


# ---- shards and many files: what `vidret embed --shards` writes and `vidret index build` reads -------------------

SHARD_LIST = "shards.json"
SHARD_LIST_FORMAT = "vidret-embedding-shards"
SHARD_NAME = "shard-{:06d}.npz"


@dataclass(frozen=True)
class ShardProvenance:
    """What a shard holds: the manifest rows ``[start, stop)`` (the rows kept are ``rows``), of which manifest (its
    sha256) and which checkpoint; and the videos skipped in that range."""

    start: int
    stop: int
    rows: np.ndarray
    manifest_sha256: str
    checkpoint_sha256: str
    skipped: list[tuple[str, str]]


def save_shard(path: str | Path, emb: Embeddings, prov: ShardProvenance) -> Path:
    """An embeddings file (above) plus its provenance arrays, written atomically."""
    extra = {
        "manifest_rows": np.asarray(prov.rows, dtype=np.int64),
        "row_range": np.array([prov.start, prov.stop], dtype=np.int64),
        "manifest_sha256": np.array(prov.manifest_sha256),
        "skipped_paths": np.array([p for p, _ in prov.skipped], dtype=str),
        "skipped_reasons": np.array([r for _, r in prov.skipped], dtype=str),
    }
    return save_embeddings(path, emb, extra)


def read_shard_provenance(path: str | Path) -> ShardProvenance | None:
    """A shard's provenance, or None when the file is not a readable shard (it is then embedded again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            start, stop = (int(v) for v in data["row_range"])
            return ShardProvenance(
                start,
                stop,
                data["manifest_rows"].astype(np.int64),
                str(data["manifest_sha256"]),
                str(data["checkpoint_sha256"]),
                list(zip(data["skipped_paths"].tolist(), data["skipped_reasons"].tolist(), strict=True)),
            )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        return None


def write_shard_list(folder: str | Path, shards: Sequence[str], info: dict[str, Any]) -> Path:
    """``folder/shards.json``: the shard files in manifest order (names relative to the folder) and ``info``."""
    body = {"format": SHARD_LIST_FORMAT, "version": 1, **info, "shards": list(shards)}
    return atomic_write_text(Path(folder) / SHARD_LIST, json.dumps(body, indent=2) + "\n")


def _read_shard_list(path: Path) -> list[Path]:
    try:
        body = json.loads(path.read_text())
        if body.get("format") != SHARD_LIST_FORMAT or not isinstance(body.get("shards"), list):
            raise ValueError(f"format is not {SHARD_LIST_FORMAT!r} or 'shards' is not a list")
        names = [str(s) for s in body["shards"]]
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: not a shard list of vidret embed --shards ({exc})") from None
    files = [path.parent / name for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{path}: shard {missing[0]} is missing ({len(missing)} of {len(files)} missing)")
    return files


def expand_sources(paths: Sequence[str | Path]) -> list[Path]:
    """``.npz`` files, shard lists (``shards.json``) and shard folders (holding one) -> the ``.npz`` files, in order."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            if not (p / SHARD_LIST).is_file():
                raise UserError(f"{p}: a folder of embeddings needs its {SHARD_LIST} (vidret embed --shards)")
            files.extend(_read_shard_list(p / SHARD_LIST))
        elif p.suffix == ".json":
            if not p.is_file():
                raise UserError(f"{p}: shard list not found")
            files.extend(_read_shard_list(p))
        elif not p.is_file():
            raise UserError(f"{p}: embeddings file not found")
        else:
            files.append(p)
    if not files:
        raise UserError("no embeddings given")
    return files


def _stored_npy(path: Path, name: str) -> np.ndarray | None:
    """Memory-map the array ``name`` of an uncompressed ``.npz`` (np.savez) without reading it; None when it is
    compressed or in a layout that cannot be mapped."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                return None
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            header = fh.tell()
    if fortran or dtype.hasobject or len(shape) != 2:
        return None
    with open(path, "rb") as raw:  # the member's data follows its local header, whose extra field may differ
        raw.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", raw.read(4))
    offset = info.header_offset + 30 + name_len + extra_len + header
    if shape[0] == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class EmbeddingSource:
    """The embeddings of one or many ``.npz`` files, read a block of rows at a time.

    The vectors of an uncompressed ``.npz`` (what vidret writes) stay on disk, memory-mapped: only the rows being
    read are copied into memory. A compressed one is read whole, one file at a time. The string arrays (ids, labels,
    cameras, paths) are held in memory. Every block read is checked: finite and, with ``normalize_check``,
    L2-normalised; an error names the file, the row and the id."""

    def __init__(
        self,
        parts: Sequence[tuple[str, np.ndarray]],
        meta: Embeddings,
        normalize_check: bool = True,
    ) -> None:
        self.names = [name for name, _ in parts]
        self._parts = [vectors for _, vectors in parts]
        self._starts = np.cumsum([0] + [len(v) for v in self._parts])
        self.ids, self.labels, self.cameras, self.paths = meta.ids, meta.labels, meta.cameras, meta.paths
        self.checkpoint_sha256 = meta.checkpoint_sha256
        self.dim = int(meta.embeddings.shape[1])
        self.normalize_check = normalize_check

    def __len__(self) -> int:
        return int(self._starts[-1])

    @classmethod
    def from_embeddings(cls, emb: Embeddings, source: str = "embeddings") -> EmbeddingSource:
        emb.validate(source)
        meta = Embeddings(emb.ids, np.zeros((0, emb.dim), np.float32), emb.labels, emb.cameras, emb.paths)
        meta.checkpoint_sha256 = emb.checkpoint_sha256
        return cls([(source, emb.embeddings)], meta, normalize_check=False)

    @classmethod
    def open(cls, paths: Sequence[str | Path], normalize_check: bool = True) -> EmbeddingSource:
        """``.npz`` files, shard lists and shard folders (see ``expand_sources``), in that order."""
        parts, metas = [], []
        for f in expand_sources(paths):
            meta, vectors = _open_npz(f)
            if metas and vectors.shape[1] != metas[0][1].embeddings.shape[1]:
                raise UserError(
                    f"{f}: embeddings of dimension {vectors.shape[1]}, but {metas[0][0]} has "
                    f"{metas[0][1].embeddings.shape[1]}"
                )
            parts.append((str(f), vectors))
            metas.append((f, meta))
        shas = {m.checkpoint_sha256 for _, m in metas}
        if len(shas - {None}) > 1:
            a, b = (next(f for f, m in metas if m.checkpoint_sha256 == s) for s in sorted(shas - {None})[:2])
            raise UserError(f"{a} and {b} were embedded by different checkpoints (checkpoint_sha256 differs)")
        with_paths = any(m.paths is not None for _, m in metas)
        meta = Embeddings(
            np.concatenate([m.ids for _, m in metas]),
            np.zeros((0, vectors.shape[1]), np.float32),
            np.concatenate([m.labels for _, m in metas]),
            np.concatenate([m.cameras for _, m in metas]),
            np.concatenate([m.paths if m.paths is not None else [""] * len(m.ids) for _, m in metas])
            if with_paths
            else None,
            shas.pop() if len(shas) == 1 else None,
        )
        ordered = np.sort(meta.ids)  # one copy of the ids (np.unique would make several)
        same = ordered[1:] == ordered[:-1]
        if same.any():
            dup = str(ordered[1:][same][0])
            where = [str(f) for f, m in metas if dup in set(m.ids.tolist())]
            raise UserError(f"duplicate id {dup!r} (in {' and '.join(dict.fromkeys(where))})")
        return cls(parts, meta, normalize_check)

    def _locate(self, row: int) -> tuple[str, int]:
        part = int(np.searchsorted(self._starts, row, side="right") - 1)
        return self.names[part], row - int(self._starts[part])

    def _check(self, block: np.ndarray, rows: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(block).all(1)
        what = "has NaN or inf values"
        if not bad.any() and self.normalize_check and len(block):
            bad = np.abs(np.sqrt(np.einsum("ij,ij->i", block, block)) - 1) > 1e-3  # no temporary of the block's size
            what = "is not L2-normalised (norm differs from 1 by more than 1e-3)"
        if bad.any():
            row = int(rows[np.argmax(bad)])
            name, local = self._locate(row)
            raise UserError(f"{name}: embedding of id {str(self.ids[row])!r} (row {local}) {what}")
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as one C-contiguous float32 array (a copy)."""
        blocks = []
        for part, s, e in zip(self._parts, self._starts[:-1], self._starts[1:], strict=True):
            lo, hi = max(start, int(s)), min(stop, int(e))
            if lo < hi:
                blocks.append(part[lo - s : hi - s])
        out = np.concatenate(blocks) if len(blocks) > 1 else np.array(blocks[0] if blocks else np.zeros((0, self.dim)))
        return self._check(np.ascontiguousarray(out, dtype=np.float32), np.arange(start, start + len(out)))

    def chunks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, block)`` of at most ``rows`` rows, in order (drop a block before asking for the next one:
        then only one is in memory)."""
        for start in range(0, len(self), max(1, rows)):
            block = self.read(start, min(len(self), start + rows))
            yield start, block
            del block

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (unique, any order), in that order; only they are read."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        for part, s, e in zip(self._parts, self._starts[:-1], self._starts[1:], strict=True):
            lo, hi = np.searchsorted(ordered, [s, e])
            for a in range(int(lo), int(hi), 4096):  # bounded temporaries
                b = min(int(hi), a + 4096)
                out[order[a:b]] = part[ordered[a:b] - s]
        return self._check(out, rows)


def _open_npz(path: Path) -> tuple[Embeddings, np.ndarray]:
    """An embeddings file's string arrays (in an ``Embeddings`` with no vectors) and its vectors, memory-mapped
    where the file stores them uncompressed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("ids", "embeddings", "labels", "cameras") if k not in data.files]
            if missing:
                raise UserError(
                    f"{path}: missing array(s) {', '.join(missing)} (expected ids, embeddings, labels, cameras)"
                )
            vectors = _stored_npy(path, "embeddings.npy")
            if vectors is None:
                vectors = data["embeddings"]
            meta = Embeddings(
                data["ids"],
                np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32),
                data["labels"],
                data["cameras"],
                data["paths"] if "paths" in data.files else None,
                str(data["checkpoint_sha256"]) if "checkpoint_sha256" in data.files else None,
            )
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npz embeddings file ({exc})") from None
    if vectors.dtype != np.float32:
        raise UserError(f"{path}: embeddings must be float32, got {vectors.dtype}")
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise UserError(f"{path}: embeddings must be a 2-D array (N x D), got shape {vectors.shape}")
    for name in ("ids", "labels", "cameras") + (("paths",) if meta.paths is not None else ()):
        arr = getattr(meta, name)
        if arr.ndim != 1 or arr.shape[0] != len(vectors):
            raise UserError(f"{path}: '{name}' has {arr.size} entries for {len(vectors)} embeddings")
    return meta, vectors

"""The embeddings file (docs/formats.md): ``.npz`` with ``ids`` (str), ``embeddings`` (float32, N x D, L2-normalised),
``labels`` (str), ``cameras`` (str, may be empty) and optionally ``paths`` (str)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing.atomic import atomic_write
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


def save_embeddings(path: str | Path, emb: Embeddings) -> Path:
    """Write atomically (temp file in the same folder, then rename)."""
    emb.validate(str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": emb.ids, "embeddings": emb.embeddings, "labels": emb.labels, "cameras": emb.cameras}
    if emb.paths is not None:
        arrays["paths"] = emb.paths
    if emb.checkpoint_sha256:
        arrays["checkpoint_sha256"] = np.array(emb.checkpoint_sha256)
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

"""Import the MARS video re-ID dataset layout into vidret manifests.

MARS ships frames, not videos: ``bbox_train/<pid>/<name>.jpg`` and ``bbox_test/...``, plus ``info/``:
``train_name.txt`` / ``test_name.txt`` (image names in order), ``tracks_train_info.mat`` /
``tracks_test_info.mat`` (rows ``[start, end, person, camera]``, 1-based inclusive indices into the name lists) and
``query_IDX.mat`` (1-based rows of the test tracks that are queries; the other test tracks are the gallery).

Each tracklet becomes one manifest row whose ``path`` is a frame-list file ``tracklets/<split>/<n>.frames``
(one image path per line, relative to the list's folder; see training/data/video.py). Junk tracklets (person -1) are
dropped; distractors (person 0) stay in the gallery.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from indexing.errors import UserError
from training.data.manifest import VideoRow, write_manifest


def _load_mat(path: Path) -> np.ndarray:
    import scipy.io

    if not path.is_file():
        raise UserError(f"{path}: missing MARS info file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for malformed files
        raise UserError(f"{path}: not a readable .mat file ({exc})") from None
    keys = [k for k in mat if not k.startswith("__")]
    if not keys:
        raise UserError(f"{path}: the .mat file holds no variable")
    return np.asarray(mat[keys[0]])


def _names(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: missing MARS info file")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _tracklets(root: Path, out: Path, split: str, info: np.ndarray, names: list[str]) -> list[VideoRow]:
    if info.ndim != 2 or info.shape[1] < 4:
        raise UserError(f"tracks_{split}_info.mat: expected rows [start, end, person, camera], got {info.shape}")
    folder = out / "tracklets" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (start, end, pid, cam) in enumerate(info[:, :4].astype(np.int64), start=1):
        if pid == -1:
            rows.append(None)  # junk: keeps the row numbering that query_IDX refers to
            continue
        if not 1 <= start <= end <= len(names):
            raise UserError(f"tracks_{split}_info.mat, row {n}: frames {start}..{end} outside 1..{len(names)}")
        images = [root / f"bbox_{split}" / nm[:4] / nm for nm in names[start - 1 : end]]
        lst = folder / f"{n:05d}.frames"
        lst.write_text("\n".join(os.path.relpath(p, folder) for p in images) + "\n")
        rows.append(
            VideoRow(path=str(lst.resolve()), id=f"{split}_{n:05d}", label=f"{pid:04d}", camera=f"c{cam}", row=n)
        )
    return rows


def import_mars(root: str | Path, out_dir: str | Path) -> dict[str, int]:
    root, out = Path(root), Path(out_dir)
    info = root / "info"
    for sub in ("bbox_train", "bbox_test", "info"):
        if not (root / sub).is_dir():
            raise UserError(f"{root}: not a MARS root (missing {sub}/)")
    out.mkdir(parents=True, exist_ok=True)
    train = [
        r
        for r in _tracklets(
            root, out, "train", _load_mat(info / "tracks_train_info.mat"), _names(info / "train_name.txt")
        )
        if r is not None
    ]
    test = _tracklets(root, out, "test", _load_mat(info / "tracks_test_info.mat"), _names(info / "test_name.txt"))
    q_idx = {int(i) for i in _load_mat(info / "query_IDX.mat").ravel()}
    bad = [i for i in q_idx if not 1 <= i <= len(test)]
    if bad:
        raise UserError(f"query_IDX.mat: query row {bad[0]} outside 1..{len(test)}")
    query = [r for i, r in enumerate(test, start=1) if i in q_idx and r is not None and r.label != "0000"]
    gallery = [r for i, r in enumerate(test, start=1) if i not in q_idx and r is not None]
    for name, rows in (("train", train), ("query", query), ("gallery", gallery)):
        write_manifest(out / f"{name}.csv", rows)
    return {"train tracklets": len(train), "query tracklets": len(query), "gallery tracklets": len(gallery)}

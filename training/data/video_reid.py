"""Importers of the standard video re-ID datasets in their published layouts (docs/datasets.md): iLIDS-VID,
PRID-2011, DukeMTMC-VideoReID and LS-VID. Like ``import-mars`` (training/data/mars.py): one manifest row per
tracklet, a ``.frames`` list of its images (nothing copied), cameras kept, the dataset's own train/query/gallery
split where it defines one and a seeded identity split, written out as ``split.json``, where it does not.

Layouts (ROOT may be the dataset's folder or the folder holding it):

- iLIDS-VID: ``i-LIDS-VID/sequences/cam1|cam2/<person>/*.png`` and ``train-test people splits/
  train_test_splits_ilidsvid.mat`` (``ls_set``: 10 rows of 300 1-based indices into the sorted person folders; the
  first 150 are the test persons, the rest train). Query: cam1 of the test persons, gallery: cam2.
- PRID-2011: ``prid_2011/multi_shot/cam_a|cam_b/person_NNNN/*.png``; the persons seen by both cameras, split in
  half with a seed (no split ships with the dataset). Query: cam_a, gallery: cam_b.
- DukeMTMC-VideoReID: ``DukeMTMC-VideoReID/train|query|gallery/<pid>/<tracklet>/*.jpg``; the camera is the ``C<n>``
  of the image names (``0001_C6_F0102_X...jpg``).
- LS-VID: ``LS-VID/list_sequence/list_seq_train.txt|list_seq_test.txt`` (lines ``<path prefix> <pid>``; a
  tracklet's images are the files starting with the prefix; the camera is the third ``_`` field of their names) and
  ``test/data/info_test.mat`` (``query``: 1-based rows of the test list; the other test rows are the gallery).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from indexing.errors import UserError
from training.data.manifest import IMAGE_EXTENSIONS
from training.data.tracklets import (
    Tracklet,
    images_in,
    need_dir,
    need_file,
    read_split,
    seeded_split,
    subdirs,
    write_dataset,
    write_split,
)


def _inside(root: Path, name: str, marker: str) -> Path:
    """ROOT/name when it holds ``marker``, else ROOT itself when it does; else an error naming both."""
    need_dir(root, "the dataset root")
    for base in (root / name, root):
        if (base / marker).exists():
            return base
    raise UserError(f"{root}: not a {name} root (missing {root / name / marker})")


def _identity_split(
    names: list[str], out: Path, seed: int, split_file: Path | None, dataset: str
) -> dict[str, list[str]]:
    if split_file is not None:
        split = read_split(split_file, names)
        write_split(out, split, dataset=dataset, source=str(split_file))
    else:
        split = seeded_split(names, seed)
        write_split(out, split, dataset=dataset, seed=seed, source="seeded")
    return split


# ---- iLIDS-VID -----------------------------------------------------------------------------------------------------
def _ilids_mat_split(path: Path, persons: list[str], index: int) -> dict[str, list[str]]:
    import scipy.io

    try:
        ls_set = np.asarray(scipy.io.loadmat(str(path))["ls_set"])
    except Exception as exc:  # scipy raises several types for malformed files
        raise UserError(f"{path}: not a readable split file with 'ls_set' ({exc})") from None
    if ls_set.ndim != 2 or not 0 <= index < ls_set.shape[0]:
        raise UserError(f"{path}: --split {index} outside the file's {ls_set.shape[0] if ls_set.ndim else 0} splits")
    row = ls_set[index].astype(np.int64)
    if row.min() < 1 or row.max() > len(persons):
        raise UserError(f"{path}: person index outside 1..{len(persons)} (the person folders of cam1)")
    half = len(row) // 2
    return {"test": sorted(persons[i - 1] for i in row[:half]), "train": sorted(persons[i - 1] for i in row[half:])}


def import_ilidsvid(
    root: str | Path, out_dir: str | Path, split: int = 0, seed: int = 0, split_file: Path | None = None
) -> dict[str, int]:
    root, out = Path(root), Path(out_dir)
    base = _inside(root, "i-LIDS-VID", "sequences")
    seq = base / "sequences"
    cams = {c: need_dir(seq / c, "iLIDS-VID camera") for c in ("cam1", "cam2")}
    persons = [p.name for p in subdirs(cams["cam1"])]
    missing = sorted(set(persons) ^ {p.name for p in subdirs(cams["cam2"])})
    if missing:
        raise UserError(f"{seq}: person {missing[0]} is not in both cam1/ and cam2/")
    out.mkdir(parents=True, exist_ok=True)
    mat = base.parent / "train-test people splits" / "train_test_splits_ilidsvid.mat"
    if not mat.is_file():
        mat = root / "train-test people splits" / "train_test_splits_ilidsvid.mat"
    if split_file is None and mat.is_file():
        parts = _ilids_mat_split(mat, persons, split)
        write_split(out, parts, dataset="iLIDS-VID", source=str(mat), split=split)
    else:
        parts = _identity_split(persons, out, seed, split_file, "iLIDS-VID")
    tracklets = []
    for part, persons_ in parts.items():
        for person in persons_:
            for cam in ("cam1", "cam2"):
                where = "train" if part == "train" else ("query" if cam == "cam1" else "gallery")
                imgs = tuple(images_in(cams[cam] / person))
                tracklets.append(Tracklet(where, f"{where}_{person}_{cam}", person, cam, imgs))
    return write_dataset(out, tracklets)


# ---- PRID-2011 -----------------------------------------------------------------------------------------------------
def import_prid2011(
    root: str | Path, out_dir: str | Path, seed: int = 0, split_file: Path | None = None, min_frames: int = 0
) -> dict[str, int]:
    root, out = Path(root), Path(out_dir)
    base = _inside(root, "prid_2011", "multi_shot")
    shot = base / "multi_shot"
    cams = {c: need_dir(shot / c, "PRID-2011 camera") for c in ("cam_a", "cam_b")}
    imgs = {c: {p.name: images_in(p) for p in subdirs(cams[c])} for c in cams}
    both = sorted(set(imgs["cam_a"]) & set(imgs["cam_b"]))
    persons = [p for p in both if min(len(imgs["cam_a"][p]), len(imgs["cam_b"][p])) >= min_frames]
    if len(persons) < 2:
        raise UserError(f"{shot}: fewer than 2 persons seen by both cam_a/ and cam_b/ (with >= {min_frames} frames)")
    out.mkdir(parents=True, exist_ok=True)
    parts = _identity_split(persons, out, seed, split_file, "PRID-2011")
    tracklets = []
    for part, persons_ in parts.items():
        for person in persons_:
            for cam in ("cam_a", "cam_b"):
                where = "train" if part == "train" else ("query" if cam == "cam_a" else "gallery")
                tracklets.append(Tracklet(where, f"{where}_{person}_{cam}", person, cam, tuple(imgs[cam][person])))
    return write_dataset(out, tracklets)


# ---- DukeMTMC-VideoReID ------------------------------------------------------------------------------------------
_DUKE_CAM = re.compile(r"C(\d+)")


def import_duke_video(root: str | Path, out_dir: str | Path) -> dict[str, int]:
    root, out = Path(root), Path(out_dir)
    base = _inside(root, "DukeMTMC-VideoReID", "train")
    tracklets = []
    for split in ("train", "query", "gallery"):
        folder = need_dir(base / split, f"DukeMTMC-VideoReID {split} split")
        for pid in subdirs(folder):
            for tid in subdirs(pid):
                images = images_in(tid)
                m = _DUKE_CAM.search(images[0].name[len(pid.name) :])
                if m is None:
                    raise UserError(f"{images[0]}: no camera (C<n>) in the image name")
                tracklets.append(
                    Tracklet(split, f"{split}_{pid.name}_{tid.name}", pid.name, f"c{m.group(1)}", tuple(images))
                )
    out.mkdir(parents=True, exist_ok=True)
    return write_dataset(out, tracklets)


# ---- LS-VID ---------------------------------------------------------------------------------------------------------
def _lsvid_list(path: Path) -> list[tuple[str, str]]:
    need_file(path, "LS-VID sequence list")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}, line {n}: expected '<path prefix> <pid>', got {line.strip()!r}")
        rows.append((parts[0], parts[1]))
    return rows


def _lsvid_queries(path: Path, n_test: int) -> set[int]:
    """0-based test rows that are queries, from info_test.mat (MATLAB v7.3, i.e. HDF5, or an older .mat)."""
    need_file(path, "LS-VID query index")
    try:
        import h5py
    except ImportError:
        h5py = None
    try:
        if h5py is not None and h5py.is_hdf5(str(path)):
            with h5py.File(path, "r") as fh:
                q = np.asarray(fh["query"])
        else:
            import scipy.io

            q = np.asarray(scipy.io.loadmat(str(path))["query"])
    except NotImplementedError:  # scipy on a v7.3 file without h5py
        raise UserError(f"{path} is a MATLAB v7.3 file: pip install h5py (vidret's datasets extra)") from None
    except Exception as exc:  # scipy and h5py raise several types for malformed files
        raise UserError(f"{path}: not a readable .mat file with 'query' ({exc})") from None
    idx = q.astype(np.int64).ravel() - 1
    if len(idx) and (idx.min() < 0 or idx.max() >= n_test):
        raise UserError(f"{path}: query row outside 1..{n_test} (the rows of list_seq_test.txt)")
    return set(idx.tolist())


def _lsvid_tracklet(base: Path, prefix: str, pid: str, split: str, n: int) -> Tracklet:
    stem = base / prefix
    folder = stem.parent
    need_dir(folder, "LS-VID tracklet folder")
    images = sorted(
        p for p in folder.iterdir() if p.name.startswith(stem.name) and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not images:
        raise UserError(f"{stem}*: no frame images of this LS-VID tracklet")
    fields = images[0].stem.split("_")
    if len(fields) < 3 or not fields[2].isdigit():
        raise UserError(f"{images[0]}: no camera (the third '_' field) in the image name")
    return Tracklet(split, f"{split}_{n:05d}", pid, f"c{int(fields[2])}", tuple(images))


def import_lsvid(root: str | Path, out_dir: str | Path) -> dict[str, int]:
    root, out = Path(root), Path(out_dir)
    base = _inside(root, "LS-VID", "list_sequence")
    train = _lsvid_list(base / "list_sequence" / "list_seq_train.txt")
    test = _lsvid_list(base / "list_sequence" / "list_seq_test.txt")
    queries = _lsvid_queries(base / "test" / "data" / "info_test.mat", len(test))
    tracklets = [_lsvid_tracklet(base, p, pid, "train", n) for n, (p, pid) in enumerate(train, start=1)]
    for n, (p, pid) in enumerate(test, start=1):
        t = _lsvid_tracklet(base, p, pid, "query" if n - 1 in queries else "gallery", n)
        tracklets.append(t)
    out.mkdir(parents=True, exist_ok=True)
    return write_dataset(out, tracklets)

"""What the video re-ID importers share (training/data/video_reid.py; MARS has its own, training/data/mars.py):
tracklets as ``.frames`` lists (no image copied), the train/query/gallery manifests, seeded identity splits written
out as a split file, and one-line errors that name the path."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.data.manifest import IMAGE_EXTENSIONS, VideoRow, write_manifest


@dataclass(frozen=True)
class Tracklet:
    split: str  # train | query | gallery
    id: str
    label: str
    camera: str
    images: tuple[Path, ...]


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: missing folder ({what})")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: missing file ({what})")
    return path


def images_in(folder: Path) -> list[Path]:
    """The frame images of a tracklet folder, in name order; an error naming the folder when it has none."""
    imgs = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not imgs:
        raise UserError(f"{folder}: no frame images ({', '.join(IMAGE_EXTENSIONS)})")
    return imgs


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def seeded_split(names: Sequence[str], seed: int, test_share: float = 0.5) -> dict[str, list[str]]:
    """Identities split into train and test, reproducibly (``random.Random(seed)``)."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_test = int(round(len(order) * test_share))
    return {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}


def read_split(path: Path, known: Iterable[str]) -> dict[str, list[str]]:
    """A split file (``{"train": [...], "test": [...]}``, as written by the importers) checked against the
    identities found."""
    need_file(path, "split file")
    try:
        data = json.loads(path.read_text())
        split = {"train": [str(v) for v in data["train"]], "test": [str(v) for v in data["test"]]}
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a split file with 'train' and 'test' lists ({exc})") from None
    known = set(known)
    for part in ("train", "test"):
        bad = [v for v in split[part] if v not in known]
        if bad:
            raise UserError(f"{path}: {part} identity {bad[0]!r} is not in the dataset")
    if set(split["train"]) & set(split["test"]):
        raise UserError(f"{path}: train and test share identities")
    return split


def write_split(out: Path, parts: dict[str, list[str]], **about) -> Path:
    path = out / "split.json"
    atomic_write_text(path, json.dumps({**about, **parts}, indent=2) + "\n")
    return path


def write_dataset(out: Path, tracklets: Sequence[Tracklet]) -> dict[str, int]:
    """``tracklets/<split>/<id>.frames`` (image paths relative to the list's folder) and train.csv, query.csv,
    gallery.csv, one row per tracklet; the counts."""
    rows: dict[str, list[VideoRow]] = {"train": [], "query": [], "gallery": []}
    for t in tracklets:
        folder = out / "tracklets" / t.split
        folder.mkdir(parents=True, exist_ok=True)
        lst = folder / f"{t.id}.frames"
        atomic_write_text(lst, "\n".join(os.path.relpath(p, folder) for p in t.images) + "\n")
        rows[t.split].append(
            VideoRow(path=str(lst.resolve()), id=t.id, label=t.label, camera=t.camera, row=len(rows[t.split]) + 1)
        )
    for name, part in rows.items():
        write_manifest(out / f"{name}.csv", part)
    ids = {name: len({r.label for r in part}) for name, part in rows.items()}
    return {
        "train tracklets": len(rows["train"]),
        "query tracklets": len(rows["query"]),
        "gallery tracklets": len(rows["gallery"]),
        "train identities": ids["train"],
        "test identities": len({r.label for r in rows["query"] + rows["gallery"]}),
    }

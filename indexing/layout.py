"""The on-disk layout of a FAISS index folder (see indexing/faiss_index.py): generations, the published pointer
(index.json), crash-atomic writes of a snapshot, and moving a new folder into place."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from indexing.atomic import atomic_write, atomic_write_text, fsync_dir
from indexing.embeddings import EmbeddingSource
from indexing.faiss_factory import faiss_module
from indexing.store import MetadataStore, VideoMeta

POINTER = "index.json"  # the published snapshot: replaced atomically, last
STORE = "metadata.sqlite"
SNAPSHOT_FILES = ("vectors.npy", "rows.npy", "index.faiss")  # inside gen-<n>/ (at the top in the first layout)
LAYOUT_VERSION = 2  # 1: the snapshot's files next to index.json
_GEN = re.compile(r"gen-(\d+)")


def gen_dir(root: Path, gen: int) -> Path:
    return root / f"gen-{gen}"


def generations(root: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _GEN.fullmatch(p.name)))


def write_vectors(fh: Any, source: EmbeddingSource, chunk_rows: int) -> None:
    """vectors.npy of ``source``, a block of rows at a time: the .npy header, then the rows (never all in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(fh, {**header, "shape": (len(source), source.dim)})
    for _, block in source.chunks(chunk_rows):
        fh.write(memoryview(block).cast("B"))


def write_generation(
    root: Path,
    gen: int,
    vectors: np.ndarray | Any,
    rows: np.ndarray,
    faiss_data: np.ndarray | Any,
    info: dict[str, Any],
) -> None:
    """Write gen-<gen>/ (each file fsynced, then the folders) and publish it by replacing index.json: before that
    rename readers see the previous snapshot, after it this one. ``vectors`` is an array or a function that writes
    vectors.npy to a file object (the build streams it); ``faiss_data`` is ``faiss.serialize_index``'s bytes or the
    index itself, written through FAISS's writer without a serialised copy in memory."""
    folder = gen_dir(root, gen)
    folder.mkdir()  # a new name: a generation is never written over
    write_vectors = vectors if callable(vectors) else (lambda fh: np.save(fh, vectors, allow_pickle=False))
    atomic_write(folder / "vectors.npy", write_vectors)
    atomic_write(folder / "rows.npy", lambda fh: np.save(fh, rows, allow_pickle=False))
    if isinstance(faiss_data, np.ndarray):
        atomic_write(folder / "index.faiss", lambda fh: fh.write(memoryview(faiss_data)))
    else:
        faiss = faiss_module()
        write_index = partial(faiss.write_index, faiss_data)
        atomic_write(folder / "index.faiss", lambda fh: write_index(faiss.PyCallbackIOWriter(fh.write)))
    fsync_dir(root)  # the folder's own entry, before the pointer that names it
    atomic_write_text(root / POINTER, json.dumps({**info, "generation": gen}, indent=2))


def insert_metadata(path: Path, source: EmbeddingSource, now: float, chunk_rows: int) -> None:
    """A new metadata store holding row i = the source's i-th embedding, inserted a block at a time."""
    store = MetadataStore(path, create=True)
    try:
        paths = source.paths if source.paths is not None else np.full(len(source), "")
        for start in range(0, len(source), chunk_rows):
            part = slice(start, start + chunk_rows)
            store.insert_initial(
                [
                    VideoMeta(str(i), start + k, str(lab), str(cam), str(p), now)
                    for k, (i, lab, cam, p) in enumerate(
                        zip(source.ids[part], source.labels[part], source.cameras[part], paths[part], strict=True)
                    )
                ]
            )
    finally:
        store.close()


def remove_unpublished(root: Path, published: int) -> None:
    """Remove the generations other than the published one (older ones, and any a crash left half-written), the
    snapshot files of the first layout, and temporaries of interrupted writes."""
    for gen in generations(root):
        if gen != published:
            shutil.rmtree(gen_dir(root, gen))
    for name in SNAPSHOT_FILES:
        (root / name).unlink(missing_ok=True)
    for tmp in (t for name in (*SNAPSHOT_FILES, POINTER) for t in root.glob(f".{name}.*")):
        tmp.unlink(missing_ok=True)
    fsync_dir(root)


def new_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/<prefix><random>``, mode 0755 less the umask (tempfile.mkdtemp's are 0700: a web
    server or container user of another uid could not read the index published from it)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o755)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free name for {prefix}*")


def move_into_place(new: Path, out: Path) -> None:
    """Rename the folder ``new`` to ``out``. An existing ``out`` is first renamed aside (``.<name>.old-<random>``)
    and deleted only once ``new`` is in place, so a crash never leaves a half-deleted index: ``out`` holds the old
    index or the new one (or, between the two renames, the old one is whole under its aside name). If the second
    rename fails, the old one is put back."""
    aside = None
    if out.exists():
        aside = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, aside)
    try:
        os.rename(new, out)
    except BaseException:
        if aside is not None:
            os.rename(aside, out)
        raise
    fsync_dir(out.parent)
    if aside is not None:
        shutil.rmtree(aside)

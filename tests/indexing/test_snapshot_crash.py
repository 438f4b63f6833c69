"""Crash-atomic snapshots: a snapshot interrupted at any point (an exception, or SIGKILL of the process) leaves an
index folder that reloads to exactly the acknowledged adds and removes, and the next snapshot cleans up after it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexing.embeddings import Embeddings, l2_normalize
from indexing.faiss_index import VideoIndex
from indexing.store import MetadataStore

REPO = Path(__file__).resolve().parents[2]
DIM = 8
# Where a snapshot is interrupted: before or after the i-th file rename into the index folder (the snapshot's
# files, then the index.json that publishes it), or once the journal is trimmed (before the previous snapshot is
# removed).
POINTS = [
    ("before", 1),
    ("after", 1),
    ("before", 2),
    ("after", 2),
    ("before", 3),
    ("after", 3),
    ("before", 4),
    ("after", 4),
    ("trimmed", 0),
]

State = dict[str, tuple[str, str, str, bytes]]  # id -> label, camera, path, float32 vector bytes


class Crash(Exception):
    pass


def build(folder: Path) -> State:
    rng = np.random.default_rng(0)
    emb = Embeddings(
        ids=[f"v{i}" for i in range(30)],
        embeddings=l2_normalize(rng.normal(size=(30, DIM))),
        labels=[f"p{i % 4}" for i in range(30)],
        cameras=["c1"] * 30,
        paths=[f"/videos/{i}.mp4" for i in range(30)],
    )
    VideoIndex.build(emb, folder, type="flat").close()
    return {
        i: (lab, cam, p, v.tobytes())
        for i, lab, cam, p, v in zip(emb.ids, emb.labels, emb.cameras, emb.paths, emb.embeddings, strict=True)
    }


def acknowledged_writes(ix: VideoIndex, state: State, tag: str = "a") -> State:
    """Adds and removes that return (are acknowledged), applied to ``ix``; returns ``state`` with them. Removing
    vectors and adding others keeps the snapshot's arrays the same length: the case where files of two snapshots
    mixed together would pair vectors with the wrong ids instead of failing to load."""
    state = dict(state)
    rng = np.random.default_rng(len(tag))
    for i in range(4):
        vid, vec = f"{tag}{i}", l2_normalize(rng.normal(size=(1, DIM)))
        ix.add([vid], vec, [f"new{i}"], ["c2"], [f"/up/{vid}.mp4"])
        state[vid] = (f"new{i}", "c2", f"/up/{vid}.mp4", vec[0].tobytes())
    for vid in (f"v{len(tag)}", f"v{len(tag) + 10}", f"v{len(tag) + 20}", f"{tag}1"):
        ix.remove([vid])
        del state[vid]
    return state


def state_of(ix: VideoIndex) -> State:
    metas, vecs = ix.snapshot()
    return {m.id: (m.label, m.camera, m.path, v.tobytes()) for m, v in zip(metas, vecs, strict=True)}


def assert_reloads_exactly(folder: Path, expected: State) -> None:
    ix = VideoIndex.load(folder)
    try:
        assert ix.count == len(expected) and state_of(ix) == expected
        for vid, (label, _, _, vec) in expected.items():  # each vector is found under its own id
            hit = ix.search(np.frombuffer(vec, np.float32), 1)[0][0]
            assert (hit.id, hit.label) == (vid, label)
    finally:
        ix.close()


def assert_clean(folder: Path) -> None:
    """One snapshot generation and no temporaries left behind."""
    names = sorted(p.name for p in folder.iterdir())
    assert len([n for n in names if n.startswith("gen-")]) == 1, names
    assert not [n for n in names if n.startswith(".") or n in ("index.faiss", "vectors.npy", "rows.npy")], names


def interrupt_at(
    folder: Path, when: str, n: int, crash: Callable[[], None], patch: Callable[[object, str, object], None] = setattr
) -> None:
    """Make the next snapshot of ``folder`` in this process call ``crash`` at the given point (by patching
    os.replace and the journal trim with ``patch``)."""
    real_replace, real_trim = os.replace, MetadataStore.truncate_journal
    root = folder.resolve()
    renames = 0

    def replace(src, dst, **kw) -> None:
        nonlocal renames
        inside = root in Path(os.path.abspath(dst)).parents
        renames += inside
        if inside and when == "before" and renames == n:
            crash()
        real_replace(src, dst, **kw)
        if inside and when == "after" and renames == n:
            crash()

    def trim(self: MetadataStore, upto: int) -> None:
        real_trim(self, upto)
        if when == "trimmed":
            crash()

    patch(os, "replace", replace)
    patch(MetadataStore, "truncate_journal", trim)


@pytest.mark.parametrize(("when", "n"), POINTS)
def test_an_exception_during_a_snapshot_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, n: int
) -> None:
    folder = tmp_path / "ix"
    state = build(folder)
    ix = VideoIndex.load(folder)
    state = acknowledged_writes(ix, state)

    def crash() -> None:
        raise Crash(f"{when} {n}")

    interrupt_at(folder, when, n, crash, monkeypatch.setattr)
    with pytest.raises(Crash):
        ix.save()
    monkeypatch.undo()
    assert state_of(ix) == state  # the live index is untouched and takes more writes
    state = acknowledged_writes(ix, state, "after")
    ix.close()
    assert_reloads_exactly(folder, state)
    again = VideoIndex.load(folder)
    again.save()  # the next snapshot succeeds and removes what the interrupted one left
    again.close()
    assert_clean(folder)
    assert_reloads_exactly(folder, state)


KILLED_DURING_SNAPSHOT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from tests.indexing.test_snapshot_crash import acknowledged_writes, interrupt_at, state_of
from indexing.faiss_index import VideoIndex

folder, when, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ix = VideoIndex.load(folder)
acknowledged_writes(ix, state_of(ix))
print("acknowledged", flush=True)
interrupt_at(folder, when, n, lambda: os.kill(os.getpid(), signal.SIGKILL))
ix.save()
print("the snapshot was not interrupted", flush=True)
"""


def test_sigkill_at_every_point_of_a_snapshot_loses_nothing(tmp_path: Path) -> None:
    state = build(tmp_path / "base")
    expected = acknowledged_writes(_NoIndex(), state)
    folders = {point: tmp_path / f"{point[0]}{point[1]}" for point in POINTS}
    for folder in folders.values():
        shutil.copytree(tmp_path / "base", folder)
    procs = {
        point: subprocess.Popen(
            [sys.executable, "-c", KILLED_DURING_SNAPSHOT, str(folder), *map(str, point), str(REPO)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for point, folder in folders.items()
    }
    for point, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL and out == "acknowledged\n", (point, out, err[-2000:])
    for folder in folders.values():
        assert_reloads_exactly(folder, expected)
        ix = VideoIndex.load(folder)
        ix.save()
        ix.close()
        assert_clean(folder)
        assert_reloads_exactly(folder, expected)


class _NoIndex:
    """Takes the writes without an index: what the acknowledged state is, computed on its own."""

    def add(self, *_: object) -> None:
        pass

    def remove(self, *_: object) -> None:
        pass

"""FAISS index: types, auto choice and tuning, round trips, durable add/remove (kill -9), concurrency, errors, GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from indexing.backend import DuplicateIdError, UnknownIdError
from indexing.embeddings import Embeddings, l2_normalize, load_embeddings, save_embeddings
from indexing.errors import UserError
from indexing.faiss_factory import use_gpu
from indexing.faiss_index import VideoIndex
from indexing.planning import choose_type


def _emb(n: int, dim: int = 16, seed: int = 0, clusters: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.normal(size=(clusters, dim))
        x = centres[rng.integers(0, clusters, n)] + 0.25 * rng.normal(size=(n, dim))
    else:
        x = rng.normal(size=(n, dim))
    return Embeddings(
        ids=[f"v{i}" for i in range(n)],
        embeddings=l2_normalize(x),
        labels=[f"p{i % 7}" for i in range(n)],
        cameras=[f"c{i % 3}" for i in range(n)],
        paths=[f"/videos/{i}.mp4" for i in range(n)],
    )


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    s = q @ x.T
    return [list(np.argsort(-row, kind="stable")[:k]) for row in s]


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_types_search_add_remove_and_round_trip(tmp_path: Path, kind: str) -> None:
    emb = _emb(3000, clusters=30)
    ix = VideoIndex.build(emb, tmp_path / "ix", type=kind)
    assert ix.type == kind and ix.count == 3000 and ix.dim == 16
    q = emb.embeddings[:50]
    hits = ix.search(q, 10, exclude_ids=list(emb.ids[:50]))
    assert all(h.id != f"v{i}" for i, hs in enumerate(hits) for h in hs) and all(len(hs) == 10 for hs in hits)
    truth = _exact_top(emb.embeddings, q, 11)
    recall = np.mean([len({h.id for h in hs} & {f"v{j}" for j in t[1:]}) / 10 for hs, t in zip(hits, truth)])
    assert recall >= {"flat": 0.999, "ivf": 0.9, "hnsw": 0.9, "ivfpq": 0.3}[kind]  # PQ: bounded by its code size
    if kind != "flat":
        assert ix.info["params"]["tuned_recall_at_10"] > 0
    assert hits[0][0].label == emb.labels[int(hits[0][0].id[1:])] and hits[0][0].score <= 1.0 + 1e-5
    ix.add(["new"], emb.embeddings[7:8], ["p9"], ["c9"], ["/n.mp4"])
    ix.remove(["v7"])
    top = ix.search(emb.embeddings[7:8], 1)[0][0]
    assert top.id == "new" and top.label == "p9"
    with pytest.raises(DuplicateIdError):
        ix.add(["new"], emb.embeddings[:1], ["x"], [""], [""])
    with pytest.raises(UnknownIdError):
        ix.remove(["v7"])
    ix.close()
    again = VideoIndex.load(tmp_path / "ix")  # journal replayed
    assert again.count == 3000 and again.get("v7") is None and again.get("new").path == "/n.mp4"
    assert again.search(emb.embeddings[7:8], 1)[0][0].id == "new"
    again.save()  # compaction: a snapshot, then the journal is trimmed
    again.close()
    third = VideoIndex.load(tmp_path / "ix")
    assert third.count == 3000 and third.get("new") is not None and third.store.journal_since(0, 16) == []
    assert [h.id for h in third.search(q[:5], 5)[0]] == [h.id for h in again.search(q[:5], 5)[0]]


def test_auto_chooses_by_size_and_memory_and_tunes_recall(tmp_path: Path) -> None:
    assert choose_type(1_000, 128) == "flat"
    assert choose_type(200_000, 128) == "ivf"
    assert choose_type(200_000, 128, memory_budget_mb=50) == "ivfpq"
    emb = _emb(25_000, dim=32, clusters=200)
    ix = VideoIndex.build(emb, tmp_path / "ix", type="auto")
    assert ix.type == "ivf" and 1 <= ix.info["params"]["nprobe"] <= ix.info["params"]["nlist"]
    q = l2_normalize(emb.embeddings[:200] + 0.05 * np.random.default_rng(5).normal(size=(200, 32)))
    hits = ix.search(q, 10)
    truth = _exact_top(emb.embeddings, q, 10)
    recall = np.mean([len({h.id for h in hs} & {f"v{j}" for j in t}) / 10 for hs, t in zip(hits, truth)])
    assert recall >= 0.95


KILLER = """
import os, sys, numpy as np
from indexing.faiss_index import VideoIndex
ix = VideoIndex.load(sys.argv[1])
v = np.ones((1, 16), np.float32) / 4
if sys.argv[2] == "add":
    ix.add(["durable"], v, ["lab"], ["cam"], ["/d.mp4"])
else:
    ix.remove(["v3"])
print("returned", flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_returned_add_or_remove_survives_kill_9(tmp_path: Path) -> None:
    VideoIndex.build(_emb(500), tmp_path / "ix", type="flat").close()
    for op in ("add", "remove"):
        res = subprocess.run(
            [sys.executable, "-c", KILLER, str(tmp_path / "ix"), op], capture_output=True, text=True, timeout=120
        )
        assert res.returncode == -9 and "returned" in res.stdout, res.stderr
    ix = VideoIndex.load(tmp_path / "ix")
    assert ix.get("durable") is not None and ix.get("v3") is None and ix.count == 500
    assert ix.search(np.ones((1, 16), np.float32) / 4, 1)[0][0].id == "durable"


def test_concurrent_searches_during_writes_are_consistent(tmp_path: Path) -> None:
    emb = _emb(2000)
    ix = VideoIndex.build(emb, tmp_path / "ix", type="flat")
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                for hs in ix.search(emb.embeddings[:20], 5):
                    assert len(hs) == 5 and len({h.id for h in hs}) == 5
                    assert all(ix.get(h.id) is not None or h.id.startswith("w") for h in hs)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(100):
        ix.add([f"w{i}"], emb.embeddings[i : i + 1], ["x"], [""], [""])
        if i % 2:
            ix.remove([f"w{i - 1}"])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert ix.count == 2000 + 50


def test_missing_and_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    VideoIndex.build(_emb(100), tmp_path / "ix", type="flat").close()
    with pytest.raises(UserError, match="index folder not found"):
        VideoIndex.load(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "ix", broken)
    snapshot = broken / f"gen-{json.loads((broken / 'index.json').read_text())['generation']}"
    (snapshot / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt FAISS index"):
        VideoIndex.load(broken)
    (snapshot / "index.faiss").unlink()
    with pytest.raises(UserError, match=f"missing {snapshot.name}/index.faiss"):
        VideoIndex.load(broken)
    (broken / "index.json").write_text('{"dim": 16, "generation": "latest"}')
    with pytest.raises(UserError, match="index.json: corrupt"):
        VideoIndex.load(broken)
    with pytest.raises(UserError, match="not empty"):
        VideoIndex.build(_emb(10), tmp_path / "ix")


def test_embeddings_file_validation(tmp_path: Path) -> None:
    emb = _emb(5)
    save_embeddings(tmp_path / "e.npz", emb)
    back = load_embeddings(tmp_path / "e.npz")
    assert list(back.ids) == list(emb.ids) and back.embeddings.dtype == np.float32
    bad = Embeddings(ids=["a", "a"], embeddings=l2_normalize(np.ones((2, 3))), labels=["x", "y"], cameras=["", ""])
    with pytest.raises(UserError, match="duplicate id 'a'"):
        save_embeddings(tmp_path / "d.npz", bad)
    np.savez(
        tmp_path / "nan.npz",
        ids=np.array(["a"]),
        embeddings=np.full((1, 3), np.nan, np.float32),
        labels=np.array(["x"]),
        cameras=np.array([""]),
    )
    with pytest.raises(UserError, match="NaN or inf"):
        load_embeddings(tmp_path / "nan.npz")
    np.savez(
        tmp_path / "short.npz",
        ids=np.array(["a", "b"]),
        embeddings=np.ones((1, 3), np.float32),
        labels=np.array(["x"]),
        cameras=np.array([""]),
    )
    with pytest.raises(UserError, match="'ids' has 2 entries for 1 embeddings"):
        load_embeddings(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable"):
        load_embeddings(tmp_path / "junk.npz")


class _FakeGpuFaiss:
    """Stands in for the GPU half of faiss-gpu: counts the transfers the index makes."""

    def __init__(self, real) -> None:
        self.real, self.to_gpu, self.to_cpu = real, 0, 0

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def get_num_gpus(self) -> int:
        return 1

    def StandardGpuResources(self):
        return object()

    def index_cpu_to_gpu(self, res, device, index):
        self.to_gpu += 1
        return index

    def index_gpu_to_cpu(self, index):
        self.to_cpu += 1
        return index


def test_use_gpu_follows_the_rule_whatever_this_machine_has(monkeypatch) -> None:
    """None: the GPU exactly when one is usable; True without one is an error; False: never (GPU presence faked both
    ways, so this holds on machines with faiss-gpu and a GPU too)."""
    import indexing.faiss_factory as index_mod

    monkeypatch.setattr(index_mod, "gpu_available", lambda: False)
    assert use_gpu(None) is False and use_gpu(False) is False
    with pytest.raises(UserError, match="no GPU FAISS"):
        use_gpu(True)
    monkeypatch.setattr(index_mod, "gpu_available", lambda: True)
    assert use_gpu(None) is True and use_gpu(True) is True and use_gpu(False) is False


@pytest.mark.parametrize(("has_gpu_module", "gpus", "expected"), [(False, 0, False), (True, 0, False), (True, 2, True)])
def test_gpu_available_needs_faiss_gpu_and_a_gpu(monkeypatch, has_gpu_module: bool, gpus: int, expected: bool) -> None:
    from types import SimpleNamespace

    import indexing.faiss_factory as index_mod

    fake = SimpleNamespace(get_num_gpus=lambda: gpus, **({"StandardGpuResources": object} if has_gpu_module else {}))
    monkeypatch.setattr(index_mod, "faiss_module", lambda: fake)
    assert index_mod.gpu_available() is expected


def test_gpu_selection_logic_with_faked_gpu(tmp_path: Path, monkeypatch) -> None:
    import faiss

    import indexing.faiss_factory as index_mod
    import indexing.faiss_index

    fake = _FakeGpuFaiss(faiss)
    monkeypatch.setattr(index_mod, "faiss_module", lambda: fake)
    monkeypatch.setattr(indexing.faiss_index, "faiss_module", lambda: fake)
    assert use_gpu(None) is True and use_gpu(False) is False
    ix = VideoIndex.build(_emb(3000, clusters=20), tmp_path / "ix", type="ivf")  # default: the GPU when present
    assert fake.to_gpu >= 2 and fake.to_cpu == 1  # train on GPU, back to CPU to save; search copy on GPU
    assert len(ix.search(_emb(3).embeddings, 3)[0]) == 3
    VideoIndex.load(tmp_path / "ix", gpu=False)
    assert fake.to_gpu == 2


def test_loads_the_first_layout_and_moves_it_to_a_generation_on_save(tmp_path: Path) -> None:
    """Index folders written before generations (the snapshot's files next to index.json) keep working."""
    emb = _emb(200)
    VideoIndex.build(emb, tmp_path / "ix", type="flat").close()
    folder = tmp_path / "ix"
    info = json.loads((folder / "index.json").read_text())
    for name in ("index.faiss", "vectors.npy", "rows.npy"):
        (folder / f"gen-{info['generation']}" / name).rename(folder / name)
    (folder / f"gen-{info.pop('generation')}").rmdir()
    (folder / "index.json").write_text(json.dumps({**info, "version": 1}))
    (folder / ".vectors.npy.tmp.npy").write_bytes(b"left by an interrupted save of the first layout")
    ix = VideoIndex.load(folder)
    assert ix.count == 200 and ix.search(emb.embeddings[4:5], 1)[0][0].id == "v4"
    ix.add(["new"], emb.embeddings[9:10], ["p9"], ["c9"], ["/n.mp4"])
    ix.remove(["v9"])
    ix.close()
    ix = VideoIndex.load(folder)
    assert ix.count == 200 and ix.search(emb.embeddings[9:10], 1)[0][0].id == "new"
    ix.save()
    ix.close()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("metadata.sqlite")) == [
        "gen-1",
        "index.json",
    ]
    assert json.loads((folder / "index.json").read_text())["generation"] == 1
    ix = VideoIndex.load(folder)
    assert ix.count == 200 and ix.get("v9") is None and ix.search(emb.embeddings[9:10], 1)[0][0].id == "new"
    assert ix.store.journal_since(0, 16) == []


def test_hnsw_snapshot_keeps_the_writes_made_while_it_rebuilds(tmp_path: Path, monkeypatch) -> None:
    """HNSW cannot remove: a snapshot rebuilds the graph without holding the index's lock, so writes land
    meanwhile; the rebuilt index must have them too."""
    emb = _emb(300)
    ix = VideoIndex.build(emb, tmp_path / "ix", type="hnsw")
    ix.remove(["v1", "v2"])
    real = VideoIndex._fresh_index

    def rebuild_with_writes_meanwhile(self, vectors, rows):
        index = real(self, vectors, rows)
        self.add(["during"], emb.embeddings[1:2], ["d"], [""], [""])
        self.remove(["v5"])
        return index

    monkeypatch.setattr(VideoIndex, "_fresh_index", rebuild_with_writes_meanwhile)
    ix.save()
    monkeypatch.undo()
    for index in (ix, VideoIndex.load(tmp_path / "ix")):
        assert index.count == 298 and index.get("v5") is None
        assert index.search(emb.embeddings[1:2], 1)[0][0].id == "during"
        assert "v5" not in {h.id for h in index.search(emb.embeddings[5:6], 10)[0]}
        assert [len(hs) for hs in index.search(emb.embeddings[:20], 10)] == [10] * 20
        index.close()


class _Concurrency:
    """A search index that notes how many searches run in it at once."""

    def __init__(self, index) -> None:
        self.index, self.active, self.most = index, 0, 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.index, name)

    def search(self, q, k):
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.02)
            return self.index.search(q, k)
        finally:
            with self._lock:
                self.active -= 1


def _search_from_threads(ix: VideoIndex, emb: Embeddings) -> list[str]:
    start = threading.Barrier(6)
    tops: list[str] = []

    def run(i: int) -> None:
        start.wait()
        for j in range(5):
            tops.append(ix.search(emb.embeddings[i * 5 + j : i * 5 + j + 1], 1)[0][0].id)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(tops, key=lambda v: int(v[1:]))


def test_searches_on_a_gpu_index_run_one_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """FAISS GPU indexes are not thread-safe even for search (GPU path faked); CPU indexes keep concurrent reads."""
    import faiss

    import indexing.faiss_factory as index_mod

    emb = _emb(100)
    VideoIndex.build(emb, tmp_path / "ix", type="flat", gpu=False).close()
    gpu_copies: list[_Concurrency] = []

    def to_gpu(index):
        gpu_copies.append(_Concurrency(faiss.clone_index(index)))
        return gpu_copies[-1]

    monkeypatch.setattr(index_mod, "gpu_available", lambda: True)
    monkeypatch.setattr(VideoIndex, "_to_gpu", staticmethod(to_gpu))
    on_gpu = VideoIndex.load(tmp_path / "ix", gpu=True)
    assert _search_from_threads(on_gpu, emb) == [f"v{i}" for i in range(30)]
    assert len(gpu_copies) == 1 and gpu_copies[0].most == 1
    on_gpu.close()

    on_cpu = VideoIndex.load(tmp_path / "ix", gpu=False)
    on_cpu._search_index = cpu = _Concurrency(on_cpu._index)
    assert _search_from_threads(on_cpu, emb) == [f"v{i}" for i in range(30)]
    assert cpu.most > 1
    on_cpu.close()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750)])
def test_the_built_folder_is_0755_less_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Not tempfile.mkdtemp's 0700: a web server or container user of another uid must be able to read it."""
    import os

    old = os.umask(umask)
    try:
        VideoIndex.build(_emb(50), tmp_path / "ix", type="flat").close()
    finally:
        os.umask(old)
    assert (tmp_path / "ix").stat().st_mode & 0o777 == mode


def test_overwrite_removes_the_old_folder_only_once_the_new_one_is_in_place(tmp_path: Path, monkeypatch) -> None:
    import os

    import indexing.layout as index_mod

    VideoIndex.build(_emb(100), tmp_path / "ix", type="flat").close()
    real_rmtree, seen = shutil.rmtree, []

    def rmtree(path, *args, **kwargs):
        seen.append((Path(path).name, json.loads((tmp_path / "ix" / "index.json").read_text())["count"]))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(index_mod.shutil, "rmtree", rmtree)
    ix = VideoIndex.build(_emb(60), tmp_path / "ix", type="flat", overwrite=True)
    monkeypatch.undo()
    assert ix.count == 60
    ix.close()
    assert len(seen) == 1 and seen[0][0].startswith(".ix.old-") and seen[0][1] == 60  # deleted after the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # nothing left aside

    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(dst) == tmp_path / "ix" and not Path(src).name.startswith(".ix.old-"):  # the new one into place
            raise OSError("disk pulled")
        return real_rename(src, dst)

    monkeypatch.setattr(index_mod.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk pulled"):
        VideoIndex.build(_emb(30), tmp_path / "ix", type="flat", overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # the old one put back, the new one removed
    ix = VideoIndex.load(tmp_path / "ix")
    assert ix.count == 60
    ix.close()

"""FAISS index: types, auto choice and tuning, round trips, durable add/remove (kill -9), concurrency, errors, GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from indexing.embeddings import Embeddings, l2_normalize, load_embeddings, save_embeddings
from indexing.errors import UserError
from indexing.index import DuplicateIdError, UnknownIdError, VideoIndex, choose_type, use_gpu


def _emb(n: int, dim: int = 16, seed: int = 0, clusters: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.normal(size=(clusters, dim))
        x = centres[rng.integers(0, clusters, n)] + 0.25 * rng.normal(size=(n, dim))
    else:
        x = rng.normal(size=(n, dim))
    return Embeddings(ids=[f"v{i}" for i in range(n)], embeddings=l2_normalize(x),
                      labels=[f"p{i % 7}" for i in range(n)], cameras=[f"c{i % 3}" for i in range(n)], paths=[f"/videos/{i}.mp4" for i in range(n)])


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
from indexing.index import VideoIndex
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
        res = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "ix"), op], capture_output=True, text=True,
                             timeout=120)
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
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(100):
        ix.add([f"w{i}"], emb.embeddings[i:i + 1], ["x"], [""], [""])
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
    (broken / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt FAISS index"):
        VideoIndex.load(broken)
    (broken / "index.faiss").unlink()
    with pytest.raises(UserError, match="missing index.faiss"):
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
    np.savez(tmp_path / "nan.npz", ids=np.array(["a"]), embeddings=np.full((1, 3), np.nan, np.float32),
             labels=np.array(["x"]), cameras=np.array([""]))
    with pytest.raises(UserError, match="NaN or inf"):
        load_embeddings(tmp_path / "nan.npz")
    np.savez(tmp_path / "short.npz", ids=np.array(["a", "b"]), embeddings=np.ones((1, 3), np.float32),
             labels=np.array(["x"]), cameras=np.array([""]))
    with pytest.raises(UserError, match="'ids' has 2 entries for 1 embeddings"):
        load_embeddings(tmp_path / "short.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable"):
        load_embeddings(tmp_path / "junk.npz")


class _FakeGpuFaiss:
    """Stands in for the GPU half of faiss-gpu: counts the transfers the index makes."""

    def __init__(self, real) -> None:  # noqa: ANN001
        self.real, self.to_gpu, self.to_cpu = real, 0, 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.real, name)

    def get_num_gpus(self) -> int:
        return 1

    def StandardGpuResources(self):  # noqa: ANN201, N802
        return object()

    def index_cpu_to_gpu(self, res, device, index):  # noqa: ANN001, ANN201
        self.to_gpu += 1
        return index

    def index_gpu_to_cpu(self, index):  # noqa: ANN001, ANN201
        self.to_cpu += 1
        return index


def test_gpu_selection_logic_with_faked_gpu(tmp_path: Path, monkeypatch) -> None:
    import faiss

    import indexing.index as index_mod

    assert use_gpu(None) is False  # this machine: no GPU faiss
    with pytest.raises(UserError, match="no GPU FAISS"):
        use_gpu(True)
    fake = _FakeGpuFaiss(faiss)
    monkeypatch.setattr(index_mod, "_faiss", lambda: fake)
    assert use_gpu(None) is True and use_gpu(False) is False
    ix = VideoIndex.build(_emb(3000, clusters=20), tmp_path / "ix", type="ivf")  # default: the GPU when present
    assert fake.to_gpu >= 2 and fake.to_cpu == 1  # train on GPU, back to CPU to save; search copy on GPU
    assert len(ix.search(_emb(3).embeddings, 3)[0]) == 3
    VideoIndex.load(tmp_path / "ix", gpu=False)
    assert fake.to_gpu == 2

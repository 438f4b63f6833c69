"""Indexes made by ``faiss.index_factory`` + ParameterSpace are the ones the hand-built construction made: the same
structure, training, codes, tuned search parameters and search results; the parameters survive save and load."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

import indexing.faiss_factory as index_mod
from indexing.embeddings import Embeddings, l2_normalize
from indexing.faiss_index import VideoIndex

N, DIM = 2000, 16  # nlist = min(2000 // 39, 4 sqrt(2000)) = 51; PQ m = 16 // 4 = 4
FACTORY = {"flat": "IDMap2,Flat", "hnsw": "IDMap2,HNSW32", "ivf": "IVF51,Flat", "ivfpq": "IVF51,PQ4x8np"}


def _emb(n: int = N, dim: int = DIM, seed: int = 3) -> Embeddings:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, dim))[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return Embeddings(
        ids=[f"v{i}" for i in range(n)], embeddings=l2_normalize(x), labels=["p"] * n, cameras=["c"] * n, paths=[""] * n
    )


def _old_set(index, params: dict) -> None:
    """The hand-written parameter setting that ParameterSpace replaced."""
    base = faiss.downcast_index(index.index) if hasattr(index, "index") else faiss.downcast_index(index)
    if "nprobe" in params and hasattr(base, "nprobe"):
        base.nprobe = int(params["nprobe"])
    if "efSearch" in params and hasattr(base, "hnsw"):
        base.hnsw.efSearch = int(params["efSearch"])


def _old_build(kind: str, metric: str, x: np.ndarray):
    """The construction, training and tuning as VideoIndex.build did them before index_factory, written out."""
    n, d = x.shape
    mt = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    flat = (lambda: faiss.IndexFlatIP(d)) if metric == "cosine" else (lambda: faiss.IndexFlatL2(d))
    rows = np.arange(n, dtype=np.int64)
    nlist = int(max(1, min(n // 39, 4 * np.sqrt(n))))
    if kind == "flat":
        index, params = faiss.IndexIDMap2(flat()), {}
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, 32, mt)
        base.hnsw.efConstruction = 80
        index, params = faiss.IndexIDMap2(base), {"efSearch": 64}
    elif kind == "ivf":
        index, params = faiss.IndexIVFFlat(flat(), d, nlist, mt), {"nlist": nlist, "nprobe": 1}
    else:
        index, params = faiss.IndexIVFPQ(flat(), d, nlist, d // 4, 8, mt), {"nlist": nlist, "nprobe": 1}
    if not index.is_trained:
        index.train(x[np.random.default_rng(0).choice(n, size=min(n, 256 * nlist), replace=False)])
    index.add_with_ids(x, rows)
    if kind == "flat":
        return index, params
    sample = x[np.random.default_rng(0).choice(n, size=min(500, n), replace=False)]
    exact = faiss.IndexIDMap2(flat())
    exact.add_with_ids(x, rows)
    _, truth = exact.search(sample, 10)
    key = "efSearch" if kind == "hnsw" else "nprobe"
    grid = [16, 32, 64, 128, 256, 512, 1024] if kind == "hnsw" else sorted({min(nlist, 2**i) for i in range(16)})
    chosen, recall = grid[-1], 0.0
    for value in grid:
        _old_set(index, {key: value})
        _, found = index.search(sample, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
        if recall >= 0.97:
            chosen = value
            break
    params = {**params, key: chosen, "tuned_recall_at_10": round(recall, 4)}
    _old_set(index, params)
    return index, params


def _search_params(index) -> dict[str, int]:
    """The search (and HNSW build) parameters set on a FAISS index, read from the index itself."""
    base = faiss.downcast_index(index.index) if hasattr(index, "index") else faiss.downcast_index(index)
    if hasattr(base, "hnsw"):
        return {"efSearch": base.hnsw.efSearch, "efConstruction": base.hnsw.efConstruction}
    return {"nprobe": base.nprobe} if hasattr(base, "nprobe") else {}


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_factory_indexes_are_the_hand_built_ones(tmp_path: Path, kind: str, metric: str) -> None:
    emb = _emb()
    old, old_params = _old_build(kind, metric, emb.embeddings)
    ix = VideoIndex.build(emb, tmp_path / "ix", type=kind, metric=metric, gpu=False, refine=False)  # as before it
    info = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert info["factory"] == ix.info["factory"] == FACTORY[kind]
    assert info["params"] == old_params  # the same nlist, and the same tuned nprobe / efSearch and recall
    # byte for byte: the same index type, quantizer, training, codes and (serialized) search parameters
    published = (tmp_path / "ix" / f"gen-{info['generation']}" / "index.faiss").read_bytes()
    assert published == faiss.serialize_index(old).tobytes()
    # the index read back from disk has its parameters set through ParameterSpace (through IDMap2 for HNSW)
    assert _search_params(ix._index) == _search_params(old)
    if kind == "hnsw":
        assert _search_params(ix._index) == {"efSearch": old_params["efSearch"], "efConstruction": 80}
    q = l2_normalize(emb.embeddings[:100] + 0.1 * np.random.default_rng(9).normal(size=(100, DIM)))
    old_d, old_i = old.search(q, 10)
    new_d, new_i = ix._index.search(q, 10)
    assert np.array_equal(new_i, old_i) and np.array_equal(new_d, old_d)
    assert [[h.id for h in hs] for hs in ix.search(q, 10)] == [[f"v{r}" for r in row] for row in old_i]
    ix.close()


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_search_parameters_survive_writes_save_and_load(tmp_path: Path, kind: str) -> None:
    emb = _emb(1000)
    ix = VideoIndex.build(emb, tmp_path / "ix", type=kind, gpu=False)
    params, factory = ix.info["params"], ix.info["factory"]
    before = _search_params(ix._index)
    assert before and all(before[k] == params[k] for k in ("nprobe", "efSearch") if k in before)
    ix.add(["new"], emb.embeddings[5:6], ["p"], ["c"], [""])
    ix.remove(["v0", "v1"])  # HNSW: tombstones, so the save rebuilds the graph (_fresh_index)
    ix.save()
    assert _search_params(ix._index) == before
    ix.close()
    again = VideoIndex.load(tmp_path / "ix")
    assert again.info["params"] == params and again.info["factory"] == factory
    assert _search_params(again._index) == before
    top = {h.id for h in again.search(emb.embeddings[5:6], 10)[0]}
    assert {"v5", "new"} <= top and not {"v0", "v1"} & top and again.count == 999
    again.close()


def test_index_json_without_factory_still_loads(tmp_path: Path) -> None:
    """index.json files written before ``factory`` was recorded keep loading, with their search parameters."""
    emb = _emb(1000)
    VideoIndex.build(emb, tmp_path / "ix", type="ivf", gpu=False).close()
    pointer = tmp_path / "ix" / "index.json"
    info = json.loads(pointer.read_text())
    del info["factory"]
    pointer.write_text(json.dumps(info))
    ix = VideoIndex.load(tmp_path / "ix")
    assert _search_params(ix._index) == {"nprobe": info["params"]["nprobe"]}
    assert ix.search(emb.embeddings[3:4], 1)[0][0].id == "v3"
    ix.close()


def test_a_parameter_the_index_lacks_is_skipped_as_before() -> None:
    flat = faiss.index_factory(DIM, "IDMap2,Flat", faiss.METRIC_L2)
    index_mod.apply_params(flat, {"nprobe": 4, "efSearch": 8, "nlist": 3})  # no error: nothing to set
    hnsw = faiss.index_factory(DIM, "IDMap2,HNSW32", faiss.METRIC_L2)
    index_mod.apply_params(hnsw, {"nprobe": 4, "efSearch": 99})
    assert _search_params(hnsw)["efSearch"] == 99


def test_gpu_indexes_get_their_parameters_through_gpu_parameter_space(monkeypatch) -> None:
    """faiss-gpu is not installed here: a fake stands in for its GpuIndex class and GpuParameterSpace."""

    class GpuIndex:
        pass

    calls: list[tuple[str, str, float]] = []

    class GpuParameterSpace:
        def set_index_parameter(self, index, name, value) -> None:
            calls.append((type(index).__name__, name, value))

    fake = SimpleNamespace(GpuIndex=GpuIndex, GpuParameterSpace=GpuParameterSpace, ParameterSpace=faiss.ParameterSpace)
    monkeypatch.setattr(index_mod, "faiss_module", lambda: fake)
    index_mod.apply_params(GpuIndex(), {"nprobe": 5, "nlist": 9, "tuned_recall_at_10": 0.99})
    assert calls == [("GpuIndex", "nprobe", 5)]
    cpu = faiss.index_factory(DIM, "IVF4,Flat", faiss.METRIC_L2)
    index_mod.apply_params(cpu, {"nprobe": 3})  # a CPU index, with faiss-gpu present: ParameterSpace
    assert cpu.nprobe == 3 and len(calls) == 1

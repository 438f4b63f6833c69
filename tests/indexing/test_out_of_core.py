"""The out-of-core build: many .npz files and shard lists, --max-memory, a build within a budget smaller than the
vectors, and indexes opened memory-mapped (read-only)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing.backend import ReadOnlyIndexError
from indexing.embeddings import (
    Embeddings,
    EmbeddingSource,
    l2_normalize,
    save_embeddings,
    write_shard_list,
)
from indexing.errors import UserError
from indexing.faiss_index import VideoIndex
from indexing.planning import choose_type, index_bytes, parse_memory, plan_build
from tests.conftest import run_cli


@pytest.fixture()
def one_thread():
    """FAISS on one OpenMP thread: on a shared, busy machine its threads spin and training takes many times longer."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _data(n: int, dim: int, seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = l2_normalize(centres[rng.integers(0, 50, n)] + 0.3 * rng.normal(size=(n, dim)))
    return Embeddings(
        ids=[f"v{i}" for i in range(n)],
        embeddings=x,
        labels=[f"p{i % 50}" for i in range(n)],
        cameras=[f"c{i % 3}" for i in range(n)],
    )


def _split(emb: Embeddings, folder: Path, parts: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(emb), parts + 1).astype(int)
    return [
        save_embeddings(
            folder / f"part{k}.npz",
            Embeddings(emb.ids[a:b], emb.embeddings[a:b], emb.labels[a:b], emb.cameras[a:b], checkpoint_sha256="ab"),
        )
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def test_max_memory_values_and_the_choice_rule() -> None:
    assert parse_memory("512MB") == 512 and parse_memory("4GB") == 4096 and parse_memory("4G") == 4096
    assert parse_memory("1.5GiB") == 1536 and parse_memory(" 800 m ") == 800 and parse_memory(str(2**21)) == 2
    for bad in ("", "12XB", "-4GB", "GB", "4 GBs", "100KB"):
        with pytest.raises(UserError, match="--max-memory"):
            parse_memory(bad)
    assert choose_type(10_000, 128) == "flat"
    assert choose_type(10_000, 128, memory_budget_mb=2) == "ivfpq"  # flat (5 MiB) does not fit: compressed
    assert choose_type(200_000, 128) == "ivf"  # 99 MiB of vectors fit 4 GiB
    assert choose_type(200_000, 128, memory_budget_mb=50) == "ivfpq"
    with pytest.raises(UserError, match=r"too small for 200000 vectors.*\(IVF-PQ\) takes about 16MB"):
        choose_type(200_000, 128, memory_budget_mb=1)
    plan = plan_build("auto", 1_000_000, 256, 512)  # 977 MiB of vectors in 512 MiB
    work = 512 * 2**20 - index_bytes("ivfpq", 1_000_000, 256)  # 363 MiB besides the 72 MiB of codes and ids (x2)
    assert plan.kind == "ivfpq" and plan.nlist == 2432 and 39 * 2432 <= plan.train_rows <= 256 * 2432  # < 4000
    assert plan.train_rows * 1024 <= work / 4 and plan.chunk_rows * 1024 <= work / 8  # the sample and its residuals
    assert plan_build("auto", 1_000_000, 256, 170).nlist == 187  # lowered: 39 rows per list in a quarter of 28 MiB
    with pytest.raises(UserError, match="too small"):  # the lists of 72 MiB of codes and ids grow to 144 MiB
        plan_build("auto", 1_000_000, 256, 100)


def test_build_within_a_budget_smaller_than_the_vectors_equals_the_in_memory_build(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, dim, budget_mb = 24_000, 64, 3.0
    emb = _data(n, dim)
    raw = emb.embeddings.nbytes  # 5.9 MiB, twice the budget
    files = _split(emb, tmp_path / "parts", 4)
    in_memory = VideoIndex.build(emb, tmp_path / "mem", memory_budget_mb=budget_mb)
    vectors, queries = emb.embeddings, emb.embeddings[::251].copy()
    del emb

    peak = {}
    load = VideoIndex.load

    def measured_load(*args, **kwargs):  # the build's peak, before the index it wrote is opened
        peak["build"] = tracemalloc.get_traced_memory()[1]
        return load(*args, **kwargs)

    monkeypatch.setattr(VideoIndex, "load", measured_load)
    tracemalloc.start()
    try:
        ix = VideoIndex.build(EmbeddingSource.open(files), tmp_path / "ooc", memory_budget_mb=budget_mb, mmap=True)
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    assert ix.type == in_memory.type == "ivfpq" and ix.info["factory"] == in_memory.info["factory"]
    assert peak["build"] < raw / 2, f"the build held {peak['build'] / 2**20:.1f} MiB of {raw / 2**20:.1f} MiB"
    assert ix.info["checkpoint_sha256"] is None and ix.count == n  # the caller (the CLI) passes the sha256
    got, want = ix.search(queries, 10), in_memory.search(queries, 10)
    assert [[(h.id, h.label, h.camera) for h in hs] for hs in got] == [
        [(h.id, h.label, h.camera) for h in hs] for hs in want
    ]
    assert np.allclose([[h.score for h in hs] for hs in got], [[h.score for h in hs] for hs in want], atol=1e-6)
    stored = np.load(tmp_path / "ooc" / "gen-1" / "vectors.npy", mmap_mode="r")
    assert np.array_equal(stored, vectors) and ix.get("v23999").row == n - 1
    assert np.array_equal(ix.vector("v123"), vectors[123])


def _vidret(*args: object) -> tuple[int, str]:
    """The vidret command in this process (as the console entry point parses it): exit code and output."""
    from typer.testing import CliRunner

    from service.cli import app, expand_multi_value_flags

    res = CliRunner().invoke(app, expand_multi_value_flags([str(a) for a in args]))
    if isinstance(res.exception, UserError):
        return 1, f"error: {res.exception}"
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_cli_builds_from_files_shard_lists_and_folders(tmp_path: Path) -> None:
    emb = _data(600, 16)
    files = _split(emb, tmp_path / "shards", 3)
    write_shard_list(tmp_path / "shards", [f.name for f in files], {"count": 600})
    res = run_cli("index", "build", "--embeddings", *files, "--out", tmp_path / "files", "--max-memory", "64MB")
    assert res.returncode == 0 and "of 600 vectors from 3 files" in res.stdout, res.stderr
    for name, given in {"folder": tmp_path / "shards", "list": tmp_path / "shards" / "shards.json"}.items():
        code, out = _vidret("index", "build", "--embeddings", given, "--out", tmp_path / name)
        assert code == 0, out
    for name in ("files", "folder", "list"):
        ix = VideoIndex.load(tmp_path / name)
        assert ix.count == 600 and ix.checkpoint_sha256 == "ab" and ix.get("v599").label == "p49"
        assert ix.search(emb.embeddings[5], 1)[0][0].id == "v5"
        ix.close()
    code, out = _vidret("index", "build", "--embeddings", files[0], "--out", tmp_path / "d", "--max-memory", "12XB")
    assert code == 1 and "--max-memory '12XB': not a size" in out
    code, out = _vidret("index", "build", "--embeddings", files[0], files[0], "--out", tmp_path / "e")
    assert code == 1 and "duplicate id 'v0'" in out and "part0.npz" in out
    files[1].unlink()
    res = run_cli("index", "build", "--embeddings", tmp_path / "shards", "--out", tmp_path / "f")
    assert res.returncode == 1 and "part1.npz is missing" in res.stderr and "Traceback" not in res.stderr


def test_files_that_disagree_are_refused(tmp_path: Path) -> None:
    a = save_embeddings(tmp_path / "a.npz", _data(10, 8))
    b = save_embeddings(tmp_path / "b.npz", Embeddings(["x"], l2_normalize(np.ones((1, 4))), ["l"], ["c"]))
    with pytest.raises(UserError, match="b.npz: embeddings of dimension 4, but .*a.npz has 8"):
        EmbeddingSource.open([a, b])
    bad = _data(10, 8, seed=1)
    bad.ids = np.array([f"w{i}" for i in range(10)])
    bad.embeddings[3] *= 2
    c = save_embeddings(tmp_path / "c.npz", bad)
    with pytest.raises(UserError, match=r"c.npz: embedding of id 'w3' \(row 3\) is not L2-normalised"):
        VideoIndex.build(EmbeddingSource.open([a, c]), tmp_path / "ix")
    assert not (tmp_path / "ix").exists()
    other = Embeddings(["z"], l2_normalize(np.ones((1, 8))), ["l"], ["c"], checkpoint_sha256="cd")
    d = save_embeddings(tmp_path / "d.npz", other)
    e = save_embeddings(tmp_path / "e.npz", Embeddings(["y"], l2_normalize(np.ones((1, 8))), ["l"], ["c"], None, "ef"))
    with pytest.raises(UserError, match="different checkpoints"):
        EmbeddingSource.open([d, e])


def test_an_mmapped_index_searches_like_a_loaded_one_and_refuses_writes(tmp_path: Path, one_thread: None) -> None:
    emb = _data(3000, 16)
    VideoIndex.build(emb, tmp_path / "ix", type="ivf").close()
    loaded, mapped = VideoIndex.load(tmp_path / "ix"), VideoIndex.load(tmp_path / "ix", mmap=True)
    invlists = faiss.extract_index_ivf(mapped._index).invlists
    assert isinstance(faiss.downcast_InvertedLists(invlists), faiss.OnDiskInvertedLists)  # mapped, not read
    assert isinstance(mapped._vec_by_row._vectors, np.memmap) and mapped.read_only and not loaded.read_only
    q = emb.embeddings[::97]
    assert [[h.id for h in hs] for hs in mapped.search(q, 5)] == [[h.id for h in hs] for hs in loaded.search(q, 5)]
    assert np.array_equal(mapped.vector("v42"), emb.embeddings[42])
    assert np.array_equal(mapped.snapshot()[1], loaded.snapshot()[1])
    with pytest.raises(ReadOnlyIndexError, match="read-only"):
        mapped.add(["new"], emb.embeddings[:1], ["l"], ["c"], [""])
    with pytest.raises(ReadOnlyIndexError):
        mapped.remove(["v1"])
    assert mapped.count == 3000 and mapped.get("v1") is not None
    mapped.close()
    loaded.remove(["v1"])  # in the journal, not yet in a snapshot
    loaded.close()
    with pytest.raises(UserError, match="1 adds/removes are in the journal .* open it once without --mmap"):
        VideoIndex.load(tmp_path / "ix", mmap=True)
    again = VideoIndex.load(tmp_path / "ix")
    again.save()
    again.close()
    mapped = VideoIndex.load(tmp_path / "ix", mmap=True)
    assert mapped.count == 2999 and mapped.get("v1") is None and mapped.search(q[:1], 1)[0][0].id == "v0"
    mapped.close()

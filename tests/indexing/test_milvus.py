"""The Milvus backend against milvus-lite 2.5 (a local-file URI runs the Milvus 2.5 engine in a subprocess): build
(CLI and API), replacement through the record, the VideoIndex interface (get, vector, ids, page, snapshot, search,
add, remove), its errors, durability across kill -9, and the same answers as the FAISS index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexing.backend import DuplicateIdError, UnknownIdError
from indexing.embeddings import Embeddings, l2_normalize, save_embeddings
from indexing.errors import UserError
from indexing.faiss_index import VideoIndex
from indexing.milvus import MilvusIndex
from tests.conftest import run_cli


def _emb(n: int, dim: int = 16, seed: int = 0, prefix: str = "v") -> Embeddings:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return Embeddings(
        ids=np.array([f"{prefix}{i}" for i in range(n)]),
        embeddings=l2_normalize(x).astype(np.float32),
        labels=np.array([f"p{i % 7}" for i in range(n)]),
        cameras=np.array([f"c{i % 3}" for i in range(n)]),
        paths=np.array([f"/videos/{i}.mp4" for i in range(n)]),
        checkpoint_sha256="ab" * 32,
    )


def test_cli_build_then_the_index_interface(tmp_path: Path) -> None:
    emb = _emb(60)
    save_embeddings(tmp_path / "g.npz", emb)
    db = tmp_path / "m.db"
    args = ["index", "build", "--embeddings", tmp_path / "g.npz", "--backend", "milvus", "--milvus-uri", db]
    res = run_cli(*args, "--milvus-collection", "gal")
    assert res.returncode == 0, res.stderr
    assert "built Milvus FLAT collection 'gal'" in res.stdout and "of 60 vectors, dim 16, cosine" in res.stdout
    res = run_cli(*args, "--milvus-collection", "gal")  # exists: refused, names the flag
    assert res.returncode == 1 and "--milvus-collection gal: the collection exists" in res.stderr
    assert "--overwrite" in res.stderr
    save_embeddings(tmp_path / "more.npz", _emb(5, prefix="w", seed=3))  # several files: inserted in order
    res = run_cli(*args, "--embeddings", tmp_path / "more.npz", "--milvus-collection", "two", "--type", "ivf")
    assert res.returncode == 0 and "built Milvus IVF_FLAT collection 'two'" in res.stdout, res.stderr
    assert "of 65 vectors" in res.stdout
    two = MilvusIndex.open(str(db), "two")
    assert two.ids()[-6:] == ["v59", *(f"w{i}" for i in range(5))] and two.type == "ivf"
    assert two.search(emb.embeddings[:1], 3)[0][0].id == "v0"  # IVF finds the vector itself
    two.close()
    res = run_cli(*args, "--milvus-collection", "three", "--type", "hnsw")  # milvus-lite builds FLAT and IVF_FLAT only
    assert res.returncode == 1 and "--type hnsw: milvus-lite (a local .db URI) builds only flat and ivf" in res.stderr
    ix = MilvusIndex.open(str(db), "gal")
    try:
        assert (ix.count, ix.dim, ix.type, ix.metric, ix.checkpoint_sha256) == (60, 16, "flat", "cosine", "ab" * 32)
        assert ix.ids() == [f"v{i}" for i in range(60)]  # build order
        m = ix.get("v7")
        assert (m.label, m.camera, m.path) == ("p0", "c1", "/videos/7.mp4") and ix.get("nope") is None
        np.testing.assert_allclose(ix.vector("v7"), emb.embeddings[7], atol=1e-7)
        metas, vecs = ix.snapshot()
        assert [x.id for x in metas] == ix.ids()
        np.testing.assert_allclose(vecs, emb.embeddings, atol=1e-7)
    finally:
        ix.close()


@pytest.mark.parametrize(
    "extra,needle",
    [
        ([], "--milvus-uri is required"),
        (["--milvus-uri", "/no/such/dir/m.db"], "--milvus-uri /no/such/dir/m.db"),
        (["--milvus-uri", "{db}", "--milvus-collection", "bad-name"], "--milvus-collection 'bad-name'"),
    ],
)
def test_cli_build_errors_name_the_flag(tmp_path: Path, extra: list[str], needle: str) -> None:
    save_embeddings(tmp_path / "g.npz", _emb(5))
    extra = [e.replace("{db}", str(tmp_path / "m.db")) for e in extra]
    res = run_cli("index", "build", "--embeddings", tmp_path / "g.npz", "--backend", "milvus", *extra)
    assert res.returncode == 1 and needle in res.stderr and "Traceback" not in res.stderr


def test_add_remove_have_the_faiss_semantics(tmp_path: Path) -> None:
    """409-style duplicates and 404-style unknown ids, as VideoIndex; ids with quotes and backslashes are plain ids
    (a would-be expression injection finds nothing), and adds come after the built entries in ids()."""
    emb = _emb(30)
    ix = MilvusIndex.build(emb, str(tmp_path / "m.db"), "gal", type="flat")
    fx = VideoIndex.build(emb, tmp_path / "faiss", type="flat")
    try:
        for index in (ix, fx):
            with pytest.raises(DuplicateIdError, match="'v3' already exists"):
                index.add(["v3"], emb.embeddings[:1], ["x"], ["c"], [""])
            with pytest.raises(DuplicateIdError):
                index.add(["n1", "n1"], emb.embeddings[:2], ["x", "x"], ["c", "c"], ["", ""])
            with pytest.raises(UnknownIdError, match="unknown id 'nope'"):
                index.remove(["v1", "nope"])
            with pytest.raises(UserError, match="dimension 16"):
                index.add(["n2"], np.ones((1, 8), np.float32), ["x"], ["c"], [""])
        assert ix.count == 30 and ix.get("v1") is not None and ix.get("n1") is None  # nothing half-done
        odd = ['q"uote', "back\\slash\\", 'v1" or id != "']
        ix.add(odd, emb.embeddings[:3] * -1, ["a", "b", "c"], ["x", "y", "z"], ["", "", ""])
        assert ix.ids()[-3:] == odd and ix.count == 33 and ix.dirty
        assert ix.get('v1" or id != "').label == "c" and ix.get('v9" or id != "') is None
        with pytest.raises(UserError, match="line break"):  # ids are looked up through expressions
            ix.add(["n\n1"], emb.embeddings[:1], ["x"], ["c"], [""])
        assert ix.get("n\n1") is None and ix.vector("v1\n") is None
        np.testing.assert_allclose(ix.vector("back\\slash\\"), -emb.embeddings[1], atol=1e-7)
        ix.remove(['q"uote', 'v1" or id != "'])
        assert ix.count == 31 and ix.get("v1") is not None and ix.ids()[-1] == "back\\slash\\"
        with pytest.raises(UnknownIdError):
            ix.remove(['q"uote'])
        ix.save()
        assert not ix.dirty
    finally:
        ix.close()
        fx.close()


def test_search_equals_faiss_for_cosine_and_l2(tmp_path: Path) -> None:
    emb = _emb(80)
    q = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    for metric in ("cosine", "l2"):
        ix = MilvusIndex.build(emb, str(tmp_path / f"{metric}.db"), "gal", type="flat", metric=metric)
        fx = VideoIndex.build(emb, tmp_path / metric, type="flat", metric=metric)
        try:
            excl = ["v0", None, "v2", None, "v4"]
            for a, b in zip(ix.search(q, 7, exclude_ids=excl), fx.search(q, 7, exclude_ids=excl)):
                assert [h.id for h in a] == [h.id for h in b]
                assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
                assert [(h.label, h.camera) for h in a] == [(h.label, h.camera) for h in b]
            assert len(ix.search(q[:1], 500)[0]) == 80  # k past the count: every entry
            with pytest.raises(UserError, match="dimension 3"):
                ix.search(np.ones((1, 3), np.float32), 2)
        finally:
            ix.close()
            fx.close()


def test_overwrite_and_a_failed_build_keep_the_collection(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    MilvusIndex.build(_emb(10), db, "gal", type="flat").close()
    bad = [_emb(5, prefix="a"), _emb(5, dim=8, prefix="b")]  # the second shard has another dimension
    with pytest.raises(UserError, match="differ in dimension"):
        MilvusIndex.build(iter(bad), db, "gal", overwrite=True)
    with pytest.raises(UserError, match="duplicate id 'a0'"):
        MilvusIndex.build([_emb(5, prefix="a"), _emb(3, prefix="a")], db, "gal", overwrite=True)
    ix = MilvusIndex.open(db, "gal")
    assert ix.count == 10 and sorted(ix.client.list_collections()) == ["gal", ix.data]  # no half-built data left
    ix.close()
    ix = MilvusIndex.build([_emb(5, prefix="a"), _emb(4, prefix="b", seed=1)], db, "gal", overwrite=True)
    assert ix.count == 9 and ix.ids() == [*(f"a{i}" for i in range(5)), *(f"b{i}" for i in range(4))]
    assert sorted(ix.client.list_collections()) == ["gal", ix.data]  # the replaced data collection is dropped
    ix.close()
    with pytest.raises(UserError, match="no such collection"):
        MilvusIndex.open(db, "other")


KILLER = """
import os, sys
import numpy as np
from indexing.milvus import MilvusIndex
ix = MilvusIndex.open(sys.argv[1], "gal")
if sys.argv[2] == "add":
    ix.add(["durable"], np.ones((1, 16), np.float32) / 4, ["p"], ["c"], [""])
else:
    ix.remove(["v3"])
print("returned", flush=True)
os.kill(os.getpid(), 9)
"""


def test_an_acknowledged_add_or_remove_survives_kill_9(tmp_path: Path) -> None:
    """Durability is Milvus's: what milvus-lite acknowledged is there after a kill -9, without a flush. (Each step
    runs in its own process: milvus-lite serves a database file to one process at a time.)"""
    db = str(tmp_path / "m.db")
    save_embeddings(tmp_path / "g.npz", _emb(50))
    res = run_cli("index", "build", "--embeddings", tmp_path / "g.npz", "--backend", "milvus", "--milvus-uri", db,
                  "--milvus-collection", "gal")  # fmt: skip
    assert res.returncode == 0, res.stderr
    for op in ("add", "remove"):
        res = subprocess.run([sys.executable, "-c", KILLER, db, op], capture_output=True, text=True, timeout=120)
        assert res.returncode == -9 and "returned" in res.stdout, res.stderr
    ix = MilvusIndex.open(db, "gal")
    try:
        assert ix.get("durable") is not None and ix.get("v3") is None and ix.count == 50
        assert ix.search(np.ones((1, 16), np.float32) / 4, 1)[0][0].id == "durable"
    finally:
        ix.close()


def test_listing_pages_by_escaped_id_cursor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ids() and snapshot() read the collection in batches after the last id; ids with quotes and backslashes at
    batch boundaries neither break the cursor expression nor lose or repeat entries."""
    import indexing.milvus as milvus

    monkeypatch.setattr(milvus, "ITER_BATCH", 3)
    emb = _emb(10)
    emb.ids = np.array(
        ['a"', 'a"b', "a\\", "a\\\\", 'b" or id != "', "c", "'", "d e", "é", "z"]
    )  # (no "" or tab: ids.py)
    ix = MilvusIndex.build(emb, str(tmp_path / "m.db"), "gal", type="flat")
    try:
        assert ix.ids() == list(emb.ids)  # all, once each, in build order
        metas, vecs = ix.snapshot()
        assert [m.id for m in metas] == list(emb.ids)
        np.testing.assert_allclose(vecs, emb.embeddings, atol=1e-7)
    finally:
        ix.close()


def test_a_served_index_survives_a_failed_rebuild_and_follows_a_good_one(tmp_path: Path) -> None:
    """milvus-lite 2.5 has no alias or rename: a rebuild fills a new data collection and then switches the record.
    A failed one leaves the served index answering as before; after a good one, the open index answers from the
    new data on its next request (its old data collection is gone)."""
    db = str(tmp_path / "m.db")
    served = MilvusIndex.build(_emb(10), db, "gal", type="flat")
    try:
        before = served.data
        with pytest.raises(UserError, match="differ in dimension"):
            MilvusIndex.build(iter([_emb(5, prefix="a"), _emb(5, dim=8, prefix="b")]), db, "gal", overwrite=True)
        assert (
            served.ids() == [f"v{i}" for i in range(10)] and served.search(_emb(10).embeddings[:1], 1)[0][0].id == "v0"
        )
        MilvusIndex.build(_emb(4, prefix="n", seed=2), db, "gal", type="ivf", overwrite=True).close()
        assert served.count == 4 and served.data != before and served.type == "ivf"
        assert [h.id for h in served.search(_emb(4, prefix="n", seed=2).embeddings[:1], 1)[0]] == ["n0"]
        assert served.client.has_collection(before) is False
    finally:
        served.close()


def test_a_foreign_collection_is_not_replaced(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    ix = MilvusIndex.build(_emb(3), db, "gal", type="flat")
    try:
        with pytest.raises(UserError, match="not a vidret collection"):
            MilvusIndex.build(_emb(3), db, ix.data, type="flat", overwrite=True)  # a data collection, not a record
        with pytest.raises(UserError, match="not a vidret collection"):
            MilvusIndex.open(db, ix.data)
        assert ix.count == 3
    finally:
        ix.close()


@pytest.mark.parametrize("slack", [1, 2048])
def test_page_equals_slices_of_ids_on_both_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack: int
) -> None:
    """page(offset, limit) is ids()[offset:offset + limit] as metadata, after adds (rows are times) and removes
    (gaps); with a slack of 1 Milvus pages through the row search, and reads only about the page."""
    import indexing.milvus as milvus

    monkeypatch.setattr(milvus, "PAGE_SLACK", slack)
    emb = _emb(40)
    ix = MilvusIndex.build(emb, str(tmp_path / "m.db"), "gal", type="flat")
    fx = VideoIndex.build(emb, tmp_path / "faiss", type="flat")
    try:
        for index in (ix, fx):
            index.remove(["v0", "v17", "v39"])
            for i in range(6):  # one at a time: each add gets its own time
                index.add([f"n{i}"], emb.embeddings[i : i + 1], ["x"], ["c"], [""])
            index.remove(["n2"])
        assert ix.ids() == fx.ids() and len(ix.ids()) == 42
        read: list[dict] = []
        real = ix._iterate

        def counting(fields: list[str], where: str = ""):
            for e in real(fields, where):
                read.append(e)
                yield e

        monkeypatch.setattr(ix, "_iterate", counting)
        for offset, limit in [(0, 5), (3, 10), (30, 7), (36, 100), (41, 1), (42, 3), (0, None), (10, None)]:
            want = fx.ids()[offset : None if limit is None else offset + limit]
            for index in (ix, fx):
                read.clear()
                got = index.page(offset, limit)
                assert [m.id for m in got] == want, (type(index).__name__, offset, limit)
                assert all(m == index.get(m.id) for m in got)
            if slack == 1 and limit is not None:
                assert len(read) <= len(want) + 2  # the page and at most one row either side
    finally:
        ix.close()
        fx.close()


def test_closing_stops_the_milvus_lite_server(tmp_path: Path) -> None:
    """milvus-lite runs a server process per database file; closing the last index of this process on the file
    stops it and removes its lock, so a test session does not pile up servers, and another process can open it."""
    import psutil

    db = tmp_path / "m.db"
    a = MilvusIndex.build(_emb(5), str(db), "gal", type="flat")
    b = MilvusIndex.open(str(db), "gal")
    servers = [p for p in psutil.Process().children(recursive=True) if str(db) in " ".join(p.cmdline())]
    assert len(servers) == 1 and (tmp_path / ".m.db.lock").exists()
    a.close()
    assert servers[0].is_running() and b.count == 5  # still used by b
    b.close()
    b.close()  # twice is harmless
    psutil.wait_procs(servers, timeout=10)
    assert not servers[0].is_running() and not (tmp_path / ".m.db.lock").exists()
    res = subprocess.run(
        [sys.executable, "-c", f"from indexing.milvus import MilvusIndex; print(MilvusIndex.open({str(db)!r}, 'gal').count)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "5", res.stderr

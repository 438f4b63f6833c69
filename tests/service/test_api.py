"""Every route of docs/api.md against create_app: status codes, error bodies, auth, limits; never a 5xx."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

KEY = "s3cret"


def _client(served: dict, checkpoint: Path | None, **kw) -> TestClient:
    settings = Settings(**served, checkpoint=checkpoint, device="cpu", **kw)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


@pytest.fixture()
def client(served: dict, checkpoint: Path):
    """The app on each backend (conftest ``served``: the FAISS index folder, then a milvus-lite collection)."""
    with _client(served, checkpoint, api_key=KEY, max_upload_mb=1, max_k=50) as c:
        yield c


@pytest.fixture(scope="module")
def video(synth_dir: Path) -> Path:
    return synth_dir / "videos" / "id0008" / "c2_s1.mp4"


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_health_ready_index_metrics(client: TestClient, checkpoint: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    info = client.get("/v1/index").json()
    assert info["count"] == 18 and info["dim"] == 32 and info["type"] == "flat" and info["metric"] == "cosine"
    assert len(info["model"]["sha256"]) == 64 and info["created"]
    client.post("/v1/search", json={"id": "nope"})
    text = client.get("/metrics").text
    assert 'vidret_requests_total{method="POST",route="/v1/search",status="404"} 1.0' in text
    assert "vidret_request_seconds_bucket" in text and "vidret_index_size 18.0" in text


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_not_ready_answers_503(tmp_path: Path, backend: str) -> None:
    milvus = {"backend": "milvus", "milvus_uri": str(tmp_path / "empty.db"), "milvus_collection": "missing"}
    app = create_app(
        Settings(index=tmp_path / "missing", **(milvus if backend == "milvus" else {})), load_in_background=False
    )
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and "failed to load" in r.json()["detail"]
        assert c.post("/v1/search", json={"id": "x"}).status_code == 503


def test_search_by_id_embedding_and_batch(client: TestClient) -> None:
    ids = [v["id"] for v in client.get("/v1/videos").json()["videos"]]
    r = client.post("/v1/search", json={"id": ids[0], "k": 5})
    assert r.status_code == 200
    hits = r.json()["results"]
    assert len(hits) == 5 and ids[0] not in [h["id"] for h in hits] and r.json()["took_ms"] >= 0
    assert hits == sorted(hits, key=lambda h: -h["score"])
    assert (
        client.post("/v1/search", json={"id": ids[0], "k": 3, "exclude_self": False}).json()["results"][0]["id"]
        == ids[0]
    )
    vec = np.random.default_rng(0).normal(size=32).tolist()
    assert len(client.post("/v1/search", json={"embedding": vec, "k": 4}).json()["results"]) == 4
    batch = client.post("/v1/search/batch", json={"queries": [{"id": ids[1]}, {"embedding": vec}], "k": 2}).json()
    assert [len(r) for r in batch["results"]] == [2, 2]


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"id": "nope"}, 404, "unknown video id 'nope'"),
        ({"embedding": [0.1, 0.2]}, 422, "2 values, the index has dimension 32"),
        ({"embedding": [0.0] * 32}, 422, "non-zero"),
        ({"id": "x", "embedding": [1.0]}, 422, "exactly one of"),
        ({}, 422, "exactly one of"),
        ({"id": "x", "k": 0}, 422, "k"),
        ({"id": "x", "k": 51}, 422, "VIDRET_MAX_K=50"),
        ({"id": "x", "colour": "red"}, 422, "colour"),
    ],
)
def test_search_errors(client: TestClient, body: dict, status: int, needle: str) -> None:
    r = client.post("/v1/search", json=body)
    assert r.status_code == status and needle in r.json()["detail"]


def test_malformed_json_and_wrong_types_are_4xx(client: TestClient) -> None:
    r = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    assert client.post("/v1/search", json=[1, 2]).status_code == 422
    assert client.post("/v1/search/batch", json={"queries": []}).status_code == 422
    assert client.post("/v1/evaluate", json={"ks": [0], "all": True}).status_code == 422


def test_upload_search_matches_vidret_embed(client: TestClient, video: Path, embeddings: dict[str, Path]) -> None:
    with open(video, "rb") as fh:
        r = client.post("/v1/search/video", files={"file": ("clip.mp4", fh, "video/mp4")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["id"] == "id0008_c2_s1" and top["score"] == pytest.approx(1.0, abs=1e-5)  # the same vector


def test_add_get_thumbnail_delete_with_auth(client: TestClient, video: Path) -> None:
    def add(headers: dict, vid: str = "added1"):
        with open(video, "rb") as fh:
            return client.post(
                "/v1/videos",
                files={"file": ("a.mp4", fh, "video/mp4")},
                data={"id": vid, "label": "p", "camera": "c9"},
                headers=headers,
            )

    assert add({}).status_code == 401
    assert add({"Authorization": "Bearer wrong"}).status_code == 403
    r = add(AUTH)
    assert r.status_code == 201 and r.json()["label"] == "p" and r.json()["camera"] == "c9"
    assert add(AUTH).status_code == 409
    assert client.get("/v1/videos/added1").json()["id"] == "added1"
    thumb = client.get("/v1/videos/added1/thumbnail")
    assert (
        thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    )
    hits = client.post("/v1/search", json={"id": "id0008_c2_s1", "k": 1}).json()["results"]
    assert hits[0]["id"] == "added1"
    assert client.delete("/v1/videos/added1").status_code == 401
    assert client.delete("/v1/videos/added1", headers={"Authorization": "Bearer x"}).status_code == 403
    assert client.delete("/v1/videos/added1", headers=AUTH).status_code == 204
    assert client.delete("/v1/videos/added1", headers=AUTH).status_code == 404
    assert client.get("/v1/videos/added1").status_code == 404
    assert client.get("/v1/videos/added1/thumbnail").status_code == 404


def test_upload_limits_and_non_videos(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "big.mp4").write_bytes(b"\x00\x00\x00\x18ftyp" + b"0" * (2 << 20))
    with open(tmp_path / "big.mp4", "rb") as fh:
        r = client.post("/v1/search/video", files={"file": ("big.mp4", fh, "video/mp4")})
    assert r.status_code == 413 and "VIDRET_MAX_UPLOAD_MB" in r.json()["detail"]
    r = client.post("/v1/search/video", files={"file": ("notes.mp4", b"hello, I am text", "video/mp4")})
    assert r.status_code == 415
    r = client.post("/v1/search/video", files={"file": ("trunc.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)})
    assert r.status_code == 415 and "cannot be decoded" in r.json()["detail"]
    r = client.post("/v1/videos", files={"file": ("x.txt", b"text")}, data={"id": "z"}, headers=AUTH)
    assert r.status_code == 415
    assert client.post("/v1/search/video", data={"k": "3"}).status_code == 422


def test_uploads_need_a_checkpoint(served: dict, video: Path) -> None:
    with _client(served, None) as c:
        with open(video, "rb") as fh:
            r = c.post("/v1/search/video", files={"file": ("a.mp4", fh, "video/mp4")})
        assert r.status_code == 409 and "--checkpoint" in r.json()["detail"]
        assert c.get("/v1/index").json()["model"] is None


def test_evaluate_over_the_indexed_gallery(client: TestClient, embeddings: dict[str, Path]) -> None:
    from indexing.embeddings import load_embeddings
    from indexing.metrics import evaluate_retrieval

    g = load_embeddings(embeddings["gallery"])
    expected = evaluate_retrieval(g.embeddings, g.ids, g.labels, g.cameras, g.embeddings, g.ids, g.labels, g.cameras)
    r = client.post("/v1/evaluate", json={"all": True})
    body, want = r.json(), expected.to_json()
    assert r.status_code == 200 and body["mAP"] == pytest.approx(want["mAP"])
    assert body["cmc"] == pytest.approx(want["cmc"]) and body["num_queries"] == want["num_queries"] == 18
    r = client.post("/v1/evaluate", json={"query_ids": [str(g.ids[0])], "ks": [1, 3]})
    assert set(r.json()["cmc"]) == {"1", "3"} and r.json()["num_queries"] + r.json()["skipped"] == 1
    assert client.post("/v1/evaluate", json={"query_ids": ["nope"]}).status_code == 404
    assert client.post("/v1/evaluate", json={}).status_code == 422


def test_searches_stay_consistent_during_adds_and_deletes(client: TestClient, video: Path) -> None:
    ids = [v["id"] for v in client.get("/v1/videos").json()["videos"]]
    errors: list[str] = []
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            r = client.post("/v1/search", json={"id": ids[0], "k": 5})
            if r.status_code != 200 or len({h["id"] for h in r.json()["results"]}) != 5:
                errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    data = video.read_bytes()
    for i in range(6):
        r = client.post("/v1/videos", files={"file": ("a.mp4", data, "video/mp4")}, data={"id": f"c{i}"}, headers=AUTH)
        assert r.status_code == 201, r.text
        if i % 2:
            assert client.delete(f"/v1/videos/c{i - 1}", headers=AUTH).status_code == 204
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert client.get("/v1/index").json()["count"] == 18 + 3


def test_web_page(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/v1/search/video" in r.text and "/thumbnail" in r.text


def _assert_same_ranking(
    body: dict,
    got: list[dict],
    expected: list[dict],
    wider: list[dict],
    tol: float = 1e-5,
) -> None:
    """``got`` answers ``body`` as ``expected`` does. A batched index call (a matrix product) rounds scores
    differently from a single one, so items whose scores tie within ``tol`` may swap places, and at the k-th place
    another member of the same tie may stand in (``wider`` is the uncoalesced answer with a larger k)."""
    assert len(got) == len(expected) == body["k"]
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in expected], abs=tol)
    if body["exclude_self"]:
        assert body["id"] not in {h["id"] for h in got}
    wide = {h["id"]: h["score"] for h in wider}
    start = 0
    for end in range(1, len(expected) + 1):  # runs of expected hits with equal scores (within tol)
        if end < len(expected) and expected[end]["score"] >= expected[end - 1]["score"] - tol:
            continue
        got_ids, exp_ids = [h["id"] for h in got[start:end]], [h["id"] for h in expected[start:end]]
        if end < len(expected) or end >= len(wider) or wider[end]["score"] < expected[end - 1]["score"] - tol:
            assert sorted(got_ids) == sorted(exp_ids)  # a tie that k does not cut: the same members
        else:  # the tie runs past k: any of its members may fill the last places
            assert all(i in wide and abs(wide[i] - h["score"]) <= tol for i, h in zip(got_ids, got[start:end]))
        start = end


def test_concurrent_searches_are_coalesced_with_each_requests_own_k_and_exclusion(served: dict) -> None:
    """Searches waiting while the index is busy share one index call; every request still gets exactly its own
    answer (its k, its self-exclusion) -- the same as with coalescing switched off."""
    with _client(served, None, search_coalesce=1) as direct:
        ids = [v["id"] for v in direct.get("/v1/videos").json()["videos"]]
        bodies = [
            {"id": ids[i % len(ids)], "k": 1 + i % 7, "exclude_self": i % 3 != 0} for i in range(32)
        ]  # fewer than anyio's 40 worker threads: all wait at once
        expected = [direct.post("/v1/search", json=b).json()["results"] for b in bodies]
        wider = [direct.post("/v1/search", json={**b, "k": b["k"] + 5}).json()["results"] for b in bodies]
        assert direct.app.state.vidret.searcher is None
    with _client(served, None) as c:
        state = c.app.state.vidret
        original = state.index.search
        busy, release = threading.Event(), threading.Event()
        first_call = []  # the queries the first (held) index call answers

        def held_search(*args, **kwargs):
            if not busy.is_set():
                first_call.append(len(args[0]))
                busy.set()
                assert release.wait(60)
            return original(*args, **kwargs)

        state.index.search = held_search
        got: list = [None] * len(bodies)

        def ask(i: int) -> None:
            got[i] = c.post("/v1/search", json=bodies[i]).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        assert busy.wait(60)
        deadline = time.monotonic() + 60  # every other request waits in the queue while the first call runs
        while state.searcher._queue.qsize() < len(bodies) - first_call[0]:
            assert time.monotonic() < deadline, f"only {state.searcher._queue.qsize()} requests queued"
            time.sleep(0.01)
        release.set()
        for t in threads:
            t.join()
        for body, g, e, w in zip(bodies, got, expected, wider, strict=True):
            _assert_same_ranking(body, g["results"], e, w)
        assert state.searcher.items == len(bodies) and state.searcher.batches == 2  # the held call, then the rest


def test_list_get_and_files_of_built_videos(client: TestClient, embeddings: dict[str, Path]) -> None:
    """Listing pages through the index in build order (on Milvus too), `q` matches ids and labels, and a built
    video's metadata, thumbnail and file are served."""
    from indexing.embeddings import load_embeddings

    g = load_embeddings(embeddings["gallery"])
    body = client.get("/v1/videos", params={"offset": 2, "limit": 5}).json()
    assert body["total"] == 18 and [v["id"] for v in body["videos"]] == [str(i) for i in g.ids[2:7]]
    label = str(g.labels[3])
    found = client.get("/v1/videos", params={"q": label}).json()
    assert found["total"] == int((g.labels == label).sum()) and {v["label"] for v in found["videos"]} == {label}
    vid = str(g.ids[3])
    meta = client.get(f"/v1/videos/{vid}").json()
    assert meta["label"] == label and meta["camera"] == str(g.cameras[3]) and not meta["path"].startswith("/")
    thumb = client.get(f"/v1/videos/{vid}/thumbnail")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    r = client.get(f"/v1/videos/{vid}/video", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and len(r.content) == 10


def _expected(g, q: np.ndarray, k: int, flt: dict, skip: str | None) -> list[str]:
    """Brute force: the ids of the k best inner products among the gallery entries matching ``flt``."""
    keep = [
        i
        for i in range(len(g.ids))
        if ("label" not in flt or g.labels[i] == flt["label"])
        and ("camera" not in flt or g.cameras[i] == flt["camera"])
        and ("exclude_camera" not in flt or g.cameras[i] != flt["exclude_camera"])
        and g.ids[i] != skip
    ]
    scores = g.embeddings[keep] @ q
    return [str(g.ids[keep[j]]) for j in np.argsort(-scores, kind="stable")[:k]]


def test_search_filters_equal_brute_force(client: TestClient, embeddings: dict[str, Path]) -> None:
    """`filter` on search by id, by embedding and in a batch: the hits are those of brute force over the matching
    videos; k above the number of matches gives the matches; a filter matching nothing gives 200 and no hits."""
    from indexing.embeddings import load_embeddings

    g = load_embeddings(embeddings["gallery"])
    vid, cam, label = str(g.ids[0]), str(g.cameras[0]), str(g.labels[4])
    filters = [
        {"label": label},
        {"camera": cam},
        {"exclude_camera": cam},
        {"label": str(g.labels[0]), "exclude_camera": cam},
        {"label": label, "camera": cam, "exclude_camera": None},
        {"label": "nobody"},
    ]
    for flt in filters:
        want = {k: v for k, v in flt.items() if v is not None}
        r = client.post("/v1/search", json={"id": vid, "k": 50, "filter": flt})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["results"]] == _expected(g, g.embeddings[0], 50, want, vid)
        r = client.post("/v1/search", json={"embedding": g.embeddings[5].tolist(), "k": 2, "filter": flt})
        assert [h["id"] for h in r.json()["results"]] == _expected(g, g.embeddings[5], 2, want, None)
        batch = client.post(
            "/v1/search/batch", json={"queries": [{"id": vid}, {"id": str(g.ids[9])}], "k": 3, "filter": flt}
        ).json()["results"]
        assert [[h["id"] for h in hs] for hs in batch] == [
            _expected(g, g.embeddings[0], 3, want, vid),
            _expected(g, g.embeddings[9], 3, want, str(g.ids[9])),
        ]
    assert client.post("/v1/search", json={"id": vid, "filter": {"label": "nobody"}}).json()["results"] == []


@pytest.mark.parametrize(
    "flt,needle",
    [
        ({"colour": "red"}, "colour"),
        ({"label": 3}, "label"),
        ({"camera": ["c1"]}, "camera"),
        ({"label": "two\nlines"}, "line break"),
        ("c1", "filter"),
    ],
)
def test_bad_filters_are_422(client: TestClient, flt, needle: str) -> None:
    r = client.post("/v1/search", json={"embedding": [1.0] * 32, "filter": flt})
    assert r.status_code == 422 and needle in r.json()["detail"]
    r = client.post("/v1/search/batch", json={"queries": [{"embedding": [1.0] * 32}], "filter": flt})
    assert r.status_code == 422


def test_upload_search_and_quoted_labels_with_filters(client: TestClient, video: Path) -> None:
    """The upload search takes the filter as a JSON form field. A label with quotes and backslashes is matched
    exactly: it breaks nothing and adds no condition (a would-be injection matches no video)."""
    data = video.read_bytes()
    tricky = 'say "hi" \\ or label != "'
    r = client.post(
        "/v1/videos",
        files={"file": ("a.mp4", data, "video/mp4")},
        data={"id": "tricky1", "label": tricky, "camera": 'c"9'},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text

    def upload_search(flt: str | None) -> dict:
        form = {"k": "5", **({"filter": flt} if flt is not None else {})}
        r = client.post("/v1/search/video", files={"file": ("q.mp4", data, "video/mp4")}, data=form)
        return {"status": r.status_code, "body": r.json()}

    import json

    hits = upload_search(json.dumps({"label": tricky}))["body"]["results"]
    assert [h["id"] for h in hits] == ["tricky1"] and hits[0]["camera"] == 'c"9'
    hits = upload_search(json.dumps({"exclude_camera": 'c"9'}))["body"]["results"]
    assert len(hits) == 5 and "tricky1" not in {h["id"] for h in hits}
    assert upload_search(json.dumps({"label": '" or label != "'}))["body"]["results"] == []
    assert upload_search("")["body"]["results"][0]["id"] in {"tricky1", "id0008_c2_s1"}
    bad = upload_search('{"colour": "red"}')
    assert bad["status"] == 422 and "filter.colour" in bad["body"]["detail"]
    bad = upload_search("{not json")
    assert bad["status"] == 422 and "filter" in bad["body"]["detail"]
    r = client.post("/v1/search", json={"id": "id0008_c2_s1", "k": 3, "filter": {"camera": 'c"9'}})
    assert [h["id"] for h in r.json()["results"]] == ["tricky1"]


def test_a_milvus_failure_answers_503(milvus_db: Path, tmp_path: Path) -> None:
    """Milvus unreachable or failing is not the client's mistake: 503 naming the backend, not a 400 or a 500."""
    import shutil

    from pymilvus import MilvusException

    shutil.copy(milvus_db, tmp_path / "m.db")
    served = {"index": tmp_path / "data", "backend": "milvus", "milvus_uri": str(tmp_path / "m.db")}
    served["milvus_collection"] = "gallery"
    with _client(served, None) as c:
        index = c.app.state.vidret.index

        def down(*args, **kwargs):
            raise MilvusException(message="service unavailable")

        index.client.search = index.client.query = down
        r = c.post("/v1/search", json={"embedding": [1.0] * 32, "k": 3})
        assert r.status_code == 503 and "the index backend failed" in r.json()["detail"]
        assert c.get("/v1/videos/x").status_code == 503


def test_serve_checks_the_milvus_collection_before_starting(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    res = run_cli("serve", "--backend", "milvus", "--milvus-uri", tmp_path / "m.db", "--milvus-collection", "nope")
    assert res.returncode == 1 and "--milvus-collection nope: no such collection" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("serve", "--backend", "milvus", timeout=120)
    assert res.returncode == 1 and "--milvus-uri is required" in res.stderr
    res = run_cli("serve", "--backend", "mongo", timeout=120)
    assert res.returncode == 1 and "setting backend" in res.stderr

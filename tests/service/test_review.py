"""The web page's routes: clips with range requests, the listing filter, per-query AP, and the label review (audit
import and computation, decisions that survive kill -9, the cleaned manifest from the API and from the CLI)."""

from __future__ import annotations

import csv
import io
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import training.embed
from service.app import create_app
from service.review import ReviewStore, parse_audit_csv
from service.settings import Settings
from tests.conftest import run_cli

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def train_index(checkpoint: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training split indexed (its labels are the checkpoint's classes, 25% of them wrong)."""
    out = tmp_path_factory.mktemp("review")
    res = run_cli(
        "embed",
        "--checkpoint",
        checkpoint,
        "--manifest",
        synth_dir / "train.csv",
        "--out",
        out / "train.npz",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli("index", "build", "--embeddings", out / "train.npz", "--out", out / "index")
    assert res.returncode == 0, res.stderr[-2000:]
    return out / "index"


@pytest.fixture(scope="module")
def audit_csv(checkpoint: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "suspects.csv"
    res = run_cli(
        "audit", "--checkpoint", checkpoint, "--manifest", synth_dir / "train.csv", "--out", out, "--workers", "0"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture()
def fresh(train_index: Path, tmp_path: Path) -> Path:
    shutil.copytree(train_index, tmp_path / "index")
    return tmp_path / "index"


def _client(index: Path, checkpoint: Path | None, **kw) -> TestClient:
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", **kw)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


@pytest.fixture()
def client(fresh: Path, checkpoint: Path):
    with _client(fresh, checkpoint, api_key=KEY) as c:
        yield c


def finished_job(client: TestClient, url: str, timeout: float = 120) -> dict:
    """Poll an audit job until it has finished; its last state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(url).json()
        if job["state"] not in ("running", "cancelling"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"the audit job {url} did not finish in {timeout} s")


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ---- clips --------------------------------------------------------------------------------------------------------
def test_video_is_served_with_range_requests(client: TestClient, synth_dir: Path) -> None:
    data = (synth_dir / "videos" / "id0002" / "c1_s0.mp4").read_bytes()
    size = len(data)
    url = "/v1/videos/id0002_c1_s0/video"
    r = client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "video/mp4" and r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == size
    for header, (first, last) in {
        "bytes=0-99": (0, 99),
        "bytes=100-": (100, size - 1),
        "bytes=-50": (size - 50, size - 1),
        "bytes=10-10": (10, 10),
        f"bytes=5-{size + 1000}": (5, size - 1),
        "BYTES = 3 - 7": (3, 7),
        f"bytes=-{size + 5}": (0, size - 1),
        "bytes=-" + "9" * 5000: (0, size - 1),
    }.items():
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 206, header[:40]
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", header[:40]
        assert r.content == data[first : last + 1] and int(r.headers["content-length"]) == last - first + 1
        assert r.headers["content-type"] == "video/mp4"
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0", "bytes=" + "9" * 40 + "-"):
        r = client.get(url, headers={"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{size}" and "range not satisfiable" in r.json()["detail"]
    # malformed, several ranges, other units: the header is ignored (RFC 9110), the whole file is sent, never a 5xx
    for header in (
        "bytes=abc",
        "bytes=9-2",
        "items=0-1",
        "bytes=0-1,3-4",
        "bytes=",
        "bytes=-",
        "bytes",
        "0-10",
        "bytes=1-2-3",
        "bytes=\u00e9-1",
        "bytes=" + "9" * 5000,
        " ",
        "bytes=0x10-",
    ):
        r = client.get(url, headers={"Range": header.encode("utf-8")})
        assert r.status_code == 200 and r.content == data, header[:40]
    assert client.get("/v1/videos/nope/video").status_code == 404


def test_video_route_serves_only_the_stored_file(
    client: TestClient, fresh: Path, synth_dir: Path, tmp_path: Path
) -> None:
    """An added video plays from the index's videos/ folder; a missing file or a non-video gives 404 (the client
    never names a path)."""
    video = synth_dir / "videos" / "id0001" / "c2_s1.mp4"
    r = client.post(
        "/v1/videos",
        files={"file": ("x.mp4", video.read_bytes(), "video/mp4")},
        data={"id": "added:one", "label": "L"},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    r = client.get("/v1/videos/added:one/video", headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == video.read_bytes()[:10]
    assert client.get("/v1/videos/..%2F..%2Fetc%2Fpasswd/video").status_code == 422  # not an id
    # metadata that names a file that is no video container, or a missing file (patched in memory)
    state = client.app.state.vidret
    meta = state.index.get("id0003_c1_s0")
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    real_get = state.index.get
    patched = {"id0003_c1_s0": type(meta)(**{**meta.__dict__, "path": str(bogus)})}
    state.index.get = lambda vid: patched.get(vid) or real_get(vid)
    r = client.get("/v1/videos/id0003_c1_s0/video")
    assert r.status_code == 404 and "not stored as a video file" in r.json()["detail"]
    patched["id0003_c1_s0"] = type(meta)(**{**meta.__dict__, "path": str(tmp_path / "gone.mp4")})
    r = client.get("/v1/videos/id0003_c1_s0/video")
    assert r.status_code == 404 and "not available" in r.json()["detail"] and str(tmp_path) not in r.text


def test_video_needs_the_read_key(fresh: Path) -> None:
    with _client(fresh, None, read_api_key="reader") as c:
        assert c.get("/v1/videos/id0002_c1_s0/video").status_code == 401
        r = c.get("/v1/videos/id0002_c1_s0/video", headers={"Authorization": "Bearer reader", "Range": "bytes=0-3"})
        assert r.status_code == 206 and len(r.content) == 4
        for path in ("/v1/review/queue", "/v1/review/export"):
            assert c.get(path).status_code == 401
        assert c.get("/v1/review/queue", headers={"Authorization": "Bearer reader"}).status_code == 200
        # the export shows server paths: it is under the write policy, which the read key never satisfies
        assert c.get("/v1/review/export", headers={"Authorization": "Bearer reader"}).status_code == 403
        assert c.post("/v1/evaluate/queries", json={"all": True}).status_code == 401


# ---- the listing's filter ------------------------------------------------------------------------------------------
def test_listing_filters_by_id_and_label(client: TestClient) -> None:
    everything = client.get("/v1/videos").json()
    assert everything["total"] == 24 and len(everything["videos"]) == 24  # unchanged without q
    r = client.get("/v1/videos", params={"q": "ID0004_C2"}).json()  # case-insensitive
    assert r["total"] == 2 and {v["id"] for v in r["videos"]} == {"id0004_c2_s0", "id0004_c2_s1"}
    # a label matches too: every video labelled id0003, whatever its id; prefix matches come first
    r = client.get("/v1/videos", params={"q": "id0003"}).json()
    by_label = {v["id"] for v in everything["videos"] if v["label"] == "id0003"}
    by_id = {v["id"] for v in everything["videos"] if v["id"].startswith("id0003")}
    assert {v["id"] for v in r["videos"]} == by_label | by_id and r["total"] == len(by_label | by_id)
    r = client.get("/v1/videos", params={"q": "c2_s1"}).json()  # inside the id: after the prefix matches
    assert r["total"] == 6 and all("c2_s1" in v["id"] for v in r["videos"])
    page = client.get("/v1/videos", params={"q": "id000", "offset": 20, "limit": 3}).json()
    assert page["total"] == 24 and len(page["videos"]) == 3
    assert client.get("/v1/videos", params={"q": "zzz"}).json() == {"videos": [], "total": 0}
    assert client.get("/v1/videos", params={"q": "x" * 201}).status_code == 422


# ---- per-query AP ------------------------------------------------------------------------------------------------
def test_per_query_ap_is_the_evaluation_of_each_query(client: TestClient, synth_dir: Path) -> None:
    # five more videos, not in the training split (copies would tie with their originals: float rounding of a
    # block's matrix product may then order them differently from a single query's)
    for vid, label, camera, clip in (
        ("solo", "only-one", "c1", "id0008/c2_s1"),
        ("pair-a", "pair", "c7", "id0009/c1_s0"),
        ("pair-b", "pair", "c7", "id0009/c2_s1"),
        ("nocam-a", "nocam", "", "id0010/c1_s0"),
        ("nocam-b", "nocam", "", "id0011/c2_s0"),
    ):
        video = (synth_dir / "videos" / f"{clip}.mp4").read_bytes()
        r = client.post(
            "/v1/videos",
            files={"file": ("x.mp4", video, "video/mp4")},
            data={"id": vid, "label": label, "camera": camera},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
    ids = [v["id"] for v in client.get("/v1/videos").json()["videos"]]
    whole = client.post("/v1/evaluate", json={"all": True, "ks": [1, 5]}).json()
    per = client.post("/v1/evaluate/queries", json={"all": True, "ks": [1, 5]}).json()
    assert whole["skipped"] == 3 and per["skipped"] == 3 and per["num_queries"] == whole["num_queries"] == 26
    assert per["mAP"] == pytest.approx(whole["mAP"]) and per["cmc"] == pytest.approx(whole["cmc"])
    assert [q["id"] for q in per["queries"]] == ids
    assert {q["id"] for q in per["queries"] if q["ap"] is None} == {"solo", "pair-a", "pair-b"}
    aps = [q["ap"] for q in per["queries"] if q["ap"] is not None]
    assert len(aps) == whole["num_queries"] and sum(aps) / len(aps) == pytest.approx(whole["mAP"])
    for q in per["queries"]:  # each one's AP is /v1/evaluate of that query alone
        one = client.post("/v1/evaluate", json={"query_ids": [q["id"]]}).json()
        if q["ap"] is None:
            assert one["skipped"] == 1 and one["num_queries"] == 0
        else:
            assert one["mAP"] == pytest.approx(q["ap"]), (q, one)
    some = client.post("/v1/evaluate/queries", json={"query_ids": ids[5:8]}).json()
    assert [q["id"] for q in some["queries"]] == ids[5:8]
    assert client.post("/v1/evaluate/queries", json={"query_ids": ["nope"]}).status_code == 404
    assert client.post("/v1/evaluate/queries", json={}).status_code == 422


def test_per_query_ap_skips_queries_without_relevant_items(fresh: Path) -> None:
    """A query whose only same-label videos are on its own camera has no AP (skipped), as in /v1/evaluate."""
    from service.api.evaluate import _has_relevant

    class M:
        def __init__(self, label: str, camera: str) -> None:
            self.label, self.camera = label, camera

    g = [M("a", "c1"), M("a", "c1"), M("b", "c1"), M("b", "c2"), M("c", ""), M("c", ""), M("d", "None")]
    assert _has_relevant(g, g) == [False, False, True, True, True, True, False]


def test_per_query_ap_is_bounded(fresh: Path) -> None:
    with _client(fresh, None, max_eval_queries=3) as c:
        r = c.post("/v1/evaluate/queries", json={"all": True})
        assert r.status_code == 422 and "VIDRET_MAX_EVAL_QUERIES=3" in r.json()["detail"]
        ids = [v["id"] for v in c.get("/v1/videos").json()["videos"]]
        assert c.post("/v1/evaluate/queries", json={"query_ids": ids[:3]}).status_code == 200


# ---- the label review --------------------------------------------------------------------------------------------
def _import(client: TestClient, data: bytes, headers: dict | None = AUTH) -> httpx.Response:
    return client.post("/v1/review/audit", files={"file": ("suspects.csv", data, "text/csv")}, headers=headers)


def test_review_without_an_audit_is_empty(client: TestClient, fresh: Path) -> None:
    assert client.get("/v1/review/queue").json() == {"items": [], "total": 0, "offset": 0, "decided": 0, "audit": None}
    assert not (fresh / "review.sqlite").exists()  # reads create nothing
    export = _rows(client.get("/v1/review/export", headers=AUTH).text)
    assert len(export) == 24


def test_import_queue_decide_export(client: TestClient, audit_csv: Path, fresh: Path, synth_dir: Path) -> None:
    audit = parse_audit_csv(audit_csv.read_bytes())
    assert _import(client, audit_csv.read_bytes(), headers=None).status_code == 401
    assert _import(client, audit_csv.read_bytes(), headers={"Authorization": "Bearer nope"}).status_code == 403
    r = _import(client, audit_csv.read_bytes())
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 24 and r.json()["source"] == "import" and r.json()["unknown_ids"] == 0
    q = client.get("/v1/review/queue", params={"limit": 24, "neighbours": 3}).json()
    assert q["total"] == 24 and q["decided"] == 0 and q["audit"]["source"] == "import"
    assert [i["id"] for i in q["items"]] == [a.id for a in audit]  # most suspect first, as the audit ranks them
    suspicion = [i["suspicion"] for i in q["items"]]
    assert suspicion == sorted(suspicion, reverse=True)
    first = q["items"][0]
    assert first["label"] == first["audit_label"] == audit[0].label and first["predicted"] == audit[0].predicted
    assert first["p_label"] == pytest.approx(audit[0].p_label) and first["decision"] is None
    near = first["neighbours"]
    assert len(near) == 3 and first["id"] not in {n["id"] for n in near}
    hits = client.post("/v1/search", json={"id": first["id"], "k": 3}).json()["results"]
    assert [n["id"] for n in near] == [h["id"] for h in hits]

    ids = [i["id"] for i in q["items"]]

    def put(vid: str, body: dict, headers: dict = AUTH) -> httpx.Response:
        return client.put(f"/v1/review/decisions/{vid}", json=body, headers=headers)

    assert put(ids[0], {"action": "keep"}, headers={}).status_code == 401
    assert put(ids[0], {"action": "keep"}, headers={"Authorization": "Bearer nope"}).status_code == 403
    assert put("nope", {"action": "keep"}).status_code == 404
    for body, needle in (
        ({"action": "bless"}, "action"),
        ({"action": "relabel"}, "label"),
        ({"action": "relabel", "label": "  "}, "label"),
        ({"action": "keep", "label": "x"}, "label"),
        ({"action": "drop", "extra": 1}, "extra"),
        ({"action": "relabel", "label": "a\nb"}, "label"),
        ({}, "action"),
    ):
        r = put(ids[0], body)
        assert r.status_code == 422 and needle in r.json()["detail"], (body, r.text)
    r = put(ids[0], {"action": "keep"})
    assert r.status_code == 200 and r.json()["action"] == "keep" and r.json()["label"] is None
    assert put(ids[1], {"action": "relabel", "label": "id0005"}).json()["label"] == "id0005"
    assert put(ids[2], {"action": "relabel", "label": "fresh label"}).status_code == 200
    assert put(ids[2], {"action": "drop"}).json()["action"] == "drop"  # the latest decision counts
    q = client.get("/v1/review/queue", params={"limit": 24}).json()
    assert q["decided"] == 3
    assert [(i["decision"] or {}).get("action") for i in q["items"][:4]] == ["keep", "relabel", "drop", None]
    undecided = client.get("/v1/review/queue", params={"undecided": True, "limit": 5}).json()
    assert undecided["total"] == 21 and undecided["items"][0]["id"] == ids[3]
    page = client.get("/v1/review/queue", params={"offset": 22, "limit": 5}).json()
    assert [i["id"] for i in page["items"]] == ids[22:]

    r = client.get("/v1/review/export", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == "path,label,id,camera"
    rows = {row["id"]: row for row in _rows(r.text)}
    assert len(rows) == 23 and ids[2] not in rows
    assert rows[ids[1]]["label"] == "id0005" and rows[ids[0]]["label"] == q["items"][0]["label"]
    manifest = {row["id"]: row for row in csv.DictReader(open(synth_dir / "train.csv"))}
    for vid, row in rows.items():  # paths as stored (outside the index folder: the synthetic videos' own)
        assert (
            Path(row["path"]) == (synth_dir / manifest[vid]["path"]).resolve()
            and row["camera"] == manifest[vid]["camera"]
        )
        if vid != ids[1]:
            assert row["label"] == manifest[vid]["label"]

    # the CLI gives the same manifest without a server; written into the index folder, the very same text
    out = fresh / "cleaned.csv"
    res = run_cli("review", "export", "--index", fresh, "--out", out)
    assert res.returncode == 0, res.stderr
    assert "23 videos" in res.stdout and "1 dropped" in res.stdout and "1 relabelled" in res.stdout
    assert out.read_text() == r.text


def test_export_paths_of_added_videos(client: TestClient, fresh: Path, synth_dir: Path, tmp_path: Path) -> None:
    """A video added through the API lives in the index folder: the export names it videos/<file> (relative to the
    index folder); the CLI names it relative to the manifest it writes, so `vidret train` finds it from there."""
    video = synth_dir / "videos" / "id0001" / "c2_s1.mp4"
    r = client.post(
        "/v1/videos",
        files={"file": ("x.mp4", video.read_bytes(), "video/mp4")},
        data={"id": "new", "label": "L", "camera": "c9"},
        headers=AUTH,
    )
    assert r.status_code == 201
    rows = {row["id"]: row for row in _rows(client.get("/v1/review/export", headers=AUTH).text)}
    stored = rows["new"]["path"]
    assert stored.startswith("videos/") and (fresh / stored).is_file() and rows["new"]["camera"] == "c9"
    out = tmp_path / "elsewhere" / "cleaned.csv"
    out.parent.mkdir()
    assert run_cli("review", "export", "--index", fresh, "--out", out).returncode == 0
    cli = {row["id"]: row for row in csv.DictReader(open(out))}
    assert (out.parent / cli["new"]["path"]).resolve() == (fresh / stored).resolve()
    from training.data.manifest import read_manifest

    assert len(read_manifest(out, require_label=True)) == 25  # a manifest vidret train reads


def test_deleting_a_video_forgets_its_review(client: TestClient, audit_csv: Path, synth_dir: Path) -> None:
    assert _import(client, audit_csv.read_bytes()).status_code == 201
    assert client.put("/v1/review/decisions/id0002_c1_s0", json={"action": "drop"}, headers=AUTH).status_code == 200
    assert client.delete("/v1/videos/id0002_c1_s0", headers=AUTH).status_code == 204
    q = client.get("/v1/review/queue", params={"limit": 50}).json()
    assert q["total"] == 23 and q["decided"] == 0 and "id0002_c1_s0" not in {i["id"] for i in q["items"]}
    video = (synth_dir / "videos" / "id0002" / "c1_s0.mp4").read_bytes()
    r = client.post(
        "/v1/videos",
        files={"file": ("x.mp4", video, "video/mp4")},
        data={"id": "id0002_c1_s0", "label": "id0002"},
        headers=AUTH,
    )
    assert r.status_code == 201  # a new video under the old id: not dropped by the old decision
    assert "id0002_c1_s0" in {row["id"] for row in _rows(client.get("/v1/review/export", headers=AUTH).text)}


def test_review_export_cli_errors(tmp_path: Path) -> None:
    res = run_cli("review", "export", "--index", tmp_path / "nope", "--out", tmp_path / "a.csv")
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "not an index folder" in res.stderr


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"id,label,p_label,predicted,p_predicted\nid0000_c1_s0,a,0.1,b,0.5\n", "no column 'suspicion'"),
        (b"label,p_label,predicted,p_predicted,suspicion\n", "no column 'id'"),
        (b"", "empty"),
        (b"id,label,p_label,predicted,p_predicted,suspicion\n", "no rows"),
        (
            b"id,label,p_label,predicted,p_predicted,suspicion\nid0000_c1_s0,a,0.1,b,0.5,0.9\nid0000_c1_s1,a,x,b,.5,.9\n",
            "row 2: p_label 'x' is not a number",
        ),
        (b"id,label,p_label,predicted,p_predicted,suspicion\nid0000_c1_s0,a,0.1,b,0.5,1.5\n", "row 1: suspicion"),
        (b"id,label,p_label,predicted,p_predicted,suspicion\nid0000_c1_s0,a,nan,b,0.5,0.5\n", "row 1: p_label"),
        (
            b"id,label,p_label,predicted,p_predicted,suspicion\nid0000_c1_s0,,0.1,b,0.5,0.9\n",
            "row 1: missing value in column 'label'",
        ),
        (b"id,label,p_label,predicted,p_predicted,suspicion\nid0000_c1_s0,a,0.1,b,0.5\n", "row 1: 5 fields"),
        (
            b"id,label,p_label,predicted,p_predicted,suspicion\nid0000_c1_s0,a,.1,b,.5,.9\nid0000_c1_s0,a,.1,b,.5,.9\n",
            "row 2: duplicate id 'id0000_c1_s0' (first at row 1)",
        ),
        (b"id,label,p_label,predicted,p_predicted,suspicion\n\xff\xfe,a,.1,b,.5,.9\n", "not UTF-8"),
        (b"id,label,p_label,predicted,p_predicted,suspicion\nnot-indexed,a,.1,b,.5,.9\n", "none of its 1 ids"),
    ],
)
def test_bad_audits_are_refused_with_the_column_or_row(client: TestClient, data: bytes, needle: str) -> None:
    r = _import(client, data)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert client.get("/v1/review/queue").json()["audit"] is None  # nothing stored


def test_import_keeps_known_ids_and_decisions(client: TestClient, audit_csv: Path) -> None:
    text = audit_csv.read_text()
    extra = text + "someone_else,x,0.5,y,0.5,0.5\n"
    r = _import(client, extra.encode())
    assert r.status_code == 201 and r.json()["rows"] == 24 and r.json()["unknown_ids"] == 1
    first = client.get("/v1/review/queue", params={"limit": 1}).json()["items"][0]["id"]
    client.put(f"/v1/review/decisions/{first}", json={"action": "drop"}, headers=AUTH)
    # columns in another order, and a second import: it replaces the audit, the decision stays
    rows = list(csv.DictReader(io.StringIO(text)))[:5]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["suspicion", "id", "p_predicted", "predicted", "p_label", "label", "more"])
    w.writeheader()
    for row in rows:
        w.writerow({**row, "more": "ignored"})
    assert _import(client, buf.getvalue().encode()).json()["rows"] == 5
    q = client.get("/v1/review/queue").json()
    assert q["total"] == 5 and q["decided"] == 1 and q["items"][0]["decision"]["action"] == "drop"


def test_server_computes_the_audit(client: TestClient, synth_dir: Path) -> None:
    """The server ranks the indexed videos with the audit ranking (training/audit.py): every video whose label is a
    class of the checkpoint, its stored label, most suspect first."""
    assert client.post("/v1/review/audit/compute").status_code == 401
    r = client.post("/v1/review/audit/compute", headers=AUTH)
    assert r.status_code == 202, r.text
    job = finished_job(client, r.headers["Location"])
    assert job["state"] == "done" and job["done"] == job["total"] == 24, job
    body = job["result"]
    assert body["source"] == "computed" and body["rows"] == 24 and body["unknown_label"] == 0
    labels = {row["id"]: row["label"] for row in csv.DictReader(open(synth_dir / "train.csv", newline=""))}
    items = client.get("/v1/review/queue", params={"limit": 24, "neighbours": 0}).json()["items"]
    assert len(items) == 24 and all(i["neighbours"] == [] for i in items)
    assert all(i["label"] == labels[i["id"]] for i in items)
    suspicion = [i["suspicion"] for i in items]
    assert suspicion == sorted(suspicion, reverse=True)
    assert all(i["suspicion"] == pytest.approx(1 - i["p_label"], abs=1e-6) for i in items)


def test_compute_needs_a_checkpoint_and_known_labels(
    fresh: Path, checkpoint: Path, embeddings: dict[str, Path], tmp_path: Path
) -> None:
    with _client(fresh, None, api_key=KEY) as c:
        r = c.post("/v1/review/audit/compute", headers=AUTH)
        assert r.status_code == 409 and "checkpoint" in r.json()["detail"]
    gallery = tmp_path / "gallery-index"  # unseen identities: no label is a class of the checkpoint
    assert run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", gallery).returncode == 0
    with _client(gallery, checkpoint, api_key=KEY) as c:
        r = c.post("/v1/review/audit/compute", headers=AUTH)
        assert r.status_code == 202
        job = finished_job(c, r.json()["url"])
        assert job["state"] == "failed" and "18 with another label" in job["error"] and job["result"] is None
        assert c.get("/v1/review/queue").json()["audit"] is None


def test_decisions_are_stored_durably(fresh: Path) -> None:
    import sqlite3

    store = ReviewStore(fresh)
    store.decide("a", "relabel", "b")
    conn = sqlite3.connect(fresh / "review.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT action, label FROM decisions WHERE id='a'").fetchone() == ("relabel", "b")
    conn.close()
    with pytest.raises(ValueError, match="label"):
        store.decide("a", "relabel", "")


def test_a_store_a_crash_left_without_tables_still_works(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "review.sqlite")  # the file exists (killed before the first table)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    store = ReviewStore(tmp_path)
    assert store.decisions() == {} and store.audit_rows() == [] and store.audit_info() is None
    store.decide("v", "keep", None)
    assert store.decisions()["v"].action == "keep"


def test_a_decision_survives_sigkill(train_index: Path, checkpoint: Path, audit_csv: Path, tmp_path: Path) -> None:
    """A real `vidret serve`: a decision answered 200, then kill -9 at once; after a restart it is there."""
    from tests.e2e.test_serve_process import Server

    index = tmp_path / "index"
    shutil.copytree(train_index, index)
    auth = {"Authorization": "Bearer k"}
    server = Server(index, checkpoint).start()
    try:
        r = httpx.post(
            f"{server.url}/v1/review/audit", files={"file": ("a.csv", audit_csv.read_bytes())}, headers=auth, timeout=60
        )
        assert r.status_code == 201, r.text
        r = httpx.put(
            f"{server.url}/v1/review/decisions/id0001_c2_s0",
            json={"action": "relabel", "label": "zz"},
            headers=auth,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        server.kill()  # the instant after the 200
        server.start()
        q = httpx.get(f"{server.url}/v1/review/queue", params={"limit": 100}).json()
        assert q["total"] == 24 and q["decided"] == 1
        item = next(i for i in q["items"] if i["id"] == "id0001_c2_s0")
        assert item["decision"]["action"] == "relabel" and item["decision"]["label"] == "zz"
        rows = {row["id"]: row for row in _rows(httpx.get(f"{server.url}/v1/review/export", headers=auth).text)}
        assert rows["id0001_c2_s0"]["label"] == "zz"
    finally:
        server.stop()


def test_review_export_cli_on_milvus(milvus_db: Path, embeddings: dict[str, Path], tmp_path: Path) -> None:
    """`vidret review export --backend milvus` reads the videos from the collection and the decisions from the
    folder `vidret serve --index` kept them in: a drop is left out, a relabel applied."""
    import numpy as np

    gallery = [str(i) for i in np.load(embeddings["gallery"])["ids"]]
    dropped, relabelled = gallery[0], gallery[1]
    db = tmp_path / "m.db"
    shutil.copy(milvus_db, db)
    folder = tmp_path / "data"
    folder.mkdir()
    store = ReviewStore(folder)
    store.decide(dropped, "drop", None)
    store.decide(relabelled, "relabel", "id0099")
    out = tmp_path / "clean.csv"
    args = ("review", "export", "--index", folder, "--out", out, "--backend", "milvus", "--milvus-uri", db)
    res = run_cli(*args, "--milvus-collection", "gallery")
    assert res.returncode == 0, res.stderr
    rows = {row["id"]: row for row in csv.DictReader(open(out))}
    assert set(rows) == set(gallery) - {dropped} and rows[relabelled]["label"] == "id0099"
    res = run_cli("review", "export", "--index", folder, "--out", out, "--backend", "milvus")
    assert res.returncode == 1 and "--milvus-uri" in res.stderr


# ---- the server-side audit as a background job ------------------------------------------------------------------
@pytest.fixture()
def gated(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Each chunk of the audit's inference waits for the test's go (so that the test sees the job running)."""
    real = training.embed.run_inference
    gate = {"go": threading.Semaphore(0), "entered": threading.Semaphore(0), "chunks": 0}

    def run(*a, **k):
        gate["chunks"] += 1
        gate["entered"].release()
        assert gate["go"].acquire(timeout=60), "the test never let the chunk run"
        return real(*a, **k)

    monkeypatch.setattr(training.embed, "run_inference", run)
    return gate


def test_job_progress_conflict_and_result(fresh: Path, checkpoint: Path, gated: dict) -> None:
    with _client(fresh, checkpoint, api_key=KEY) as c:
        assert c.post("/v1/review/audit/compute").status_code == 401
        assert c.get("/v1/review/audit/jobs").json() == []
        r = c.post("/v1/review/audit/compute", headers=AUTH)
        assert r.status_code == 202, r.text
        job = r.json()
        url = job["url"]
        assert r.headers["Location"] == url == f"/v1/review/audit/jobs/{job['id']}" and job["state"] == "running"
        assert gated["entered"].acquire(timeout=60)  # in its first chunk
        running = c.get(url).json()
        assert running["state"] == "running" and running["done"] == 0 and running["total"] == 24
        again = c.post("/v1/review/audit/compute", headers=AUTH)  # a second start: the running job's URL
        assert again.status_code == 409 and again.headers["Location"] == url and url in again.json()["detail"]
        assert [j["id"] for j in c.get("/v1/review/audit/jobs").json()] == [job["id"]]
        gated["go"].release()
        assert gated["entered"].acquire(timeout=60)  # the second chunk: 16 of 24 done
        assert c.get(url).json()["done"] == 16
        gated["go"].release()
        done = finished_job(c, url)
        assert done["state"] == "done" and done["done"] == done["total"] == 24 and done["finished_at"]
        assert done["result"]["rows"] == 24 and done["result"]["source"] == "computed"
        assert c.get("/v1/review/queue").json()["audit"]["rows"] == 24  # stored
        r = c.delete(url, headers=AUTH)
        assert r.status_code == 409 and "already finished (done)" in r.json()["detail"]
        assert c.get("/v1/review/audit/jobs/nope").status_code == 404


def test_cancel_stops_the_job_and_stores_nothing(fresh: Path, checkpoint: Path, gated: dict) -> None:
    with _client(fresh, checkpoint, api_key=KEY) as c:
        url = c.post("/v1/review/audit/compute", headers=AUTH).json()["url"]
        assert gated["entered"].acquire(timeout=60)
        assert c.delete(url).status_code == 401  # cancelling is a write
        r = c.delete(url, headers=AUTH)
        assert r.status_code == 202 and r.json()["state"] == "cancelling"
        gated["go"].release()  # the chunk under way ends; no other starts
        job = finished_job(c, url)
        assert job["state"] == "cancelled" and job["result"] is None and job["done"] < job["total"]
        time.sleep(0.3)
        assert gated["chunks"] == 1  # it stopped: no chunk after the cancel
        assert c.get("/v1/review/queue").json()["audit"] is None
        r = c.post("/v1/review/audit/compute", headers=AUTH)  # a new one may start at once
        assert r.status_code == 202 and r.json()["url"] != url
        for _ in range(2):
            gated["go"].release()
        assert finished_job(c, r.json()["url"])["state"] == "done"


def test_stopping_the_server_cancels_a_running_job_before_the_index_closes(
    fresh: Path, checkpoint: Path, gated: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's thread must not read the index after the server closed it (it crashed the process in SQLite)."""
    from service.state import ServiceState

    order: list[str] = []
    real_close = ServiceState.close

    def close(self) -> None:
        job = self.audit_jobs.list()[0]
        order.append(f"closing with the job {job.state}")
        threading.Timer(0.5, gated["go"].release).start()  # the chunk under way ends a little later
        real_close(self)
        order.append(f"closed with the job {job.state}")

    monkeypatch.setattr(ServiceState, "close", close)
    with _client(fresh, checkpoint, api_key=KEY) as c:
        assert c.post("/v1/review/audit/compute", headers=AUTH).status_code == 202
        assert gated["entered"].acquire(timeout=60)  # the job is inside its first chunk when the server stops
    assert order == ["closing with the job running", "closed with the job cancelled"]
    assert gated["chunks"] == 1

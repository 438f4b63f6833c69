"""Secure defaults: every Authorization value gets a 401 or 403 (never a 5xx), writes need a key unless the server
binds to loopback or is told otherwise, an optional read key, a bounded /v1/evaluate, no server paths in answers."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexing.errors import UserError
from service.app import create_app
from service.settings import Settings

WRITE, READ = "write-key", "read-key"
ODD_AUTHORIZATION = {  # what clients and scanners send; the bytes go on the wire as they are
    "non-ASCII bytes": b"Bearer \xff\xfe\x80",
    "latin-1 key": b"Bearer cl\xe9",
    "UTF-8 key": "Bearer clé".encode(),
    "no scheme, non-ASCII": b"\xe9\xe9",
    "empty": b"",
    "blank": b"   ",
    "100 kB": b"Bearer " + b"a" * 100_000,
    "Basic": b"Basic xyz",
    "Bearer without token": b"Bearer",
    "Bearer and a space": b"Bearer ",
    "lower-case scheme, wrong key": b"bearer nope",
    "key without scheme": WRITE.encode(),
}


def _client(index: Path, checkpoint: Path | None = None, **kw) -> TestClient:
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", **kw)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def locked(index_dir: Path, checkpoint: Path):
    with _client(index_dir, checkpoint, host="0.0.0.0", api_key=WRITE, read_api_key=READ) as c:
        yield c


@pytest.fixture(scope="module")
def video(synth_dir: Path) -> Path:
    return synth_dir / "videos" / "id0008" / "c2_s1.mp4"


def _requests(video: Path) -> dict[str, tuple[str, str, dict]]:
    """One request of every /v1 route (method, path, httpx keywords); the read routes are the ones without a verb."""
    upload = {"files": {"file": ("a.mp4", video.read_bytes(), "video/mp4")}}
    return {
        "index": ("GET", "/v1/index", {}),
        "list": ("GET", "/v1/videos", {}),
        "get": ("GET", "/v1/videos/id0008_c2_s1", {}),
        "thumbnail": ("GET", "/v1/videos/id0008_c2_s1/thumbnail", {}),
        "search": ("POST", "/v1/search", {"json": {"id": "id0008_c2_s1", "k": 3}}),
        "batch": ("POST", "/v1/search/batch", {"json": {"queries": [{"id": "id0008_c2_s1"}], "k": 3}}),
        "video search": ("POST", "/v1/search/video", {**upload, "data": {"k": "3"}}),
        "evaluate": ("POST", "/v1/evaluate", {"json": {"query_ids": ["id0008_c2_s1"]}}),
        "add (write)": ("POST", "/v1/videos", {**upload, "data": {"id": "new1"}}),
        "delete (write)": ("DELETE", "/v1/videos/id0008_c2_s0", {}),
    }


def test_every_authorization_value_gets_401_or_403_on_every_route(
    locked: TestClient, index_dir: Path, video: Path
) -> None:
    def check(client: TestClient, routes: dict) -> None:
        for route, (method, path, kw) in routes.items():
            for name, value in ODD_AUTHORIZATION.items():
                r = client.request(method, path, headers={"Authorization": value}, **kw)
                assert r.status_code in (401, 403), f"{route}, {name}: {r.status_code} {r.text[:200]}"
                assert r.json()["detail"]
                if r.status_code == 401:
                    assert r.headers["www-authenticate"] == "Bearer"

    check(locked, _requests(video))  # both keys: every route checks the header
    with _client(index_dir, host="0.0.0.0", api_key=WRITE) as c:  # a write key only: the writes check it
        check(c, {k: v for k, v in _requests(video).items() if "write" in k})


class RealServer:
    """The app under uvicorn (as `vidret serve` runs it) in a thread, spoken to over a raw socket."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(settings, load_in_background=False), log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> RealServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def request(self, method: str, path: str, headers: list[bytes], body: bytes = b"") -> tuple[int, bytes]:
        head = [
            f"{method} {path} HTTP/1.1".encode(),
            f"Host: 127.0.0.1:{self.port}".encode(),
            b"Connection: close",
            f"Content-Length: {len(body)}".encode(),
            *headers,
        ]
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as c:
            c.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
            data = b""
            while chunk := c.recv(1 << 16):
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_raw_authorization_bytes_through_uvicorn(index_dir: Path) -> None:
    """The bytes a client really sends, through the HTTP server: what reaches the app gets 401/403; what the HTTP
    parser itself refuses (control characters) gets its 400. Nothing gets a 5xx."""
    settings = Settings(index=index_dir, host="0.0.0.0", api_key=WRITE, read_api_key=READ, search_coalesce=1)
    search = json.dumps({"id": "id0008_c2_s1", "k": 2}).encode()
    with RealServer(settings) as server:
        for name, value in ODD_AUTHORIZATION.items():
            for method, path, body in (
                ("GET", "/v1/videos", b""),
                ("DELETE", "/v1/videos/x", b""),
                ("POST", "/v1/search", search),
            ):
                extra = [b"Content-Type: application/json"] if body else []
                status, text = server.request(method, path, [b"Authorization: " + value, *extra], body)
                assert status in (401, 403), f"{name} {method} {path}: {status} {text[:200]!r}"
                assert json.loads(text)["detail"]
        for value in (b"Bearer \x01\x02", b"\x00", b"Bearer a\x7fb"):
            status, _ = server.request("GET", "/v1/videos", [b"Authorization: " + value])
            assert status == 400
        status, text = server.request("GET", "/v1/videos", [f"Authorization: Bearer {READ}".encode()])
        assert status == 200 and json.loads(text)["total"] == 18
    with RealServer(Settings(index=index_dir, read_api_key="clé", search_coalesce=1)) as server:  # a non-ASCII key
        assert server.request("GET", "/v1/videos", ["Authorization: Bearer clé".encode()])[0] == 200  # UTF-8
        assert server.request("GET", "/v1/videos", [b"Authorization: Bearer cl\xe9"])[0] == 403  # latin-1


def test_writes_without_a_key_are_refused_off_loopback(
    fresh_index: Path, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _client(fresh_index, host="0.0.0.0") as c:
        r = c.delete("/v1/videos/id0008_c2_s0")
        assert r.status_code == 403
        assert "VIDRET_API_KEY" in r.json()["detail"] and "VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1" in r.json()["detail"]
        with open(video, "rb") as fh:
            r = c.post("/v1/videos", files={"file": ("a.mp4", fh, "video/mp4")}, data={"id": "new1"})
        assert r.status_code == 403 and "VIDRET_API_KEY" in r.json()["detail"]
        assert c.get("/v1/videos").json()["total"] == 18  # reads stay open; nothing was deleted
        assert c.post("/v1/search", json={"id": "id0008_c2_s0", "k": 1}).status_code == 200

    monkeypatch.setenv("VIDRET_ALLOW_UNAUTHENTICATED_WRITES", "1")  # the explicit opt-in
    with _client(fresh_index, host="0.0.0.0") as c:
        assert c.delete("/v1/videos/id0008_c2_s0").status_code == 204
    monkeypatch.delenv("VIDRET_ALLOW_UNAUTHENTICATED_WRITES")
    for host in ("127.0.0.1", "::1", "localhost"):  # only this machine can reach the server
        with _client(fresh_index, host=host) as c:
            vid = c.get("/v1/videos").json()["videos"][0]["id"]
            assert c.delete(f"/v1/videos/{vid}").status_code == 204, host
    with _client(fresh_index, host="0.0.0.0", api_key=WRITE) as c:  # with a key: the key decides
        vid = c.get("/v1/videos").json()["videos"][0]["id"]
        assert c.delete(f"/v1/videos/{vid}").status_code == 401
        assert c.delete(f"/v1/videos/{vid}", headers={"Authorization": f"Bearer {WRITE}"}).status_code == 204


def test_read_key_guards_every_read_and_the_write_key_opens_them_too(
    locked: TestClient, index_dir: Path, video: Path
) -> None:
    for route, (method, path, kw) in _requests(video).items():
        if "write" in route:
            continue
        assert locked.request(method, path, **kw).status_code == 401, route
        assert locked.request(method, path, headers={"Authorization": "Bearer nope"}, **kw).status_code == 403, route
        for key in (READ, WRITE):
            r = locked.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)
            assert r.status_code == 200, (route, key, r.text[:200])
    r = locked.delete("/v1/videos/id0008_c2_s0", headers={"Authorization": f"Bearer {READ}"})
    assert r.status_code == 403  # the read key does not write
    for path in ("/health", "/ready", "/"):  # open, even with a read key
        assert locked.get(path).status_code == 200, path
    assert locked.get("/metrics").status_code == 401  # the index size is the read key's too
    assert locked.get("/metrics", headers={"Authorization": f"Bearer {READ}"}).status_code == 200
    with _client(index_dir, host="0.0.0.0", api_key=WRITE) as c:  # no read key: reads are open
        assert c.get("/v1/videos").status_code == 200
        assert c.post("/v1/search", json={"id": "id0008_c2_s1"}).status_code == 200


def test_every_published_route_is_under_the_read_and_write_policies(index_dir: Path) -> None:
    """Walks the OpenAPI document, so a route added later without the policies fails here: with a read key set,
    every /v1 route refuses a request without a key; every route that is not a known read-only one is a write and is
    refused, even with the read key, on a server without a write key that listens on all interfaces."""
    reads = {
        ("post", "/v1/search"),
        ("post", "/v1/search/batch"),
        ("post", "/v1/search/video"),
        ("post", "/v1/evaluate"),
        ("post", "/v1/evaluate/queries"),
    }
    with _client(index_dir, host="0.0.0.0", read_api_key=READ) as c:
        paths = c.get("/openapi.json").json()["paths"]
        operations = [(method, path) for path, item in paths.items() for method in item]
        writes = [(m, p) for m, p in operations if m not in ("get", "head") and (m, p) not in reads]
        assert sorted(writes) == [
            ("delete", "/v1/review/audit/jobs/{job_id}"),
            ("delete", "/v1/videos/{video_id}"),
            ("post", "/v1/review/audit"),
            ("post", "/v1/review/audit/compute"),
            ("post", "/v1/videos"),
            ("put", "/v1/review/decisions/{video_id}"),
        ]
        writes.append(("get", "/v1/review/export"))  # a read that shows server paths: under the write policy
        for method, path in operations:
            url = path.replace("{video_id}", "id0008_c2_s1").replace("{job_id}", "0123456789abcdef")
            if path.startswith("/v1/"):
                assert c.request(method, url).status_code == 401, (method, path)
            if (method, path) in writes:
                r = c.request(method, url, headers={"Authorization": f"Bearer {READ}"})
                assert r.status_code == 403 and "VIDRET_API_KEY" in r.json()["detail"], (method, path)
        assert c.get("/v1/videos", headers={"Authorization": f"Bearer {READ}"}).json()["total"] == 18


def test_evaluate_is_bounded(index_dir: Path) -> None:
    with _client(index_dir, max_eval_queries=5) as c:
        r = c.post("/v1/evaluate", json={"all": True})  # 18 videos
        assert r.status_code == 422
        assert "VIDRET_MAX_EVAL_QUERIES=5" in r.json()["detail"] and "query_ids" in r.json()["detail"]
        ids = [v["id"] for v in c.get("/v1/videos").json()["videos"]]
        r = c.post("/v1/evaluate", json={"query_ids": ids[:6]})
        assert r.status_code == 422 and "VIDRET_MAX_EVAL_QUERIES=5" in r.json()["detail"]
        r = c.post("/v1/evaluate", json={"query_ids": ids[:5]})
        assert r.status_code == 200 and r.json()["num_queries"] + r.json()["skipped"] == 5
    assert Settings().max_eval_queries >= 100


def test_index_info_names_the_checkpoint_file_not_its_path(index_dir: Path, checkpoint: Path) -> None:
    with _client(index_dir, checkpoint.resolve()) as c:
        model = c.get("/v1/index").json()["model"]
    assert model["checkpoint"] == checkpoint.name and len(model["sha256"]) == 64


def test_load_errors_do_not_show_server_paths(tmp_path: Path, index_dir: Path, checkpoint: Path) -> None:
    secret = tmp_path / "private-folder"
    with _client(secret / "no-index") as c:
        for r in (c.get("/ready"), c.post("/v1/search", json={"id": "x"})):
            assert r.status_code == 503
            detail = r.json()["detail"]
            assert "failed to load" in detail and "UserError" in detail and "log" in detail
            assert "private-folder" not in detail and "/" not in detail
    (secret / "bad.pt").parent.mkdir(parents=True, exist_ok=True)
    (secret / "bad.pt").write_bytes(b"not a checkpoint")
    with _client(index_dir, secret / "bad.pt") as c:
        detail = c.get("/ready").json()["detail"]
        assert "failed to load" in detail and "private-folder" not in detail and "bad.pt" not in detail


def test_user_errors_do_not_show_server_paths(index_dir: Path, tmp_path: Path) -> None:
    app = create_app(Settings(index=index_dir), load_in_background=False)
    where = tmp_path / "private folder" / "index"

    @app.get("/v1/reload")  # an operation that fails on a file, as index operations do
    def reload() -> None:
        raise UserError(f"{where / 'index.json'}: corrupt (Expecting value); see '{where / 'index.faiss'}'")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/reload")
    assert r.status_code == 400
    assert r.json()["detail"] == "index.json: corrupt (Expecting value); see 'index.faiss'"

    from service.deps import redact_paths

    assert (
        redact_paths("unknown id 'a/b', k must be >= 1, see https://x.org/a/b")
        == "unknown id 'a/b', k must be >= 1, see https://x.org/a/b"
    )  # ids, relative paths and URLs stay
    assert redact_paths("/srv/data/index: not an index folder") == "index: not an index folder"

"""The service under hostile and heavy traffic, in one process: allowed Host names, no writes from a foreign origin,
a read key that never writes, /metrics and /docs, relative redirects, bounded numbers and bodies, capped 422s, heavy
routes that answer 503 when full while /health and /ready answer at once, the audit import off the event loop."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from indexing.errors import UserError
from service.app import create_app
from service.settings import Settings
from tests.service.test_security import RealServer

VID = "id0008_c2_s0"


def _client(index: Path, **kw) -> TestClient:
    return TestClient(create_app(Settings(index=index, **kw), load_in_background=False), raise_server_exceptions=False)


def test_host_must_be_an_allowed_name(fresh_index: Path) -> None:
    with _client(fresh_index) as c:
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "testserver"):  # loopback names, the local address
            assert c.get("/v1/videos", headers={"Host": host}).status_code == 200, host
        for host in ("rebind.example", "rebind.example:8000", "127.0.0.1.nip.example", "localhost.evil"):
            r = c.get("/v1/videos", headers={"Host": host})
            assert r.status_code == 400 and "VIDRET_ALLOWED_HOSTS" in r.json()["detail"], host
            assert c.delete(f"/v1/videos/{VID}", headers={"Host": host}).status_code == 400
            assert c.get("/health", headers={"Host": host}).status_code == 200  # probes answer any name
        assert c.get(f"/v1/videos/{VID}").status_code == 200
    with _client(fresh_index, allowed_hosts="vidret.example, other.example:9000") as c:
        assert c.get("/v1/videos", headers={"Host": "vidret.example:8000"}).status_code == 200
        assert c.get("/v1/videos", headers={"Host": "other.example:9000"}).status_code == 200
        assert c.get("/v1/videos", headers={"Host": "other.example:9001"}).status_code == 400
    with _client(fresh_index, allowed_hosts="*") as c:
        assert c.get("/v1/videos", headers={"Host": "anything.example"}).status_code == 200


def test_writes_from_a_foreign_origin_are_refused(fresh_index: Path) -> None:
    foreign = [
        {"Origin": "http://127.0.0.1:9999"},  # another port is another origin
        {"Origin": "http://localhost"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of localhost is the same site, not the same origin
        {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
    ]
    with _client(fresh_index) as c:
        for headers in foreign:
            r = c.delete(f"/v1/videos/{VID}", headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.json()["detail"], headers
            r = c.put(f"/v1/review/decisions/{VID}", json={"action": "drop"}, headers=headers)
            assert r.status_code == 403, headers
            files = {"file": ("a.csv", b"id,label,p_label,predicted,p_predicted,suspicion\n", "text/csv")}
            assert c.post("/v1/review/audit", files=files, headers=headers).status_code == 403, headers
            assert c.get("/v1/videos", headers=headers).status_code == 200  # reads are not state-changing
        assert c.get(f"/v1/videos/{VID}").status_code == 200
        own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}  # the page's own origin writes
        assert c.put(f"/v1/review/decisions/{VID}", json={"action": "keep"}, headers=own).status_code == 200
        assert c.delete(f"/v1/videos/{VID}", headers=own).status_code == 204
    with _client(fresh_index, allowed_hosts="vidret.example") as c:  # behind a proxy that sends Host: 127.0.0.1
        vid = c.get("/v1/videos").json()["videos"][0]["id"]
        assert c.delete(f"/v1/videos/{vid}", headers={"Origin": "http://127.0.0.1:9999"}).status_code == 403
        proxied = {"Origin": "https://vidret.example", "Host": "127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
        assert c.delete(f"/v1/videos/{vid}", headers=proxied).status_code == 204


def test_a_read_key_never_authorises_a_write(fresh_index: Path) -> None:
    with _client(fresh_index, read_api_key="r") as c:  # loopback, a read key and no write key: no writes at all
        for headers in ({"Authorization": "Bearer r"}, {}):
            r = c.delete(f"/v1/videos/{VID}", headers=headers)
            assert r.status_code in (401, 403), (headers, r.status_code)
            r = c.put(f"/v1/review/decisions/{VID}", json={"action": "drop"}, headers=headers)
            assert r.status_code in (401, 403), headers
        assert c.get(f"/v1/videos/{VID}", headers={"Authorization": "Bearer r"}).status_code == 200
        detail = c.delete(f"/v1/videos/{VID}", headers={"Authorization": "Bearer r"}).json()["detail"]
        assert "VIDRET_API_KEY" in detail
    with _client(fresh_index, read_api_key="r", api_key="w") as c:
        assert c.delete(f"/v1/videos/{VID}", headers={"Authorization": "Bearer r"}).status_code == 403
        assert c.delete(f"/v1/videos/{VID}", headers={"Authorization": "Bearer w"}).status_code == 204


def test_metrics_behind_its_key_and_docs_only_with_local_assets(index_dir: Path, tmp_path: Path) -> None:
    with _client(index_dir, metrics_api_key="m") as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer x"}).status_code == 403
        r = c.get("/metrics", headers={"Authorization": "Bearer m"})
        assert r.status_code == 200 and "vidret_index_size" in r.text
        assert c.get("/docs").status_code == 404  # off by default: no page that loads a third-party script
        assert c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
    with pytest.raises(UserError, match="VIDRET_DOCS_ASSETS"):
        create_app(Settings(index=index_dir, docs=True))
    assets = tmp_path / "swagger"
    assets.mkdir()
    (assets / "swagger-ui-bundle.js").write_text("window.SwaggerUIBundle = function () {};")
    (assets / "swagger-ui.css").write_text("body {}")
    with _client(index_dir, docs=True, docs_assets=assets) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text)
        assert "/docs/assets/swagger-ui-bundle.js" in urls and "/docs/assets/swagger-ui.css" in urls
        assert not [u for u in urls if re.match(r"(?i)(https?:)?//", u)], urls  # nothing from another host
        assert "http://" not in page.text and "https://" not in page.text
        assert c.get("/docs/assets/swagger-ui-bundle.js").text.startswith("window.SwaggerUIBundle")


def test_trailing_slash_redirects_are_relative(index_dir: Path) -> None:
    with _client(index_dir) as c:
        for host in ("localhost:8000", "127.0.0.1"):
            r = c.get("/v1/index/?x=1", headers={"Host": host}, follow_redirects=False)
            assert r.status_code in (307, 308) and r.headers["location"] == "/v1/index?x=1", r.headers
        r = c.get("/v1/review/queue/", follow_redirects=False)
        assert r.headers["location"] == "/v1/review/queue"


HUGE = 10**30


def test_huge_integers_get_422(index_dir: Path) -> None:
    with _client(index_dir) as c:
        for path in ("/v1/evaluate", "/v1/evaluate/queries"):
            for ks in ([HUGE], [2**63], [1, 2**31], list(range(1, 100))):
                r = c.post(path, json={"all": True, "ks": ks})
                assert r.status_code == 422, (path, ks[:3], r.status_code, r.text[:200])
            assert c.post(path, json={"all": True, "ks": [1, 5]}).status_code == 200
        for path in ("/v1/videos", "/v1/review/queue"):
            for offset in (2**63, HUGE, 2**31):
                assert c.get(path, params={"offset": offset}).status_code == 422, (path, offset)
            assert c.get(path, params={"offset": 2**31 - 1}).status_code == 200, path
        for body in ({"id": VID, "k": HUGE}, {"id": VID, "k": 2**63}):
            assert c.post("/v1/search", json=body).status_code == 422
        assert c.post("/v1/search/batch", json={"queries": [{"id": VID}], "k": HUGE}).status_code == 422


def test_json_bodies_have_their_own_small_limit(index_dir: Path) -> None:
    with _client(index_dir, max_json_kb=64) as c:
        body = json.dumps({"queries": [{"embedding": [0.125] * 64}] * 300, "k": 1}).encode()
        assert len(body) > 64 * 1024
        r = c.post("/v1/search/batch", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "VIDRET_MAX_JSON_KB=64" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it arrives
            for i in range(0, len(body), 4096):
                yield body[i : i + 4096]

        r = c.post("/v1/search/batch", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/evaluate", json={"all": True, "ks": [1]}).status_code == 200  # small bodies pass
    with _client(index_dir) as c:  # the default: 2 MiB, far below the 64 MiB upload limit
        big = b'{"queries": [' + b'{"id": "x"},' * 200_000 + b'{"id": "x"}]}'
        r = c.post("/v1/search/batch", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "VIDRET_MAX_JSON_KB=2048" in r.json()["detail"]


def test_lists_are_capped_and_a_422_lists_few_errors(index_dir: Path) -> None:
    with _client(index_dir) as c:
        r = c.post("/v1/search/batch", json={"queries": [{"id": 1, "embedding": "x", "zz" * 500: 1}] * 1500})
        assert r.status_code == 422
        assert len(r.content) < 4000, len(r.content)
        assert "more errors" in r.json()["detail"]
        r = c.post("/v1/search/batch", json={"queries": [{"id": VID}] * 5000, "k": 1})
        assert r.status_code == 422 and "queries" in r.json()["detail"]
        r = c.post("/v1/evaluate", json={"query_ids": [VID], "ks": list(range(1, 300_000, 7))})
        assert r.status_code == 422


def test_the_audit_import_looks_ids_up_off_the_event_loop(served: dict) -> None:
    """Each id of an imported audit is looked up (on Milvus, a query): in a worker thread, never on the event loop,
    which would hold up every other request meanwhile."""
    with _client(**served) as c:
        index = c.app.state.vidret.index
        ids = [m.id for m in index.page(0, 50)]
        lookups = {"on the loop": 0, "in a thread": 0}
        real_get = index.get

        def get(vid):
            try:
                asyncio.get_running_loop()
                lookups["on the loop"] += 1
            except RuntimeError:
                lookups["in a thread"] += 1
            return real_get(vid)

        index.get = get
        rows = "".join(f"{v},id0000,0.5,id0001,0.4,0.5\n" for v in [*ids, "nope1", "nope2"])
        csv = "id,label,p_label,predicted,p_predicted,suspicion\n" + rows
        r = c.post("/v1/review/audit", files={"file": ("a.csv", csv.encode(), "text/csv")})
        assert r.status_code == 201 and r.json()["unknown_ids"] == 2, r.text
        assert lookups == {"on the loop": 0, "in a thread": len(ids) + 2}


def test_health_answers_at_once_while_heavy_routes_are_full(index_dir: Path, monkeypatch) -> None:
    """48 concurrent evaluations that each hold a worker thread for 2 s: at most VIDRET_MAX_CONCURRENT_EVALUATIONS
    run, the others get 503 with Retry-After at once, and /health and /ready answer within 1 s throughout."""
    import service.api.evaluate as evaluate

    running, most = 0, 0
    lock = threading.Lock()
    real = evaluate._evaluate

    def slow_evaluate(state, req):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(2.0)  # a heavy evaluation: a worker thread held for its length
        with lock:
            running -= 1
        return real(state, req)

    monkeypatch.setattr(evaluate, "_evaluate", slow_evaluate)
    settings = Settings(index=index_dir, max_concurrent_evaluations=2, search_coalesce=1)
    with RealServer(settings) as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as c:
        body = {"query_ids": [VID], "ks": [1]}
        with ThreadPoolExecutor(48) as pool:
            answers = [pool.submit(c.post, "/v1/evaluate", json=body) for _ in range(48)]
            time.sleep(0.5)
            worst = 0.0
            for _ in range(6):
                for path in ("/health", "/ready"):
                    t0 = time.perf_counter()
                    assert c.get(path).status_code == 200
                    worst = max(worst, time.perf_counter() - t0)
                time.sleep(0.1)
            statuses = [a.result() for a in answers]
    assert worst < 1.0, f"/health or /ready took {worst:.2f} s under load"
    assert most <= 2
    codes = sorted(r.status_code for r in statuses)
    assert codes.count(200) >= 2 and codes.count(503) >= 30 and set(codes) <= {200, 503}, codes
    busy = next(r for r in statuses if r.status_code == 503)
    assert busy.headers["retry-after"].isdigit() and "VIDRET_MAX_CONCURRENT_EVALUATIONS" in busy.json()["detail"]

"""`vidret health --url URL`, the images' HEALTHCHECK: exit 0 on a 200, 1 with one line otherwise, never a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import run_cli


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            threading.Event().wait(3)
        code = {"/health": 200, "/slow": 200, "/starting": 503}.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(res, code: int, text: str) -> None:
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == code, out
    assert len(out.splitlines()) == 1 and text in out and "Traceback" not in out, out


def test_health_passes_on_200(server: str) -> None:
    _check(run_cli("health", "--url", f"{server}/health"), 0, "healthy")


def test_health_fails_on_other_status_refusal_timeout_and_bad_url(server: str) -> None:
    _check(run_cli("health", "--url", f"{server}/starting"), 1, "answered 503")
    _check(run_cli("health", "--url", f"{server}/nope"), 1, "answered 404")
    _check(run_cli("health", "--url", f"http://127.0.0.1:{_closed_port()}/health"), 1, "refused")
    _check(run_cli("health", "--url", f"{server}/slow", "--timeout", "0.5"), 1, "timed out")
    _check(run_cli("health", "--url", "127.0.0.1:8000/health"), 1, "not an http(s) URL")

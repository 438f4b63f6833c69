"""The request body limit holds before the body is stored: a declared Content-Length over VIDRET_MAX_UPLOAD_MB is
refused without reading the body, and a chunked body is cut off as soon as it passes the limit."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from service.settings import Settings
from tests.service.test_security import RealServer

LIMIT_MB = 1


def _response(conn: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _server(index: Path) -> RealServer:
    return RealServer(Settings(index=index, max_upload_mb=LIMIT_MB, search_coalesce=1))


def test_a_declared_oversized_body_is_refused_without_reading_it(index_dir: Path) -> None:
    with _server(index_dir) as server, socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/search/video HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            b"boundary=x\r\nContent-Length: 10000000000\r\n\r\n"
        )  # 10 GB announced, not one byte sent
        t0 = time.monotonic()
        status, body = _response(conn)
    assert status == 413 and "VIDRET_MAX_UPLOAD_MB=1" in body["detail"]
    assert time.monotonic() - t0 < 10  # answered at once, not after a body that never comes


def test_a_chunked_body_is_cut_off_at_the_limit(index_dir: Path) -> None:
    sent = 0
    with _server(index_dir) as server, socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/search/video HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            b"boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        head = (
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n"
        )  # a well-formed part whose file never ends
        conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        chunk = b"\x00" * (256 * 1024)
        try:
            for _ in range(256):  # 64 MB offered; the server must answer long before the end
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = _response(conn)
    assert status == 413 and "VIDRET_MAX_UPLOAD_MB" in body["detail"]
    assert sent < 256 * len(chunk)  # cut off mid-stream: the rest was never read


def test_bodies_under_the_limit_pass(index_dir: Path) -> None:
    with _server(index_dir) as server:
        status, text = server.request(
            "POST",
            "/v1/search",
            [b"Content-Type: application/json"],
            json.dumps({"id": "id0008_c2_s1", "k": 2}).encode(),
        )
    assert status == 200 and len(json.loads(text)["results"]) == 2

"""The server as real processes against hostile clients: a page on another origin in headless Chromium (no cross-site
writes), a rebound host name, uvicorn started directly on all interfaces (the write policy follows the socket), and
slow clients (half-sent headers past the file limit, stalled uploads)."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import VIDRET
from tests.e2e.test_serve_process import CHROMIUM, _chromium, _free_port

VID = "id0008_c2_s0"


def _start(cmd: list[str], env: dict[str, str], preexec=None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        preexec_fn=preexec,
    )


def _wait_ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-2000:])
        time.sleep(0.3)
    raise AssertionError("the server did not become ready")


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_uvicorn_factory_write_policy_follows_the_listening_socket(index: Path, tmp_path: Path) -> None:
    """`uvicorn service.app:create_app --factory` on 0.0.0.0 without a key refuses a keyless delete, even reached
    through 127.0.0.1 and whatever VIDRET_HOST says; on 127.0.0.1 it takes one, even with VIDRET_HOST=0.0.0.0."""
    loop_index = tmp_path / "loop"
    shutil.copytree(index, loop_index)
    ports = _free_port(), _free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--log-level", "warning"]
    public = _start([*uvicorn, "--host", "0.0.0.0", "--port", str(ports[0])], {"VIDRET_INDEX": str(index)})
    local = _start(
        [*uvicorn, "--host", "127.0.0.1", "--port", str(ports[1])],
        {"VIDRET_INDEX": str(loop_index), "VIDRET_HOST": "0.0.0.0"},
    )
    try:
        _wait_ready(public, f"http://127.0.0.1:{ports[0]}")
        _wait_ready(local, f"http://127.0.0.1:{ports[1]}")
        r = httpx.delete(f"http://127.0.0.1:{ports[0]}/v1/videos/{VID}")
        assert r.status_code == 403 and "non-loopback" in r.json()["detail"], r.text
        assert httpx.get(f"http://127.0.0.1:{ports[0]}/v1/videos/{VID}").status_code == 200
        assert httpx.delete(f"http://127.0.0.1:{ports[1]}/v1/videos/{VID}").status_code == 204
    finally:
        _stop(public, local)


def _limit_files(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return preexec


def _response_within(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    try:
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_slow_clients_do_not_starve_the_server(index: Path) -> None:
    """300 half-sent requests against a 256-file limit: the server bounds its connections below the limit, drops
    headers that stall, and /health answers again within the header timeout. An unauthorised upload is refused
    before its body is read; an authorised one that stalls gets 408."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"VIDRET_API_KEY": "k", "VIDRET_HEADER_TIMEOUT_S": "2", "VIDRET_BODY_TIMEOUT_S": "2"}
    cmd = [*VIDRET, "serve", "--index", str(index), "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    proc = _start(cmd, env, preexec=_limit_files(256))
    held: list[socket.socket] = []
    try:
        _wait_ready(proc, url)
        t0 = time.monotonic()
        for _ in range(300):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                held.append(s)
            except OSError:
                pass
        answered = None
        while time.monotonic() - t0 < 10 and answered is None:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    answered = time.monotonic() - t0
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answered is not None, "/health did not answer within 10 s of 300 half-sent requests"
        time.sleep(1.0)
        closed = sum(1 for s in held if _closed(s))
        assert closed == len(held), f"{len(held) - closed} of {len(held)} half-sent requests still open"

        def upload(auth: bytes) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            head = (
                b"POST /v1/videos HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"Content-Type: multipart/form-data; "
                b"boundary=b\r\nContent-Length: 25165824\r\n\r\n--b\r\nContent-Disposition: form-data; "
                b'name="file"; filename="a.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
            )
            s.sendall(head + b"\0" * (1 << 20))
            return s

        with upload(b"") as s:  # no key: 401 at once, the 23 MB never awaited
            reply = _response_within(s, 3)
            assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        t1 = time.monotonic()
        with upload(b"Authorization: Bearer k\r\n") as s:  # the right key, then the body stalls: 408
            reply = _response_within(s, 8)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert time.monotonic() - t1 < 6
        assert not (index / "videos").exists() or not any((index / "videos").iterdir())  # nothing stored
        assert httpx.get(f"{url}/health", timeout=2).status_code == 200
    finally:
        for s in held:
            s.close()
        _stop(proc)


def _closed(s: socket.socket) -> bool:
    """Whether the server has closed (or answered and closed) this connection."""
    s.settimeout(0.05)
    try:
        while s.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_the_soft_file_limit_is_raised_at_start() -> None:
    code = "from service.server import raise_file_limit; print(raise_file_limit())"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_soft_files(256), check=True
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    assert int(res.stdout) == want


def _soft_files(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return preexec


ATTACK = """async ([target, video, id]) => {
  const tried = {};
  const note = async (name, f) => { try { await f(); tried[name] = 'sent'; } catch (e) { tried[name] = String(e); } };
  const bytes = await (await fetch(video)).blob();
  await note('add', () => { const fd = new FormData(); fd.append('id', 'evil1');
    fd.append('file', new File([bytes], 'a.mp4', {type: 'video/mp4'}));
    return fetch(target + '/v1/videos', {method: 'POST', mode: 'no-cors', body: fd}); });
  await note('import', () => { const fd = new FormData();
    const csv = 'id,label,p_label,predicted,p_predicted,suspicion\\n' + id + ',id0000,0.1,id0001,0.9,0.9\\n';
    fd.append('file', new File([csv], 'a.csv', {type: 'text/csv'}));
    return fetch(target + '/v1/review/audit', {method: 'POST', mode: 'no-cors', body: fd}); });
  await note('delete', () => fetch(target + '/v1/videos/' + id, {method: 'DELETE'}));
  await note('decide', () => fetch(target + '/v1/review/decisions/' + id, {method: 'PUT',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({action: 'drop'})}));
  await note('decide, no-cors', () => fetch(target + '/v1/review/decisions/' + id, {method: 'POST', mode: 'no-cors',
    headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({action: 'drop'})}));
  return tried;
}"""


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_a_page_on_another_origin_cannot_write(index: Path, checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    target = f"http://127.0.0.1:{port}"
    cmd = [*VIDRET, "serve", "--index", str(index), "--checkpoint", str(checkpoint), "--port", str(port)]
    proc = _start([*cmd, "--device", "cpu", "--log-level", "warning"], {"VIDRET_API_KEY": ""})  # keyless, loopback
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>another site</title><p>hello</p>")
    shutil.copy(synth_dir / "videos" / "id0007" / "c1_s0.mp4", site / "clip.mp4")
    other = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(site)))
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        _wait_ready(proc, target)
        with sync_playwright() as p:
            browser = _chromium(p)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/index.html")
            tried = page.evaluate(ATTACK, [target, "/clip.mp4", VID])
            assert tried["add"] == "sent" and tried["import"] == "sent", tried  # the requests did leave the browser
            browser.close()
            rebinding = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--host-resolver-rules=MAP rebind.test 127.0.0.1",
                ],
            )
            page = rebinding.new_page()
            listing = page.goto(f"http://rebind.test:{port}/v1/videos")
            assert listing.status == 400, listing.status  # the rebound name reads nothing...
            status = page.evaluate(f"async () => (await fetch('/v1/videos/{VID}', {{method: 'DELETE'}})).status")
            assert status == 400  # ...and deletes nothing
            rebinding.close()
        assert httpx.get(f"{target}/v1/videos/evil1").status_code == 404
        assert httpx.get(f"{target}/v1/videos/{VID}").status_code == 200
        queue = httpx.get(f"{target}/v1/review/queue").json()
        assert queue["audit"] is None and queue["decided"] == 0, queue
        page_origin = {"Origin": target, "Sec-Fetch-Site": "same-origin"}  # the server's own page still writes
        assert httpx.delete(f"{target}/v1/videos/{VID}", headers=page_origin).status_code == 204
    finally:
        other.shutdown()
        _stop(proc)

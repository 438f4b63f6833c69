"""`vidret serve` as a real process: adds and deletes survive SIGKILL; the web page works in headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import VIDRET, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index: Path, checkpoint: Path) -> None:
        self.index, self.checkpoint, self.port = index, checkpoint, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.proc = subprocess.Popen([*VIDRET, "serve", "--index", str(self.index), "--checkpoint",
                                      str(self.checkpoint), "--port", str(self.port), "--device", "cpu"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "VIDRET_API_KEY": "k"})
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stderr.read().decode()[-2000:])
            time.sleep(0.3)
        raise AssertionError("the server did not become ready")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture()
def index(embeddings: dict[str, Path], tmp_path: Path) -> Path:
    assert run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", tmp_path / "ix").returncode == 0
    return tmp_path / "ix"


def test_add_and_delete_survive_sigkill(index: Path, checkpoint: Path, synth_dir: Path) -> None:
    video = synth_dir / "videos" / "id0007" / "c1_s0.mp4"
    auth = {"Authorization": "Bearer k"}
    server = Server(index, checkpoint).start()
    try:
        r = httpx.post(f"{server.url}/v1/videos", files={"file": ("v.mp4", video.read_bytes(), "video/mp4")},
                       data={"id": "kept", "label": "L", "camera": "c5"}, headers=auth, timeout=60)
        assert r.status_code == 201, r.text
        server.kill()  # the instant after the 201
        server.start()
        assert httpx.get(f"{server.url}/v1/videos/kept").json()["camera"] == "c5"
        hits = httpx.post(f"{server.url}/v1/search", json={"id": "kept", "k": 1, "exclude_self": False}).json()
        assert hits["results"][0]["id"] == "kept"
        assert httpx.get(f"{server.url}/v1/index").json()["count"] == 19
        assert httpx.delete(f"{server.url}/v1/videos/kept", headers=auth).status_code == 204
        server.kill()
        server.start()
        assert httpx.get(f"{server.url}/v1/videos/kept").status_code == 404
        assert httpx.get(f"{server.url}/v1/index").json()["count"] == 18
    finally:
        server.stop()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_page_upload_shows_thumbnails(index: Path, checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = Server(index, checkpoint).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])  # fresh profile
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#info').textContent.includes('videos')")
            page.set_input_files("#file", str(synth_dir / "videos" / "id0009" / "c2_s0.mp4"))
            page.click("#by-upload button")
            page.wait_for_selector("#results .card img")
            page.wait_for_function("[...document.querySelectorAll('#results .card img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=30000)
            cards = page.locator("#results .card")
            assert cards.count() == 10
            assert page.locator("#results .card").first.get_attribute("data-id") == "id0009_c2_s0"
            assert "results for" in page.locator("#status").inner_text()
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.stop()

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

from tests.conftest import VIDRET


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, index: Path, checkpoint: Path, *args: str, command: list[str] | None = None) -> None:
        self.index, self.checkpoint, self.port, self.args = index, checkpoint, _free_port(), args
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.command = command or VIDRET  # how `vidret` is run

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [
                *self.command,
                "serve",
                "--index",
                str(self.index),
                "--checkpoint",
                str(self.checkpoint),
                "--port",
                str(self.port),
                "--device",
                "cpu",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "VIDRET_API_KEY": "k"},
        )
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


def test_add_and_delete_survive_sigkill(index: Path, checkpoint: Path, synth_dir: Path) -> None:
    video = synth_dir / "videos" / "id0007" / "c1_s0.mp4"
    auth = {"Authorization": "Bearer k"}
    server = Server(index, checkpoint).start()
    try:
        r = httpx.post(
            f"{server.url}/v1/videos",
            files={"file": ("v.mp4", video.read_bytes(), "video/mp4")},
            data={"id": "kept", "label": "L", "camera": "c5"},
            headers=auth,
            timeout=60,
        )
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


def _chromium(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )  # fresh profile


def _page(browser):
    """A tab that ignores the page's content security policy: Playwright's wait_for_function evaluates its predicate
    with eval, which the policy forbids. So these tests check the page's own behaviour, without the policy's help;
    the policy is checked on its own (test_web_page_policy_blocks_injected_handlers)."""
    return browser.new_page(bypass_csp=True)


ALL_THUMBNAILS_SHOWN = (
    "[...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)"
)


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_page_upload_shows_thumbnails(index: Path, checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = Server(index, checkpoint).start()
    try:
        with sync_playwright() as p:
            browser = _chromium(p)
            page = _page(browser)
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#info').textContent.includes('videos')")
            page.set_input_files("#file", str(synth_dir / "videos" / "id0009" / "c2_s0.mp4"))
            page.click("#by-upload button")
            page.wait_for_selector("#results .card img")
            page.wait_for_function(ALL_THUMBNAILS_SHOWN, timeout=30000)
            cards = page.locator("#results .card")
            assert cards.count() == 10
            assert page.locator("#results .card").first.get_attribute("data-id") == "id0009_c2_s0"
            assert "results for" in page.locator("#status").inner_text()
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.stop()


PAYLOAD = '<img src=x onerror="window.__pwned=1">'


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_page_shows_labels_as_text_and_runs_none_of_them(index: Path, checkpoint: Path, synth_dir: Path) -> None:
    """Stored XSS: a video labelled with markup is listed and searched; the page shows the markup as text, no
    element of it appears and its script never runs (and the page's policy would block it if it did appear)."""
    from playwright.sync_api import sync_playwright

    video = (synth_dir / "videos" / "id0003" / "c1_s0.mp4").read_bytes()
    server = Server(index, checkpoint).start()
    try:
        for vid in ("xss", "xss-twin"):  # the same video twice: each is the other's best match
            r = httpx.post(
                f"{server.url}/v1/videos",
                files={"file": ("v.mp4", video, "video/mp4")},
                data={"id": vid, "label": PAYLOAD, "camera": "<b>cam</b>"},
                headers={"Authorization": "Bearer k"},
                timeout=60,
            )
            assert r.status_code == 201, r.text
        with sync_playwright() as p:
            browser = _chromium(p)
            page = _page(browser)
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#info').textContent.includes('videos')")
            assert page.locator("#video-id option[value='xss']").inner_text() == f"xss ({PAYLOAD})"
            page.select_option("#video-id", "xss")
            page.click("#by-id button")
            twin = page.locator("#results .card[data-id='xss-twin']")
            twin.wait_for()
            cards, images = page.locator("#results .card"), page.locator("#results img")
            assert images.count() == cards.count() == 11  # the query and 10 hits, one thumbnail each: nothing injected
            assert PAYLOAD in page.locator("#results .card.query").inner_text()
            assert PAYLOAD in twin.inner_text() and "<b>cam</b>" in twin.inner_text()
            page.wait_for_function(ALL_THUMBNAILS_SHOWN, timeout=30000)
            assert page.evaluate("window.__pwned") is None
            browser.close()
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_page_policy_blocks_injected_handlers(index: Path, checkpoint: Path) -> None:
    """Defence in depth: markup that reached the page anyway could not run its handlers (content security policy),
    while the page's own script runs."""
    from playwright.sync_api import sync_playwright

    server = Server(index, checkpoint).start()
    try:
        with sync_playwright() as p:
            browser = _chromium(p)
            page = browser.new_page()  # the policy applies
            page.goto(server.url + "/")
            page.locator("#video-id option").first.wait_for(state="attached")  # the page's script ran
            blocked = page.evaluate("""() => new Promise((resolve) => {
                document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective));
                setTimeout(() => resolve('not blocked'), 15000);
                document.body.insertAdjacentHTML('beforeend', '<img src="x" onerror="window.__pwned=2">');
            })""")
            assert blocked.startswith("script-src") and page.evaluate("window.__pwned") is None
            browser.close()
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_web_page_asks_for_the_read_key(index: Path, checkpoint: Path) -> None:
    """With a read key, the page still loads but says it needs the key; once entered, listing, searching and the
    thumbnails work, for the rest of the tab's session; 'Forget' locks it again."""
    from playwright.sync_api import sync_playwright

    server = Server(index, checkpoint, "--read-api-key", "reader").start()
    try:
        assert httpx.get(f"{server.url}/v1/videos").status_code == 401
        with sync_playwright() as p:
            browser = _chromium(p)
            page = _page(browser)
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#info').textContent.includes('401')")
            assert "API key" in page.locator("#info").inner_text()
            page.fill("#api-key", "reader")
            page.click("#key-form button[type=submit]")
            page.wait_for_function("document.querySelector('#info').textContent.includes('18 videos')")
            page.click("#by-id button")
            page.wait_for_selector("#results .card img")
            page.wait_for_function(ALL_THUMBNAILS_SHOWN, timeout=30000)
            assert page.locator("#results .card").count() == 11
            page.reload()  # the key stays for this tab
            page.wait_for_function("document.querySelector('#info').textContent.includes('18 videos')")
            page.click("#forget-key")
            page.wait_for_function("document.querySelector('#info').textContent.includes('401')")
            browser.close()
    finally:
        server.stop()

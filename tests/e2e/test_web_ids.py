"""Ids in what the page sends, in headless Debian chromium against a real `vidret serve`: ids that URLs treat
specially ('a b', 'ü', 'x?y#z', '%41') reach the server percent-encoded whole (thumbnails, clips, decisions), and
decisions land on the video shown; ids that are paths or hold a control character are refused on add (422)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from tests.conftest import run_cli
from tests.e2e.test_serve_process import CHROMIUM, Server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
AUTH = {"Authorization": "Bearer k"}  # the Server helper's VIDRET_API_KEY
ODD_IDS = ["a b", "ü", "x?y#z", "%41"]
REFUSED = ["x/../victim", "..", "a/video", "a/thumbnail", "dup\n", "\U0001f600" * 60]


@pytest.fixture(scope="module")
def server(embeddings: dict[str, Path], checkpoint: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    index = tmp_path_factory.mktemp("webids") / "index"
    res = run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", index)
    assert res.returncode == 0, res.stderr
    srv = Server(index, checkpoint).start()
    video = (synth_dir / "videos" / "id0001" / "c2_s1.mp4").read_bytes()
    try:
        for vid in REFUSED:
            r = _add(srv, video, vid)
            assert r.status_code == 422 and r.json()["detail"], (vid, r.text)
        victim = httpx.get(f"{srv.url}/v1/videos/victim", timeout=30)
        assert victim.status_code == 404
        for vid in ODD_IDS:
            r = _add(srv, video, vid)
            assert r.status_code == 201, (vid, r.text)
        audit = "id,label,p_label,predicted,p_predicted,suspicion\n" + "".join(
            f'"{v}",L,0.1,M,0.9,{0.9 - i / 100}\n' for i, v in enumerate(ODD_IDS)
        )
        r = httpx.post(
            f"{srv.url}/v1/review/audit", files={"file": ("a.csv", audit.encode())}, headers=AUTH, timeout=60
        )
        assert r.status_code == 201 and r.json()["rows"] == len(ODD_IDS), r.text
        yield srv
    finally:
        srv.stop()


def _add(srv: Server, video: bytes, vid: str) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/videos",
        files={"file": ("x.mp4", video, "video/mp4")},
        data={"id": vid, "label": "L", "camera": "c9"},
        headers=AUTH,
        timeout=120,
    )


def test_the_page_percent_encodes_every_id(server: Server) -> None:
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_serve_process import _chromium

    with sync_playwright() as p:
        browser = _chromium(p)
        context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 860})
        page = context.new_page()
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.url))
        try:
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelector('#info').textContent.includes('videos')")
            for vid in ODD_IDS:  # each one's rank list: its thumbnail, and its clip on hover
                page.evaluate("id => { location.hash = searchHref(id); }", vid)
                page.wait_for_function(
                    "id => document.querySelector('#results .card.query')?.dataset.id === id", arg=vid
                )
                page.wait_for_function(
                    "id => performance.getEntriesByType('resource').some(e => e.name.endsWith("
                    "'/v1/videos/' + encodeURIComponent(id) + '/thumbnail'))",
                    arg=vid,
                )
            page.fill("#api-key", "k")  # decisions need the write key
            page.click("#key-form button[type=submit]")
            page.wait_for_function("document.querySelector('#key-note').textContent.includes('key is set')")
            page.click("#tab-review")
            page.wait_for_function(f"document.querySelectorAll('#queue .qitem').length === {len(ODD_IDS)}")
            items = page.locator("#queue .qitem")
            assert items.evaluate_all("li => li.map(x => x.dataset.id)") == ODD_IDS
            items.first.focus()
            for i in range(len(ODD_IDS)):
                page.keyboard.press("d")  # drop, then on to the next one
                page.wait_for_function(f"document.querySelectorAll('#queue .qitem')[{i}].dataset.decision === 'drop'")
        finally:
            context.close()
            browser.close()

    paths = [urlsplit(u).path for u in sent if urlsplit(u).path.startswith("/v1/")]
    for vid in ODD_IDS:
        enc = quote(vid, safe="")  # what encodeURIComponent writes for these ids
        assert f"/v1/videos/{enc}/thumbnail" in paths, (vid, paths)
        assert f"/v1/review/decisions/{enc}" in paths, (vid, paths)
    known = set(ODD_IDS) | {v["id"] for v in httpx.get(f"{server.url}/v1/videos", timeout=30).json()["videos"]}
    for path in paths:  # every id in a URL is one percent-encoded segment that names a video
        parts = path.split("/")
        if parts[:3] == ["", "v1", "videos"] and len(parts) > 3:
            assert unquote(parts[3]) in known and parts[4:] in ([], ["thumbnail"], ["video"]), path
    queue = httpx.get(f"{server.url}/v1/review/queue", timeout=30).json()
    decided = {i["id"]: i["decision"]["action"] for i in queue["items"] if i["decision"]}
    assert decided == dict.fromkeys(ODD_IDS, "drop")  # each decision names the video it was made on
    for vid in ODD_IDS:
        r = httpx.get(f"{server.url}/v1/videos/{quote(vid, safe='')}", timeout=30)
        assert r.status_code == 200 and r.json()["id"] == vid
    assert json.loads(httpx.get(f"{server.url}/v1/videos/%2541", timeout=30).text)["id"] == "%41"

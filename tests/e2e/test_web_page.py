"""The web page as a tool, in headless Debian chromium against a real `vidret serve`: the suggest box and the
keyboard, rank lists marked right/wrong with the query's AP, clips that play, the paged gallery, the evaluation view
(progress, CMC curve, worst queries), and the label review (an audit made by `vidret audit`, decisions by keyboard,
the cleaned manifest, and decisions that survive kill -9 of the server).

Set VIDRET_SCREENSHOT_DIR (e.g. docs/img) to keep the two screenshots of docs/api.md."""

from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import VIDRET
from tests.e2e.test_serve_process import CHROMIUM, Server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]
PAYLOAD = '<img src=x onerror="window.__pwned=1">'
GREEN, RED = "rgb(24, 128, 56)", "rgb(217, 48, 37)"
MAX_EVAL = 10  # the server's VIDRET_MAX_EVAL_QUERIES: the evaluation view must split its 24 queries
PLAYING = """(() => { const v = document.querySelector('#results .card:not(.query) video.clip');
    return v !== null && !v.hidden && v.readyState >= 2 && v.currentTime > 0; })()"""


@pytest.fixture(scope="module")
def made(checkpoint: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training split indexed (labels the checkpoint knows, 25% wrong), and `vidret audit` of it: the command
    runs while the index is built here."""
    from indexing.faiss_index import VideoIndex
    from training.embed import embed_manifest

    out = tmp_path_factory.mktemp("webpage")
    audit = subprocess.Popen(
        [
            *VIDRET,
            "audit",
            "--checkpoint",
            str(checkpoint),
            "--manifest",
            str(synth_dir / "train.csv"),
            "--out",
            str(out / "suspects.csv"),
            "--workers",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        emb = embed_manifest(checkpoint, synth_dir / "train.csv", out / "train.npz", workers=0, device="cpu")
        VideoIndex.build(emb, out / "index", type="flat", checkpoint_sha256=emb.checkpoint_sha256).close()
    finally:
        _, err = audit.communicate(timeout=300)
    assert audit.returncode == 0, err.decode()[-2000:]
    return {"index": out / "index", "audit": out / "suspects.csv"}


@pytest.fixture(scope="module")
def server(made: dict[str, Path], checkpoint: Path):
    srv = Server(made["index"], checkpoint, "--max-eval-queries", str(MAX_EVAL)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_serve_process import _chromium

    with sync_playwright() as p:
        b = _chromium(p)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server: Server):
    """A tab (that ignores the page's policy: Playwright's wait_for_function evaluates with eval; the policy is
    tested in test_serve_process.py) on the page, once it has loaded the index."""
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.goto(server.url + "/")
    tab.wait_for_function("document.querySelector('#info').textContent.includes('24 videos')")
    yield tab
    context.close()


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("VIDRET_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def _api(server: Server, method: str, path: str, **kw) -> dict:
    r = httpx.request(method, server.url + path, timeout=60, **kw)
    assert r.status_code < 300, r.text
    return r.json()


def test_suggest_box_keyboard_and_rank_list_marked_right_and_wrong(page, server: Server) -> None:
    page.fill("#k-id", "23")  # every other video: some share the query's label, some do not
    page.click("#q")
    page.keyboard.type("ID0003_C2")  # ids and labels, case-insensitive
    page.wait_for_function("document.querySelectorAll('#video-id option').length === 2")
    assert page.locator("#video-id option").all_inner_texts()[0].startswith("id0003_c2_s0 (")
    assert page.locator("#suggest-note").inner_text() == "2 matches"
    page.keyboard.press("ArrowDown")  # into the list, on the first suggestion
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    query = "id0003_c2_s1"
    page.wait_for_selector(f"#results .card.query[data-id='{query}']")
    page.wait_for_function("document.querySelectorAll('#results .card').length === 24")
    assert page.evaluate("location.hash") == f"#search/{query}"

    label = _api(server, "GET", f"/v1/videos/{query}")["label"]
    ap = _api(server, "POST", "/v1/evaluate", json={"query_ids": [query]})["mAP"]
    page.wait_for_function("document.querySelector('#ap .value') !== null")
    assert float(page.locator("#ap .value").inner_text()) == pytest.approx(ap, abs=5e-4 + 1e-9)  # shown to 3 decimals
    hits = page.locator("#results .card:not(.query)")
    marks = hits.evaluate_all("""cards => cards.map(c => ({label: c.dataset.label, cls: [...c.classList],
        border: getComputedStyle(c).borderTopColor, verdict: c.querySelector('.verdict').textContent}))""")
    assert len(marks) == 23
    assert {m["label"] == label for m in marks} == {True, False}  # both kinds are on the list
    for m in marks:
        same = m["label"] == label
        assert ("match" in m["cls"]) == same and ("miss" in m["cls"]) == (not same)
        assert m["border"] == (GREEN if same else RED) and m["verdict"].startswith("✓" if same else "✗")
    n_same = sum(m["label"] == label for m in marks)
    assert f"{n_same} of 23 hits share its label" in page.locator("#ap").inner_text()
    page.set_viewport_size({"width": 1280, "height": 1000})
    _screenshot(page, "rank_list.png")


def test_a_hit_plays_its_clip_on_hover_and_click(page, server: Server) -> None:
    page.evaluate("location.hash = '#search/id0001_c1_s0'")
    card = page.locator("#results .card:not(.query)").first
    card.wait_for()
    with page.expect_response(lambda r: r.url.endswith("/video")) as clip:
        card.hover()
    assert clip.value.status in (200, 206) and clip.value.headers["accept-ranges"] == "bytes"
    video = card.locator("video.clip")
    video.wait_for()
    assert video.get_attribute("src").endswith(f"/v1/videos/{card.get_attribute('data-id')}/video")  # no key
    page.wait_for_function(PLAYING, timeout=30000)
    assert card.locator("img").is_hidden()
    video.click()  # a click pauses it
    page.wait_for_function("document.querySelector('#results video.clip').paused")
    page.mouse.move(5, 5)  # leaving the card shows the thumbnail again
    page.wait_for_function("document.querySelector('#results video.clip').hidden")
    assert card.locator("img").is_visible()
    played = page.evaluate("document.querySelector('#results video.clip').currentTime")
    card.focus()  # from the keyboard: Enter plays it
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#results video.clip').currentTime !== {played}")
    assert video.is_visible() and card.locator("img").is_hidden()


def test_gallery_is_paged(page) -> None:
    page.select_option("#gallery-size", "12")
    page.wait_for_function("document.querySelector('#gallery-page').textContent.startsWith('page 1 of 2')")
    first = page.locator("#gallery .gcard").evaluate_all("cs => cs.map(c => c.dataset.id)")
    assert len(first) == 12 and page.locator("#gallery-prev").is_disabled()
    assert "24 videos" in page.locator("#gallery-page").inner_text()
    page.click("#gallery-next")
    page.wait_for_function("document.querySelector('#gallery-page').textContent.startsWith('page 2 of 2')")
    second = page.locator("#gallery .gcard").evaluate_all("cs => cs.map(c => c.dataset.id)")
    assert len(second) == 12 and not set(first) & set(second) and page.locator("#gallery-next").is_disabled()
    page.click("#gallery-prev")
    page.wait_for_function("document.querySelector('#gallery-page').textContent.startsWith('page 1 of 2')")
    page.locator("#gallery .gcard").nth(4).click()  # a gallery entry opens its rank list
    page.wait_for_selector(f"#results .card.query[data-id='{first[4]}']")


def test_evaluation_draws_cmc_and_links_the_worst_queries(page, server: Server) -> None:
    statuses = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/v1/evaluate/queries") else None)
    page.click("#tab-eval")
    assert page.locator("#view-eval").is_visible() and page.locator("#view-search").is_hidden()
    assert page.locator("#eval-count").inner_text() == "24"
    page.click("#eval-run")
    page.wait_for_function("document.querySelector('#eval-status').textContent.startsWith('done')")
    # 24 queries against VIDRET_MAX_EVAL_QUERIES=10: one refusal, then chunks of 10 (the progress bar's steps)
    assert statuses == [422, 200, 200, 200]
    assert page.eval_on_selector("#eval-progress", "p => [p.value, p.max]") == [24, 24]
    ks = list(range(1, 21))
    truth = {"mAP": 0.0, "cmc": {str(k): 0.0 for k in ks}, "n": 0}
    ids = [v["id"] for v in _api(server, "GET", "/v1/videos")["videos"]]
    for part in (ids[:10], ids[10:20], ids[20:]):
        r = _api(server, "POST", "/v1/evaluate", json={"query_ids": part, "ks": ks})
        truth["mAP"] += r["mAP"] * r["num_queries"]
        truth["n"] += r["num_queries"]
        for k in ks:
            truth["cmc"][str(k)] += r["cmc"][str(k)] * r["num_queries"]
    assert float(page.locator("#eval-map").inner_text().rstrip("%")) == pytest.approx(
        100 * truth["mAP"] / truth["n"], abs=0.05
    )
    points = page.locator("#cmc circle.point").evaluate_all(
        "cs => cs.map(c => [Number(c.dataset.rank), Number(c.dataset.value), Number(c.getAttribute('cy'))])"
    )
    assert [p[0] for p in points] == ks
    assert [p[1] for p in points] == pytest.approx([truth["cmc"][str(k)] / truth["n"] for k in ks])
    assert all(a[2] >= b[2] for a, b in zip(points, points[1:]))  # a CMC curve only rises (smaller y is higher)
    assert page.locator("#cmc polyline.curve").get_attribute("points").count(",") == 20
    assert "24 queries evaluated" in page.locator("#eval-counts").inner_text()
    rows = page.locator("#worst tbody tr")
    assert rows.count() == 10
    aps = [float(t) for t in rows.locator("td:first-child").all_inner_texts()]
    assert aps == sorted(aps)
    worst = rows.first.locator("a").inner_text()
    assert _api(server, "POST", "/v1/evaluate", json={"query_ids": [worst]})["mAP"] == pytest.approx(
        aps[0], abs=5e-4 + 1e-9
    )
    rows.first.locator("a").click()  # opens that query's rank list
    page.wait_for_selector(f"#results .card.query[data-id='{worst}']")
    assert page.locator("#view-search").is_visible()
    page.wait_for_function("document.querySelector('#ap .value') !== null")
    assert float(page.locator("#ap .value").inner_text()) == pytest.approx(aps[0], abs=1e-3 + 1e-9)
    # a sample
    page.click("#tab-eval")
    page.check("#eval-sample")
    page.fill("#eval-n", "5")
    page.click("#eval-run")
    page.wait_for_function("document.querySelector('#eval-status').textContent === 'done: 5 queries'")
    assert "5 queries evaluated" in page.locator("#eval-counts").inner_text()


def test_review_queue_by_keyboard_export_and_restart(
    page, server: Server, made: dict[str, Path], tmp_path: Path
) -> None:
    """Import the audit `vidret audit` wrote (one predicted label made markup, to be shown as text); decide four
    items by keyboard and one by mouse; see the cleaned manifest; kill -9 the server, restart it: the decisions are
    there."""
    rows = list(csv.DictReader(io.StringIO(made["audit"].read_text())))
    rows[8]["predicted"] = PAYLOAD
    upload = tmp_path / "suspects.csv"
    with open(upload, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    page.fill("#api-key", "k")  # decisions need the write key (the server's VIDRET_API_KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.querySelector('#key-note').textContent.includes('key is set')")
    page.click("#tab-review")
    page.wait_for_function("document.querySelector('#audit-info').textContent.includes('no audit yet')")
    page.set_input_files("#audit-file", str(upload))
    page.click("#audit-form button[type=submit]")
    page.wait_for_function("document.querySelector('#review-status').textContent.startsWith('imported 24')")
    items = page.locator("#queue .qitem")
    page.wait_for_function("document.querySelectorAll('#queue .qitem').length === 10")
    assert items.evaluate_all("li => li.map(x => x.dataset.id)") == [r["id"] for r in rows[:10]]
    assert "page 1 of 3 · 24 items" in page.locator("#review-page").inner_text()
    first = items.first
    assert first.locator(".given-label").inner_text() == rows[0]["label"]
    assert first.locator(".predicted-label").inner_text() == rows[0]["predicted"]
    assert first.locator(".nb").count() == 5 and first.get_attribute("data-decision") is None
    assert items.nth(8).locator(".predicted-label").inner_text() == PAYLOAD  # markup shown as text
    near = {i["id"]: i["neighbours"] for i in _api(server, "GET", "/v1/review/queue", params={"limit": 3})["items"]}
    for li, nb in near.items():  # the nearest neighbours, as the index ranks them
        shown = page.locator(f"#queue .qitem[data-id='{li}'] .nb").evaluate_all("a => a.map(x => x.dataset.id)")
        assert shown == [n["id"] for n in nb]

    ids = [r["id"] for r in rows[:4]]
    first.focus()
    page.keyboard.press("k")  # keep
    page.wait_for_selector(f"#queue .qitem[data-id='{ids[0]}'][data-decision='keep']")
    page.wait_for_function(f"document.activeElement.dataset.id === '{ids[1]}'")  # on to the next one
    page.keyboard.press("r")  # relabel to the predicted label
    page.wait_for_selector(f"#queue .qitem[data-id='{ids[1]}'][data-decision='relabel']")
    assert items.nth(1).locator(".decision").inner_text() == f"decision: relabel → {rows[1]['predicted']}"
    page.wait_for_function(f"document.activeElement.dataset.id === '{ids[2]}'")
    page.keyboard.press("l")  # type a label
    page.keyboard.type("brand-new")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#queue .qitem[data-id='{ids[2]}'][data-decision='relabel']")
    page.wait_for_function(f"document.activeElement.dataset.id === '{ids[3]}'")
    page.keyboard.press("d")  # drop
    page.wait_for_selector(f"#queue .qitem[data-id='{ids[3]}'][data-decision='drop']")
    assert "4 decided" in page.locator("#audit-info").inner_text()
    page.evaluate("window.scrollTo(0, 0)")
    page.set_viewport_size({"width": 1280, "height": 1000})
    _screenshot(page, "review_queue.png")
    items.nth(8).locator("button.relabel").click()  # by mouse: relabel to the predicted label, the markup
    page.wait_for_selector(f"#queue .qitem[data-id='{rows[8]['id']}'][data-decision='relabel']")
    assert items.nth(8).locator(".decision").inner_text() == f"decision: relabel → {PAYLOAD}"
    assert page.evaluate("window.__pwned") is None and page.locator("img[src='x']").count() == 0
    decided = {i["id"]: i["decision"] for i in _api(server, "GET", "/v1/review/queue")["items"] if i["decision"]}
    assert {k: (v["action"], v["label"]) for k, v in decided.items()} == {
        ids[0]: ("keep", None),
        ids[1]: ("relabel", rows[1]["predicted"]),
        ids[2]: ("relabel", "brand-new"),
        ids[3]: ("drop", None),
        rows[8]["id"]: ("relabel", PAYLOAD),
    }

    # with a key, a clip is fetched with it and played from a blob URL
    media = items.first.locator("img.media")
    media.hover()
    page.wait_for_function("""(() => { const v = document.querySelector('#queue .qitem video.clip');
        return v && v.src.startsWith('blob:') && v.readyState >= 2; })()""")
    page.mouse.move(5, 5)

    page.click("#export-show")
    page.wait_for_function("document.querySelector('#export').textContent.startsWith('path,label,id,camera')")
    exported = {r["id"]: r for r in csv.DictReader(io.StringIO(page.locator("#export").inner_text()))}
    assert len(exported) == 23 and ids[3] not in exported
    assert exported[ids[1]]["label"] == rows[1]["predicted"] and exported[ids[2]]["label"] == "brand-new"
    assert exported[rows[8]["id"]]["label"] == PAYLOAD
    assert exported[ids[0]]["label"] == rows[0]["label"]
    assert page.locator("#export-note").inner_text() == "23 videos"
    assert page.locator("#export-download").get_attribute("href").startswith("blob:")

    server.kill()  # kill -9, the decisions answered long ago and just now
    server.start()
    page.reload()
    page.wait_for_function("document.querySelectorAll('#queue .qitem').length === 10")
    got = page.locator("#queue .qitem").evaluate_all("li => li.map(x => x.dataset.decision || null)")
    assert got == ["keep", "relabel", "relabel", "drop", None, None, None, None, "relabel", None]
    assert page.locator("#queue .qitem").nth(2).locator(".decision").inner_text() == "decision: relabel → brand-new"
    page.check("#review-undecided")  # what is left to review
    page.wait_for_function("document.querySelector('#review-page').textContent.includes('19 items')")
    assert page.locator("#queue .qitem").first.get_attribute("data-id") == rows[4]["id"]


def test_the_page_shows_a_computed_audit_job_s_progress(page, server: Server) -> None:
    """The server's audit is a background job: the page starts it, shows its progress and then its result; a
    reloaded page finds a job that runs and follows it."""
    jobs = []

    def seen(r) -> None:
        if "/v1/review/audit/jobs/" in r.url and r.request.method == "GET" and r.ok:
            jobs.append(r.json())

    page.on("response", seen)
    page.fill("#api-key", "k")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.querySelector('#key-note').textContent.includes('key is set')")
    page.click("#tab-review")
    with page.expect_response(lambda r: r.url.endswith("/v1/review/audit/compute")) as started:
        page.click("#audit-compute")
    assert started.value.status == 202 and started.value.headers["location"].startswith("/v1/review/audit/jobs/")
    page.wait_for_function("document.querySelector('#review-status').textContent.startsWith('computed: 24 videos')")
    assert jobs and jobs[0]["state"] == "running"  # the page polled it while it ran
    assert {j["total"] for j in jobs} <= {None, 24}  # None until the job has counted the videos it audits
    done = httpx.get(server.url + started.value.headers["location"], timeout=30).json()
    assert done["state"] == "done" and done["done"] == 24 and done["result"]["rows"] == 24
    assert page.locator("#audit-progress").is_hidden() and page.locator("#audit-cancel").is_hidden()
    assert page.locator("#audit-compute").is_enabled()
    page.wait_for_function("document.querySelector('#audit-info').textContent.includes('computed by the server')")

    job = _api_post_compute(server)  # started elsewhere: the page, reloaded, follows it and can cancel it
    page.reload()
    page.evaluate("""() => new Promise((done) => { const t = setInterval(() => {
        const b = document.querySelector('#audit-cancel');
        if (!b.hidden) { clearInterval(t); b.click(); done(); } }, 5);
        setTimeout(() => { clearInterval(t); done(); }, 20000); })""")  # as soon as it shows (if the job runs still)
    page.wait_for_function(
        "/^(audit cancelled|computed)/.test(document.querySelector('#review-status').textContent)"
    )  # cancelled, unless the job finished first
    final = httpx.get(server.url + job["url"], timeout=30).json()
    assert final["state"] in ("cancelled", "done")


def _api_post_compute(server: Server) -> dict:
    r = httpx.post(server.url + "/v1/review/audit/compute", headers={"Authorization": "Bearer k"}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()

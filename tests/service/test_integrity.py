"""Index, stored files and review decisions stay in agreement (service/integrity.py): a decision racing a delete
does not outlive it, an add racing a delete answers what it committed, refused adds leave no file, what no entry
names is swept at start, and a bounded storm of writes and reads ends consistent with no 5xx."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.review import ReviewStore
from service.settings import Settings

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
RACE_WAIT = 1.0  # how long an injected pause waits for the racing request (it never comes when the race is closed)


@pytest.fixture()
def video(synth_dir: Path) -> bytes:
    return (synth_dir / "videos" / "id0007" / "c1_s0.mp4").read_bytes()


def _client(served: dict, checkpoint: Path, **extra) -> TestClient:
    settings = Settings(**served, checkpoint=checkpoint, device="cpu", api_key=KEY, **extra)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


def _add(client: TestClient, vid: str, data: bytes, label: str = "L"):
    return client.post(
        "/v1/videos", files={"file": ("v.mp4", data, "video/mp4")}, data={"id": vid, "label": label}, headers=AUTH
    )


def _stored_files(index_dir: Path) -> set[str]:
    folder = index_dir / "videos"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _check_consistent(client: TestClient, index_dir: Path) -> dict[str, dict]:
    """count == listing == stored files on disk (of the added videos) == what the decisions may name."""
    count = client.get("/v1/index").json()["count"]
    listing = client.get("/v1/videos", params={"limit": 1000}).json()
    assert count == listing["total"] == len(listing["videos"])
    videos = {v["id"]: v for v in listing["videos"]}
    stored = {Path(v["path"]).name for v in videos.values() if v["path"].startswith("videos/")}
    assert _stored_files(index_dir) == stored  # no orphan file, no entry without its file
    decided = set(ReviewStore(index_dir).decisions())
    assert decided <= set(videos), f"decisions of missing videos: {sorted(decided - set(videos))}"
    return videos


def test_a_decision_racing_a_delete_does_not_outlive_it(
    served: dict, checkpoint: Path, video: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision checks that its video exists, then (paused here) a delete of it runs: the decision must not be
    stored after the delete, and a video added later under the id starts without one."""
    with _client(served, checkpoint) as client:
        assert _add(client, "raced", video).status_code == 201
        deleted = threading.Event()
        real_decide = ReviewStore.decide

        def slow_decide(self, vid, action, label):
            deleted.wait(RACE_WAIT)  # the delete runs now, unless it must wait for this decision
            return real_decide(self, vid, action, label)

        monkeypatch.setattr(ReviewStore, "decide", slow_decide)
        answers: dict[str, int] = {}

        def decide() -> None:
            r = client.put("/v1/review/decisions/raced", json={"action": "drop"}, headers=AUTH)
            answers["decide"] = r.status_code

        t = threading.Thread(target=decide)
        t.start()
        time.sleep(0.3)  # the decision is past its existence check
        answers["delete"] = client.delete("/v1/videos/raced", headers=AUTH).status_code
        deleted.set()
        t.join()
        monkeypatch.setattr(ReviewStore, "decide", real_decide)
        assert answers == {"decide": 200, "delete": 204}
        assert "raced" not in ReviewStore(served["index"]).decisions()
        assert _add(client, "raced", video).status_code == 201  # a new video under the id: no inherited drop
        assert "raced" not in ReviewStore(served["index"]).decisions()
        export = client.get("/v1/review/export", headers=AUTH).text
        assert ",raced," in export
        _check_consistent(client, Path(served["index"]))


def test_an_add_racing_a_delete_answers_what_it_committed(
    served: dict, checkpoint: Path, video: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The add commits, then (paused here) a delete of the id runs: the add answers 201 with its video (never a
    500), the delete 204 or 404, and nothing is left behind."""
    with _client(served, checkpoint) as client:
        index = client.app.state.vidret.index
        real_add, deleted = index.add, threading.Event()

        def add_then_pause(*args, **kwargs):
            real_add(*args, **kwargs)
            deleted.wait(RACE_WAIT)  # the delete runs now, unless it must wait for this add

        monkeypatch.setattr(index, "add", add_then_pause)
        answers: dict = {}

        def add() -> None:
            answers["add"] = _add(client, "racy", video)

        t = threading.Thread(target=add)
        t.start()
        deadline = time.time() + 30
        while index.get("racy") is None and time.time() < deadline:  # committed, not yet answered
            time.sleep(0.01)
        answers["delete"] = client.delete("/v1/videos/racy", headers=AUTH).status_code
        deleted.set()
        t.join()
        assert answers["add"].status_code == 201, answers["add"].text
        assert answers["add"].json()["id"] == "racy"
        assert answers["delete"] in (204, 404)
        videos = _check_consistent(client, Path(served["index"]))
        assert ("racy" in videos) == (answers["delete"] == 404)


def test_an_add_the_backend_refuses_leaves_no_file(
    served: dict, checkpoint: Path, video: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus refuses a label longer than its field; an index may refuse an add for any reason: the upload's file
    goes, and the answer is a 4xx naming why."""
    with _client(served, checkpoint) as client:
        if served.get("backend") == "milvus":
            r = _add(client, "long", video, label="x" * 5000)  # past Milvus's 4096-byte VARCHAR
        else:
            from indexing.errors import UserError

            def refuse(*args, **kwargs):
                raise UserError("refused for this test")

            monkeypatch.setattr(client.app.state.vidret.index, "add", refuse)
            r = _add(client, "long", video)
        assert 400 <= r.status_code < 500, r.text
        assert _stored_files(Path(served["index"])) == set()
        monkeypatch.undo()
        assert _add(client, "fine", video).status_code == 201
        _check_consistent(client, Path(served["index"]))


def test_start_sweeps_files_and_reviews_no_entry_names(served: dict, checkpoint: Path, video: bytes) -> None:
    """What a server killed half-way leaves (an upload's file or temporary file without its entry, the review of a
    deleted id) is removed at the next start; the files of entries, and anything not the server's, stay."""
    index_dir = Path(served["index"])
    with _client(served, checkpoint) as client:
        assert _add(client, "kept", video).status_code == 201
        vid = client.get("/v1/videos", params={"limit": 1}).json()["videos"][0]["id"]
        assert client.put(f"/v1/review/decisions/{vid}", json={"action": "keep"}, headers=AUTH).status_code == 200
        kept = _stored_files(index_dir)
    orphans = ["0123456789ab_gone_0123456789abcdef.mp4", "tmpab12cd_x.mp4"]
    for name in orphans:
        (index_dir / "videos" / name).write_bytes(b"\0" * 10)
    (index_dir / "videos" / "notes.txt").write_text("not the server's")
    ReviewStore(index_dir).decide("deleted-meanwhile", "drop", None)
    with _client(served, checkpoint) as client:
        assert _stored_files(index_dir) == kept | {"notes.txt"}
        assert set(ReviewStore(index_dir).decisions()) == {vid}
        assert client.get("/v1/videos/kept").status_code == 200


def test_a_bounded_storm_ends_consistent_without_5xx(served: dict, checkpoint: Path, video: bytes) -> None:
    """A few seconds of concurrent adds, deletes, decisions and searches on a few ids: no 5xx, and afterwards
    count == listing == stored files == (a superset of) the decisions' videos."""
    ids = [f"storm{i}" for i in range(4)]
    statuses: list[tuple[str, int, str]] = []
    workers = 6  # one upload slot each: the storm tests integrity, not the uploads' 503 back-pressure (test_hardening)
    with _client(served, checkpoint, max_concurrent_uploads=workers) as client:
        stop = time.time() + 4.0

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.time() < stop:
                vid, op = rng.choice(ids), rng.choice(["add", "add", "delete", "decide", "decide", "search"])
                if op == "add":
                    r = _add(client, vid, video)
                elif op == "delete":
                    r = client.delete(f"/v1/videos/{vid}", headers=AUTH)
                elif op == "decide":
                    r = client.put(f"/v1/review/decisions/{vid}", json={"action": "drop"}, headers=AUTH)
                else:
                    r = client.post("/v1/search", json={"id": vid, "k": 3})
                statuses.append((op, r.status_code, r.text[:200]))

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        errors = [s for s in statuses if s[1] >= 500]
        assert not errors, errors[:5]
        assert {op for op, code, _ in statuses if code < 300} >= {"add", "delete", "decide"}  # it did race
        _check_consistent(client, Path(served["index"]))


def test_a_review_that_could_not_be_removed_is_not_inherited(
    fresh_index: Path, checkpoint: Path, video: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete whose review removal fails (a full disk) still deletes; an add of the id then removes the review
    first, so the new video does not inherit the old drop."""
    with _client({"index": fresh_index}, checkpoint) as client:
        assert _add(client, "again", video).status_code == 201
        assert client.put("/v1/review/decisions/again", json={"action": "drop"}, headers=AUTH).status_code == 200
        real_forget = ReviewStore.forget

        def failing_forget(self, vid):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(ReviewStore, "forget", failing_forget)
        assert client.delete("/v1/videos/again", headers=AUTH).status_code == 204
        assert "again" in ReviewStore(fresh_index).decisions()  # not removed yet
        monkeypatch.setattr(ReviewStore, "forget", real_forget)
        assert _add(client, "again", video).status_code == 201
        assert "again" not in ReviewStore(fresh_index).decisions()
        _check_consistent(client, fresh_index)

"""Run-time state: snapshots off the request path (searches and writes go on while one is written; close finishes
it), and batching workers that stop answer 503 at once instead of leaving requests hanging."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from indexing.embeddings import Embeddings, l2_normalize
from indexing.faiss_index import VideoIndex
from service.app import create_app
from service.settings import Settings
from service.state import MicroBatcher, ServiceState

DIM = 8


def _index(tmp_path: Path, n: int = 20) -> Path:
    emb = Embeddings(
        ids=[f"v{i}" for i in range(n)],
        embeddings=l2_normalize(np.eye(n, DIM) + 0.01),
        labels=["x"] * n,
        cameras=[""] * n,
    )
    VideoIndex.build(emb, tmp_path / "ix", type="flat").close()
    return tmp_path / "ix"


def _vec(seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(1, DIM)))


def within(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    """fn's result (or its exception), failing the test if it takes longer than ``seconds`` (it is blocked)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _write(state: ServiceState, vid: str, seed: int) -> None:
    state.index.add([vid], _vec(seed), ["new"], ["c"], [f"/{vid}.mp4"])
    state.note_write()


def test_snapshots_are_written_in_the_background_and_close_finishes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _index(tmp_path)
    state = ServiceState(Settings(index=folder, snapshot_every=2))
    state.load()
    assert state.ready, state.load_error
    writing, release = threading.Event(), threading.Event()
    real_save = np.save

    def slow_disk(*args: Any, **kw: Any) -> None:  # the snapshot's first file takes until `release`
        writing.set()
        release.wait(30)
        real_save(*args, **kw)

    monkeypatch.setattr(np, "save", slow_disk)
    try:
        within(lambda: _write(state, "a0", 0))
        within(lambda: _write(state, "a1", 1))  # the second write asks for a snapshot: it does not wait for it
        assert writing.wait(5)  # the snapshot is being written now, and stalls on the disk
        hits = within(lambda: state.search(_vec(1), 1))  # searches are answered meanwhile
        assert hits[0][0].id == "a1"
        within(lambda: _write(state, "a2", 2))  # and writes too
        within(lambda: _write(state, "a3", 3))
        assert within(lambda: state.search(_vec(3), 1))[0][0].id == "a3"
    finally:
        release.set()
    state.close()  # finishes the snapshot being written, then one with the writes made meanwhile
    info = json.loads((folder / "index.json").read_text())
    assert info["count"] == 24
    ix = VideoIndex.load(folder)
    assert ix.count == 24 and ix.get("a3").path == "/a3.mp4" and ix.store.journal_since(0, DIM) == []
    ix.close()


def test_a_failed_snapshot_is_reported_by_close_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _index(tmp_path)
    state = ServiceState(Settings(index=folder, snapshot_every=100))
    state.load()
    _write(state, "a0", 0)

    def disk_full(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        state.close()
    monkeypatch.undo()
    assert json.loads((folder / "index.json").read_text())["count"] == 20  # the previous snapshot, still published
    ix = VideoIndex.load(folder)  # and the journal after it
    assert ix.count == 21 and ix.get("a0") is not None
    ix.close()


def test_a_search_worker_that_fails_to_start_answers_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _index(tmp_path)

    def broken_init(self: ServiceState) -> None:
        raise RuntimeError("no OpenMP runtime")

    monkeypatch.setattr(ServiceState, "_search_thread_init", broken_init)
    app = create_app(Settings(index=folder, search_coalesce=8), load_in_background=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        for body in ({"id": "v1", "k": 3}, {"embedding": _vec(0)[0].tolist(), "k": 3}):
            r = within(lambda body=body: client.post("/v1/search", json=body))
            assert r.status_code == 503, r.text
            assert "vidret-search worker stopped (RuntimeError;" in r.json()["detail"]
        ready = client.get("/ready")  # a stopped worker takes the service out of rotation
        assert ready.status_code == 503 and "vidret-search worker stopped" in ready.json()["detail"]


class WorkerKilled(BaseException):
    """Escapes the worker's error handling (like SystemExit or KeyboardInterrupt would)."""


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BaseException as exc:
        return exc


def test_requests_waiting_when_the_worker_dies_get_503_and_later_ones_at_once() -> None:
    entered, release = threading.Event(), threading.Event()

    def fn(items: list) -> list:
        entered.set()
        release.wait(10)
        raise WorkerKilled("killed")

    b = MicroBatcher(fn, 0.0, max_batch=1, name="vidret-test")
    results: dict[int, Any] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, _outcome(lambda: b.submit(i)))) for i in range(3)
    ]
    threads[0].start()
    assert entered.wait(5)  # request 0 is being served; 1 and 2 wait in the queue
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while b._queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(5)
        assert not t.is_alive(), "a request still waits for the dead worker"
    for r in results.values():
        assert isinstance(r, HTTPException) and r.status_code == 503
        assert r.detail.startswith("the vidret-test worker stopped (WorkerKilled;")
    with pytest.raises(HTTPException) as later:
        within(lambda: b.submit(9), seconds=1)
    assert later.value.status_code == 503


def test_a_failing_call_fails_its_requests_and_the_worker_goes_on() -> None:
    calls: list[list] = []

    def fn(items: list) -> list:  # the first call returns one result for its two requests
        calls.append(items)
        return [x * 10 for x in items][: 1 if len(calls) == 1 else None]

    b = MicroBatcher(fn, 300.0, max_batch=2, name="vidret-test")
    outcomes: list[Any] = []
    first = [threading.Thread(target=lambda i=i: outcomes.append(_outcome(lambda: b.submit(i)))) for i in (1, 2)]
    for t in first:
        t.start()
    for t in first:
        t.join(5)
        assert not t.is_alive(), "a request of the failed call still waits"
    assert calls == [[1, 2]] or calls == [[2, 1]]
    assert len(outcomes) == 2 and all("1 results for 2 requests" in str(e) for e in outcomes)
    assert within(lambda: b.submit(3)) == 30
    b.close()
    with pytest.raises(HTTPException) as closed:
        within(lambda: b.submit(4), seconds=1)
    assert closed.value.status_code == 503 and "shut down" in closed.value.detail

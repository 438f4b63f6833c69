"""DDP under torchrun (2 processes, gloo, CPU): each rank's random streams survive a resume (every rank saves and
restores its own), and a skipped unreadable video does not hang the run (the ranks skip a step together).

Every launch has a timeout, so a hang fails the test instead of blocking the suite."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_ARGS, run_cli

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
TIMING = {"clips_per_s", "data_wait_share", "epoch_seconds"}


def _torchrun(*args: object, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """torchrun with 2 processes in a session of its own: on a timeout the whole session is killed (the agent and
    its workers, which a hang would otherwise leave behind) and the test fails."""
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", *map(str, args)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun hung for {timeout} s: {' '.join(cmd)}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_a_resumed_two_process_run_continues_each_ranks_own_random_streams(synth_dir: Path, tmp_path: Path) -> None:
    base = dict(
        train=str(synth_dir / "train.csv"), model="tiny3d", frames=4, size=24, batch_size=8, lr=3e-3,
        embedding_dim=32, seed=0, epochs=2, workers=0, quiet=True, device="cpu",
    )  # fmt: skip

    def fit(out: Path, **kw) -> None:
        res = _torchrun(HERE / "ddp_fit.py", json.dumps({**base, "out": str(out), **kw}))
        assert res.returncode == 0, res.stderr[-3000:]

    fit(tmp_path / "straight")
    fit(tmp_path / "resumed", stop_after_epoch=1)
    ck = _last(tmp_path / "resumed")
    assert ck["version"] == 2 and len(ck["rng_ranks"]) == 2
    assert not torch.equal(ck["rng_ranks"][0]["torch"], ck["rng_ranks"][1]["torch"])  # the streams really differ
    fit(tmp_path / "resumed", resume=True)
    straight, resumed = _last(tmp_path / "straight"), _last(tmp_path / "resumed")
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "straight")
    for a, b in zip(straight["rng_ranks"], resumed["rng_ranks"], strict=True):
        assert torch.equal(a["torch"], b["torch"])


@pytest.fixture(scope="module")
def with_broken(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 training clips, one of them a text file named .mp4."""
    out = tmp_path_factory.mktemp("broken")
    lines = (synth_dir / "train.csv").read_text().splitlines()
    rows = [ln.replace("videos/", f"{synth_dir}/videos/") for ln in lines[1:8]]
    (out / "broken.mp4").write_text("not a video")
    label = rows[0].split(",")[2]
    rows.insert(3, f"{out / 'broken.mp4'},broken,{label},c1,{label}")
    (out / "train.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return out / "train.csv"


def _train_args(manifest: Path, out: Path, workers: int) -> list[str]:
    args = ["train", "--train", manifest, "--out", out, *TRAIN_ARGS, "--batch-size", "4", "--epochs", "3"]
    return [*map(str, args), "--on-bad-video", "skip", "--workers", str(workers)]  # the last --workers counts


@pytest.fixture(scope="module")
def one_process(with_broken: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same job in one process (what the two-process runs should agree with)."""
    out = tmp_path_factory.mktemp("one") / "run"
    res = run_cli(*_train_args(with_broken, out, 0))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_skipped_video_does_not_hang_two_processes(
    with_broken: Path, one_process: Path, tmp_path: Path, workers: int
) -> None:
    res = _torchrun("--no-python", "vidret", *_train_args(with_broken, tmp_path / "ddp", workers))
    assert res.returncode == 0, res.stderr[-3000:]
    skipped = (one_process / "skipped.txt").read_text()
    assert skipped.startswith(f"{with_broken.parent / 'broken.mp4'}\tcannot decode video") and skipped.count("\n") == 1
    assert (tmp_path / "ddp" / "skipped.txt").read_text() == skipped  # what the two runs should agree on
    for run in (tmp_path / "ddp", one_process):
        rows = _metrics(run)
        assert [r["epoch"] for r in rows] == ["1", "2", "3"] and {r["skipped_videos"] for r in rows} == {"1"}
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2

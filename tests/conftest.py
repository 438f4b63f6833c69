"""Shared fixtures: a tiny synthetic dataset of real mp4 files, a checkpoint trained on it, its embeddings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
VIDRET = [sys.executable, "-m", "service.cli"]


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real `vidret` command line."""
    return subprocess.run(
        [*VIDRET, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 identities (6 train, 6 query/gallery), 2 cameras, 2 clips each: 32x32 px, 8 frames, 25% label noise."""
    from training.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(
        out, SynthConfig(identities=12, cameras=2, clips_per_camera=2, frames=8, size=32, noise=0.25, seed=1), workers=1
    )
    return out


TRAIN_ARGS = (
    "--model",
    "tiny3d",
    "--frames",
    "4",
    "--size",
    "24",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--lr",
    "3e-3",
    "--embedding-dim",
    "32",
    "--seed",
    "0",
)


@pytest.fixture(scope="session")
def trained_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch tiny3d run (the real CLI) with validation on the query/gallery split."""
    run = tmp_path_factory.mktemp("run") / "run"
    res = run_cli(
        "train",
        "--train",
        synth_dir / "train.csv",
        "--val-query",
        synth_dir / "query.csv",
        "--val-gallery",
        synth_dir / "gallery.csv",
        "--out",
        run,
        "--epochs",
        "2",
        *TRAIN_ARGS,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def checkpoint(trained_run: Path) -> Path:
    return trained_run / "checkpoints" / "best.pt"


@pytest.fixture(scope="session")
def embeddings(checkpoint: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("emb")
    paths = {}
    for split in ("query", "gallery"):
        paths[split] = out / f"{split}.npz"
        res = run_cli(
            "embed",
            "--checkpoint",
            checkpoint,
            "--manifest",
            synth_dir / f"{split}.csv",
            "--out",
            paths[split],
            "--workers",
            "0",
        )
        assert res.returncode == 0, res.stderr[-3000:]
    return paths


def write_container(path: Path, frames: Any, fmt: str, codec: str) -> Path:
    """Encode ``frames`` (uint8, T x H x W x 3) into the container ``fmt`` with ``codec`` (PyAV), for tests of container handling."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

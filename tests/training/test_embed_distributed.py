"""`vidret embed` under torchrun: shards split across processes (gloo, CPU), the same vectors as one process, a
failed rank named, and a rerun that resumes from the shards already written (and ignores stale ones)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from indexing.embeddings import EmbeddingSource, load_embeddings, read_shard_provenance
from indexing.errors import UserError
from tests.conftest import run_cli
from training.embed import embed_manifest_sharded, rank_shards, shard_ranges
from training.runtime import sha256_file


def torchrun(*args: object, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N --no-python vidret embed ARGS`` (a free port: tests may run
    side by side), on the CPU."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "--no-python", "vidret"]
    cmd += ["embed", "--device", "cpu", "--workers", "1", "--batch-size", "4", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_shards_are_split_contiguously_and_strided_across_ranks() -> None:
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)] and shard_ranges(0, 4) == []
    per_rank = [rank_shards(7, r, 3) for r in range(3)]
    assert per_rank == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(k for ks in per_rank for k in ks) == list(range(7))


def test_two_processes_give_the_embeddings_of_one(
    checkpoint: Path, synth_dir: Path, embeddings: dict[str, Path], tmp_path: Path
) -> None:
    res = torchrun("--checkpoint", checkpoint, "--manifest", synth_dir / "gallery.csv", "--out", tmp_path / "two.npz",
                   "--shard-size", "5")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 0: shards embedded 2," in res.stdout and "rank 1: shards embedded 2," in res.stdout
    one, two = load_embeddings(embeddings["gallery"]), load_embeddings(tmp_path / "two.npz")
    assert len(one) == len(two) > 10
    for name in ("ids", "labels", "cameras", "paths"):
        assert list(getattr(two, name)) == list(getattr(one, name)), name  # manifest order
    assert np.abs(two.embeddings - one.embeddings).max() <= 1e-5
    assert two.checkpoint_sha256 == one.checkpoint_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.npz"]  # the work folder of shards is gone


def _manifest_with_a_broken_video(synth_dir: Path, folder: Path, broken_row: int) -> Path:
    """gallery.csv with absolute paths, and row ``broken_row`` (0-based) pointing at a file that is no video."""
    lines = (synth_dir / "gallery.csv").read_text().splitlines()
    rows = [lines[0]] + [ln.replace("videos/", f"{synth_dir}/videos/") for ln in lines[1:]]
    cells = rows[1 + broken_row].split(",")
    cells[0] = str(folder / "broken.mp4")
    rows[1 + broken_row] = ",".join(cells)
    (folder / "broken.mp4").write_text("not a video")
    (folder / "gallery.csv").write_text("\n".join(rows) + "\n")
    return folder / "gallery.csv"


def test_a_failed_rank_is_named_and_a_rerun_resumes_from_the_shards_written(
    checkpoint: Path, synth_dir: Path, embeddings: dict[str, Path], tmp_path: Path
) -> None:
    # 18 rows, 4 a shard: rank 0 embeds shards 0, 2, 4; rank 1 shards 1, 3. Row 13 is in shard 3: rank 1's second.
    manifest = _manifest_with_a_broken_video(synth_dir, tmp_path, broken_row=13)
    out = tmp_path / "shards"
    args = ("--checkpoint", checkpoint, "--manifest", manifest, "--out", out, "--shards", "--shard-size", "4")
    res = torchrun(*args)
    assert res.returncode != 0
    assert "error: embedding failed on 1 of 2 processes (rank 1: " in res.stderr, res.stderr[-3000:]
    assert "broken.mp4: cannot decode video" in res.stderr and "the same command resumes" in res.stderr
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert sorted(written) == [f"shard-{k:06d}.npz" for k in (0, 1, 2, 4)] and not (out / "shards.json").exists()
    prov = read_shard_provenance(out / "shard-000001.npz")
    assert (prov.start, prov.stop) == (4, 8) and list(prov.rows) == [4, 5, 6, 7]
    assert prov.checkpoint_sha256 == sha256_file(checkpoint) and prov.skipped == []

    shutil.copy(synth_dir / load_embeddings(embeddings["gallery"]).paths[13], tmp_path / "broken.mp4")  # fixed
    res = torchrun(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 0: shards embedded 0, kept from an earlier run 3" in res.stdout
    assert "rank 1: shards embedded 1, kept from an earlier run 1" in res.stdout
    assert all((out / name).stat().st_mtime_ns == t for name, t in written.items())  # kept, not rewritten
    listed = json.loads((out / "shards.json").read_text())
    assert listed["shards"] == [f"shard-{k:06d}.npz" for k in range(5)] and listed["count"] == 18
    source, one = EmbeddingSource.open([out]), load_embeddings(embeddings["gallery"])
    assert list(source.ids) == list(one.ids) and np.abs(source.read(0, 18) - one.embeddings).max() <= 1e-5

    # another checkpoint: every shard is stale and embedded again (one process, as `vidret embed --shards`)
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "other.pt")
    res = embed_manifest_sharded(
        tmp_path / "other.pt", manifest, out, workers=0, device="cpu", shards=True, shard_size=4
    )
    assert res is not None and res.reused == 0 and res.count == 18 and res.shards == 5
    other = sha256_file(tmp_path / "other.pt")
    assert all(read_shard_provenance(out / name).checkpoint_sha256 == other for name in listed["shards"])


def test_bad_shard_options_are_refused(checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    args = (checkpoint, synth_dir / "gallery.csv", tmp_path / "s")
    with pytest.raises(UserError, match="--shard-size must be >= 1, got 0"):
        embed_manifest_sharded(*args, shards=True, shard_size=0)
    with pytest.raises(UserError, match="--on-bad-video must be fail or skip, got 'maybe'"):
        embed_manifest_sharded(*args, on_bad_video="maybe")
    res = run_cli("embed", "--checkpoint", checkpoint, "--manifest", tmp_path / "none.csv", "--out", tmp_path / "o",
                  "--shards")  # fmt: skip
    assert res.returncode == 1 and "none.csv: manifest not found" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("world", [1, 3])
def test_every_row_is_in_exactly_one_shard(world: int) -> None:
    ranges = shard_ranges(23, 4)
    rows = [i for r in range(world) for k in rank_shards(len(ranges), r, world) for i in range(*ranges[k])]
    assert sorted(rows) == list(range(23))

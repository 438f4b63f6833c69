"""Outlier frames (vidret data synth --frame-noise): background-only or other-identity frames inside rightly
labelled training clips, recorded in the manifest's outlier_frames; query and gallery stay clean."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from indexing.errors import UserError
from tests.conftest import run_cli
from training.data.manifest import VideoRow, read_manifest, write_manifest
from training.data.synth import (
    SynthConfig,
    _outlier_plan,
    _plan,
    choose_outliers,
    generate,
    render_frame_noise,
    render_with_outliers,
)
from training.data.video import ClipSpec, read_clip

CFG = dict(identities=8, cameras=2, clips_per_camera=1, frames=10, size=32, seed=2)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("frame_noise")
    generate(root / "clean", SynthConfig(**CFG), workers=1)
    res = run_cli("data", "synth", root / "noisy", *_flags(), "--frame-noise", "0.4", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "4 outlier frames per clip" in res.stdout
    return root / "clean", root / "noisy"


def _flags() -> list[str]:
    return ["--identities", "8", "--cameras", "2", "--clips-per-camera", "1", "--frames", "10", "--size", "32",
            "--seed", "2"]  # fmt: skip


def _frames(path: str) -> np.ndarray:
    spec = ClipSpec(frames=10, size=32, sampling="uniform")
    return read_clip(path, spec, train=False, decode_short_side=32)[0].numpy().astype(float)


def test_every_training_clip_has_its_share_of_outlier_frames_and_test_clips_none(datasets) -> None:
    clean, noisy = datasets
    rows = read_manifest(noisy / "train.csv", require_label=True)
    assert all(len(r.outlier_frames) == 4 and r.label == r.clean_label for r in rows)
    assert len({r.outlier_frames for r in rows}) > 1  # chosen per clip
    for name in ("query.csv", "gallery.csv"):
        header = next(csv.reader(open(noisy / name)))
        assert "outlier_frames" not in header
    assert "outlier_frames" not in next(csv.reader(open(clean / "train.csv")))  # no frame noise, no column
    assert (noisy / "query.csv").read_text() == (clean / "query.csv").read_text()


def test_outlier_frames_differ_from_the_clean_clip_and_the_others_match_it(datasets) -> None:
    clean, noisy = datasets
    cfg = SynthConfig(**CFG, frame_noise=0.4)
    idents, cams, clips, n_train = _plan(cfg)
    rows = {r.id: r for r in read_manifest(noisy / "train.csv", require_label=True)}
    for clip in [c for c in clips if c.identity < n_train][:4]:
        outliers = _outlier_plan(cfg, clip, idents, n_train, 0.4, cfg.seed)
        assert tuple(t for t, _ in outliers) == rows[clip.row[1]].outlier_frames
        ident, cam = idents[clip.identity], cams[clip.camera]
        a = render_with_outliers(ident, cam, 10, 32, clip.seed, True, outliers).astype(float)
        b = render_with_outliers(ident, cam, 10, 32, clip.seed, True, []).astype(float)
        out = [t for t, _ in outliers]
        keep = np.setdiff1d(np.arange(10), out)
        assert np.array_equal(a[keep], b[keep])  # the clean frames are the clean clip's
        assert all(np.abs(a[t] - b[t]).mean() > 2 for t in out)
        for t, other in outliers:  # background only: the person is gone, nothing else changes
            if other is None:
                changed = np.abs(a[t] - b[t]).max(axis=2) > 0
                assert 0.02 < changed.mean() < 0.5
    # decoded, the outlier frames still stand out; test clips are the clean dataset's, bit for bit
    row = next(iter(rows.values()))
    diff = np.abs(_frames(row.path) - _frames(str(clean / row.raw_path))).mean(axis=(1, 2, 3))
    keep = np.setdiff1d(np.arange(10), row.outlier_frames)
    assert diff[list(row.outlier_frames)].mean() > 2 * diff[keep].mean()
    q = read_manifest(noisy / "query.csv")[0]
    assert Path(q.path).read_bytes() == (clean / q.raw_path).read_bytes()


def test_the_seed_fixes_the_outliers_and_a_subset_can_be_rendered_again(datasets, tmp_path: Path) -> None:
    _, noisy = datasets
    again = tmp_path / "again"
    generate(again, SynthConfig(**CFG, frame_noise=0.4), workers=1)
    assert (again / "train.csv").read_text() == (noisy / "train.csv").read_text()
    other = tmp_path / "other"
    generate(other, SynthConfig(**CFG, frame_noise=0.4, frame_noise_seed=9), workers=1)
    assert (other / "train.csv").read_text() != (noisy / "train.csv").read_text()
    # the benchmark's path: some identities' training clips again, with the outliers of a given seed
    clips = render_frame_noise(SynthConfig(**CFG), tmp_path / "sub", {"id0000"}, 0.4, seed=2)
    rows = {r.id: r for r in read_manifest(noisy / "train.csv")}
    assert set(clips) == {"id0000_c1_s0", "id0000_c2_s0"}
    for cid, (path, outliers) in clips.items():
        assert outliers == rows[cid].outlier_frames and Path(path).read_bytes() == Path(rows[cid].path).read_bytes()


def test_choose_outliers_mixes_background_and_other_identities() -> None:
    rng = np.random.default_rng(0)
    picks = [choose_outliers(10, 0.4, rng, others=5) for _ in range(50)]
    assert all(len(p) == 4 and len({t for t, _ in p}) == 4 for p in picks)
    kinds = [j for p in picks for _, j in p]
    assert 0.3 < sum(j is None for j in kinds) / len(kinds) < 0.7
    assert all(j is None or 0 <= j < 5 for j in kinds)
    assert choose_outliers(10, 0.0, rng, others=5) == []


def test_outlier_frames_round_trip_and_bad_values_name_the_row(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    rows = [
        VideoRow(str(video), "a", "x", outlier_frames=(1, 4)),
        VideoRow(str(video), "b", "x", outlier_frames=()),
        VideoRow(str(video), "c", "x"),
    ]
    write_manifest(tmp_path / "m.csv", rows)
    back = read_manifest(tmp_path / "m.csv")
    assert [r.outlier_frames for r in back] == [(1, 4), (), None]
    (tmp_path / "bad.csv").write_text("path,label,outlier_frames\nv.mp4,x,1;two\n")
    with pytest.raises(UserError, match=r"bad.csv, row 1: outlier_frames must be ;-separated frame indices"):
        read_manifest(tmp_path / "bad.csv")
    res = run_cli("data", "synth", tmp_path / "x", "--frame-noise", "1.5")
    assert res.returncode != 0 and "--frame-noise must be in [0, 1)" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr

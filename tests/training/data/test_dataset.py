"""The dataset: clip-consistent augmentation, determinism by (seed, epoch, index), the bad-video policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from indexing.errors import UserError
from training.data import dataset as dataset_module
from training.data.dataset import VideoDataset, apply_bad_video_policy, clip_transform, collate, shared_frame_cache
from training.data.manifest import class_map, read_manifest
from training.data.video import ClipSpec, VideoDecodeError

SPEC = ClipSpec(frames=4, size=24)


def test_train_transform_is_the_same_for_every_frame() -> None:
    frame = torch.randint(0, 256, (40, 56, 3), dtype=torch.uint8)
    clip = frame[None].repeat(4, 1, 1, 1)
    for seed in range(5):
        out = clip_transform(clip, SPEC, train=True, rng=np.random.default_rng(seed))
        assert out.shape == (3, 4, 24, 24)
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(1, 4))
    a = clip_transform(clip, SPEC, True, np.random.default_rng(0))
    b = clip_transform(clip, SPEC, True, np.random.default_rng(1))
    assert not torch.equal(a, b)  # different crops / flips


def test_eval_transform_is_a_deterministic_centre_crop() -> None:
    clip = torch.randint(0, 256, (2, 27, 40, 3), dtype=torch.uint8)
    out = clip_transform(clip, SPEC, train=False)
    assert torch.equal(out, clip_transform(clip, SPEC, train=False))
    assert out.shape == (3, 2, 24, 24)
    assert abs(float(out.mean())) < 3  # normalised


def test_items_depend_only_on_seed_epoch_index(synth_dir: Path) -> None:
    rows = read_manifest(synth_dir / "train.csv", require_label=True)[:3]
    cmap = class_map(r.label for r in rows)
    ds = VideoDataset(rows, SPEC, train=True, class_to_idx=cmap, seed=7)
    first = ds[1]["clip"]
    assert torch.equal(first, VideoDataset(rows, SPEC, train=True, class_to_idx=cmap, seed=7)[1]["clip"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[1]["clip"])
    fresh = VideoDataset(rows, SPEC, train=True, class_to_idx=cmap, seed=7)  # still at epoch 0, as a worker's copy
    assert torch.equal(fresh[1, 1]["clip"], ds[1]["clip"]) and torch.equal(fresh[0, 1]["clip"], first)
    assert fresh[1, 1]["index"] == 1  # an (epoch, index) key names its own epoch
    cached = VideoDataset(rows, SPEC, train=True, class_to_idx=cmap, seed=7, cache=True)
    assert torch.equal(first, cached[1]["clip"])  # the in-memory cache changes nothing
    assert ds[1]["target"] == cmap[rows[1].label]


def test_shared_frame_cache_decodes_each_video_once(synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = read_manifest(synth_dir / "train.csv", require_label=True)[:3]
    cmap = class_map(r.label for r in rows)
    plain = [
        VideoDataset(rows, SPEC, train=train, class_to_idx=cmap, seed=7)[i]["clip"]
        for train in (True, False)
        for i in range(3)
    ]
    decodes: list[str] = []
    real = dataset_module.read_clip
    monkeypatch.setattr(dataset_module, "read_clip", lambda path, *a, **k: decodes.append(path) or real(path, *a, **k))
    with shared_frame_cache() as frames:
        got = [
            VideoDataset(rows, SPEC, train=train, class_to_idx=cmap, seed=7, cache=True)[i]["clip"]
            for train in (True, False)
            for i in range(3)
        ]  # a training and an evaluation dataset: 2 x 3 items
        assert len(decodes) == 3 and len(frames) == 3  # each video decoded once, for both datasets
        VideoDataset(rows, replace(SPEC, size=32), train=False, cache=True)[0]
        assert len(decodes) == 4  # another size is another entry
    assert all(torch.equal(a, b) for a, b in zip(plain, got, strict=True))  # sharing changes no clip
    VideoDataset(rows, SPEC, train=False, cache=True)[0]
    assert len(decodes) == 5  # outside the block nothing is shared


def test_bad_videos_are_reported_not_raised_in_workers(synth_dir: Path, tmp_path: Path) -> None:
    rows = read_manifest(synth_dir / "gallery.csv")[:2]
    bad = replace(rows[0], path=str(tmp_path / "gone.mp4"), id="gone")
    ds = VideoDataset([rows[0], bad, rows[1]], SPEC, train=False, on_bad_video="skip")
    batch = collate([ds[i] for i in range(3)])
    assert batch["clip"].shape[0] == 2 and batch["index"].tolist() == [0, 2]
    assert batch["skipped"] == [(str(tmp_path / "gone.mp4"), "file not found")]
    seen: dict[str, str] = {}
    apply_bad_video_policy(batch["skipped"], "skip", seen)
    assert seen == {str(tmp_path / "gone.mp4"): "file not found"}
    with pytest.raises(VideoDecodeError, match="gone.mp4: file not found"):
        apply_bad_video_policy(batch["skipped"], "fail", {})
    with pytest.raises(UserError, match="--on-bad-video"):
        VideoDataset(rows, SPEC, train=False, on_bad_video="ignore")

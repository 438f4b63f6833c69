"""The video Dataset: decode, clip-consistent transforms, normalisation, collate, and the bad-video policy.

Every random choice of an item (frames, crop, flip) comes from a generator seeded by (seed, epoch, index), so the
data a model sees depends only on the seed and the epoch: a resumed run sees exactly what an uninterrupted one did.
The epoch travels with the index: ``EpochSampler`` yields ``(epoch, index)`` pairs, because DataLoader workers hold
their own copies of the dataset (kept across epochs with ``persistent_workers``) that ``set_epoch`` never reaches.

Unreadable videos never raise inside a DataLoader worker: the item is marked bad, ``collate`` drops it and lists it
in ``batch["skipped"]``, and the caller applies the policy (``fail``: stop naming the file and the decoder's reason;
``skip``: count it and report all skipped files at the end).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Sampler

from indexing.errors import UserError
from training.data.manifest import VideoRow
from training.data.video import ClipSpec, VideoDecodeError, read_clip, sample_indices

MEAN = (0.43216, 0.394666, 0.37645)  # Kinetics-400, as torchvision's video models use
STD = (0.22803, 0.22145, 0.216989)
BAD_VIDEO_POLICIES = ("fail", "skip")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x: float (T, C, H, W)."""
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def clip_transform(
    clip: torch.Tensor,
    spec: ClipSpec,
    train: bool,
    rng: np.random.Generator | None = None,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """uint8 (T, H, W, C) -> normalised float (C, T, size, size); the same crop and flip for every frame.

    Frames arrive with their short side at ``spec.decode_short_side`` (8/7 of the crop, resized at decode time, as
    torchvision's video references resize 128 -> crop 112). train: a random crop + horizontal flip; eval: the centre
    crop. Scale is kept: for re-identification an identity's size is part of what a camera sees. Deterministic
    given ``rng``.
    """
    x = clip.permute(0, 3, 1, 2).float().div_(255.0)  # T, C, H, W
    h, w = x.shape[-2:]
    s = spec.size
    if train:
        rng = rng if rng is not None else np.random.default_rng(0)
        if min(h, w) != spec.decode_short_side:  # frames not resized at decode time (e.g. tiny videos)
            short = spec.decode_short_side
            x = _resize(x, (max(s, round(h * short / min(h, w))), max(s, round(w * short / min(h, w)))))
            h, w = x.shape[-2:]
        top = int(rng.integers(0, h - s + 1))
        left = int(rng.integers(0, w - s + 1))
        x = x[..., top : top + s, left : left + s]
        if rng.random() < 0.5:
            x = x.flip(-1)
    else:
        short = spec.decode_short_side
        if min(h, w) != short:
            x = _resize(x, (max(s, round(h * short / min(h, w))), max(s, round(w * short / min(h, w)))))
            h, w = x.shape[-2:]
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / sd).permute(1, 0, 2, 3).contiguous()


_shared_frames: dict[tuple, torch.Tensor] | None = None


@contextmanager
def shared_frame_cache() -> Iterator[dict[tuple, torch.Tensor]]:
    """Inside this block every cached VideoDataset of this process shares decoded videos (by path and size), so a
    benchmark that trains and audits many models on the same videos decodes each video once."""
    global _shared_frames
    outer = _shared_frames
    _shared_frames = {} if outer is None else outer
    try:
        yield _shared_frames
    finally:
        _shared_frames = outer


class VideoDataset(Dataset):
    """Clips of the videos of a manifest, with targets from ``class_to_idx`` (-1 where a row has no label)."""

    def __init__(
        self,
        rows: Sequence[VideoRow],
        spec: ClipSpec,
        train: bool,
        class_to_idx: dict[str, int] | None = None,
        on_bad_video: str = "fail",
        seed: int = 0,
        cache: bool = False,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        label_field: str = "label",
    ) -> None:
        if on_bad_video not in BAD_VIDEO_POLICIES:
            raise UserError(f"--on-bad-video must be one of {', '.join(BAD_VIDEO_POLICIES)}, got {on_bad_video!r}")
        self.rows = list(rows)
        self.spec, self.train, self.seed, self.epoch = spec, train, seed, 0
        self.on_bad_video = on_bad_video
        self.mean, self.std = tuple(mean), tuple(std)
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.targets = np.full(len(self.rows), -1, dtype=np.int64)
        if class_to_idx is not None:
            for i, r in enumerate(self.rows):
                lab = getattr(r, label_field)
                if lab is not None:
                    if lab not in class_to_idx:
                        raise UserError(f"row {r.row} ({r.id}): label {lab!r} is not a known class")
                    self.targets[i] = class_to_idx[lab]

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain integer indices (an ``(epoch, index)`` key names its own)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def _decode(self, i: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """The clip and the indices of the video frames it shows."""
        path = self.rows[i].path
        if self.cache is None:
            clip, idx = read_clip(path, self.spec, self.train, rng)
            return clip, np.asarray(idx)
        if i not in self.cache:  # decode every frame once, sample from memory afterwards
            shared = _shared_frames
            key = (os.path.realpath(path), self.spec.size, self.spec.decode_short_side) if shared is not None else None
            frames = shared.get(key) if key is not None else None
            if frames is None:
                from training.data.video import num_frames

                frames = read_clip(
                    path,
                    ClipSpec(frames=num_frames(path), size=self.spec.size, sampling="uniform"),
                    train=False,
                    decode_short_side=self.spec.decode_short_side,
                )[0]
                if key is not None:
                    shared[key] = frames
            self.cache[i] = frames
        frames = self.cache[i]
        idx = sample_indices(frames.shape[0], self.spec, self.train, rng)
        return frames[torch.from_numpy(idx)], idx

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``ds[i]``: item i of ``self.epoch``; ``ds[epoch, i]``: item i as drawn in that epoch."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, epoch, i])
        try:
            clip, idx = self._decode(i, rng)
        except VideoDecodeError as exc:
            return {"bad": (exc.path, exc.reason), "index": i}
        known = self.rows[i].outlier_frames
        return {
            "clip": clip_transform(clip, self.spec, self.train, rng, self.mean, self.std),
            "target": int(self.targets[i]),
            "index": i,
            # per clip frame: -1 unknown, 1 a known outlier frame (background, another identity), 0 a clean one
            "outlier": torch.from_numpy(
                np.isin(idx, known).astype(np.int8) if known is not None else np.full(len(idx), -1, np.int8)
            ),
        }


class EpochSampler(Sampler[tuple[int, int]]):
    """A DistributedSampler's indices of the current epoch as ``(epoch, index)`` pairs for ``VideoDataset``.

    The sampler runs in the main process, where ``set_epoch`` is called; the pairs carry the epoch to the DataLoader
    workers, so their augmentation changes every epoch even when they persist across epochs.
    """

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch  # fixed when the epoch's iteration starts
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; list the bad ones as ``skipped`` [(path, reason)]."""
    good = [b for b in batch if "bad" not in b]
    skipped = [b["bad"] for b in batch if "bad" in b]
    if good:
        clip = torch.stack([b["clip"] for b in good])
    else:
        clip = torch.empty(0)
    return {
        "clip": clip,
        "target": torch.tensor([b["target"] for b in good], dtype=torch.long),
        "index": torch.tensor([b["index"] for b in good], dtype=torch.long),
        "outlier": torch.stack([b["outlier"] for b in good]) if good and "outlier" in good[0] else torch.empty(0),
        "skipped": skipped,
    }


def apply_bad_video_policy(skipped: list[tuple[str, str]], policy: str, seen: dict[str, str]) -> None:
    """Record skipped videos; under ``fail`` raise for the first one (file and the decoder's reason)."""
    for path, reason in skipped:
        if policy == "fail":
            raise VideoDecodeError(path, f"{reason} (use --on-bad-video skip to train without it)")
        seen.setdefault(path, reason)


def worker_init(_: int) -> None:
    """DataLoader worker: one intra-op thread per worker (the workers are the parallelism)."""
    torch.set_num_threads(1)

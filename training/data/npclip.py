"""The eval clip of a video in numpy alone (no torch), for serving an ONNX export (docs/export.md).

It matches ``read_video_clip`` + ``clip_transform(train=False)`` (training/data/video.py, dataset.py): the same frame
indices, PyAV's decoding with the same bilinear scale filter at the decode short side (which gives decord's frames
bit for bit), the centre crop, and the same resize where a video is smaller than the decode size (bilinear,
half-pixel centres, as ``F.interpolate(..., antialias=True)`` upsamples). ``tests/training/test_npclip.py`` compares
the two on real videos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.containers import CONTAINER_DEMUXERS, CONTAINER_NAMES, av_scale_graph, sniff_file

DECODE_THREADS = int(os.environ.get("VIDRET_DECODE_THREADS", "1"))


class ClipDecodeError(Exception):
    def __init__(self, shown: str | Path, reason: str) -> None:
        super().__init__(f"{shown}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class NpClipSpec:
    frames: int
    size: int
    sampling: str = "segments"
    stride: int = 2

    @property
    def decode_short_side(self) -> int:
        return int(round(self.size * 8 / 7))


def eval_indices(num_frames: int, spec: NpClipSpec) -> np.ndarray:
    """The frame indices of the eval clip (``sample_indices(..., train=False)``)."""
    n, length = spec.frames, num_frames
    if spec.sampling == "random":
        span = (n - 1) * spec.stride + 1
        return (max(length - span, 0) // 2 + np.arange(n) * spec.stride) % length
    if length < n:
        return np.arange(n) % length
    if spec.sampling == "uniform":
        return np.round(np.linspace(0, length - 1, n)).astype(np.int64)
    edges = np.linspace(0, length, n + 1)
    lo, hi = np.floor(edges[:-1]).astype(np.int64), np.maximum(np.floor(edges[1:]).astype(np.int64), 1)
    hi = np.maximum(hi, lo + 1)
    return ((lo + hi - 1) // 2).astype(np.int64)


def _open(path: str, shown: str | Path):
    import av

    ext = sniff_file(path)  # the demuxer from the first bytes, as training/data/video.py chooses it
    if ext is None:
        raise ClipDecodeError(shown, f"cannot decode video (not a recognised video container ({CONTAINER_NAMES}))")
    try:
        container = av.open(path, format=CONTAINER_DEMUXERS[ext])
    except Exception as exc:  # av.error.* and OSError
        raise ClipDecodeError(shown, f"cannot decode video ({type(exc).__name__})") from None
    if not container.streams.video:
        container.close()
        raise ClipDecodeError(shown, "cannot decode video (the file has no video stream)")
    return container


def video_shape(path: str | Path, label: str | None = None) -> tuple[int, int, int]:
    """(frames, height, width) of a video file."""
    shown = label or path
    with _open(str(path), shown) as container:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:
            n = sum(1 for packet in container.demux(stream) if packet.size)
        h, w = int(stream.codec_context.height), int(stream.codec_context.width)
    if n <= 0 or h <= 0 or w <= 0:
        raise ClipDecodeError(shown, "cannot decode video (the video has no frames)")
    return n, h, w


def decode_frames(path: str | Path, spec: NpClipSpec, max_frames: int | None = None, label: str | None = None):
    """uint8 (T, H, W, 3) frames of the eval clip, resized at decode time to the decode short side."""
    shown = label or path
    n, h, w = video_shape(path, label)
    if max_frames:
        n = min(n, max_frames)
    idx = eval_indices(n, spec)
    short = spec.decode_short_side
    size = None
    if min(h, w) > short:
        scale = short / min(h, w)
        size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    uniq, inverse = np.unique(idx, return_inverse=True)
    wanted, out = set(uniq.tolist()), []
    with _open(str(path), shown) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODE_THREADS
        scaler = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    if size is None:
                        out.append(frame.to_ndarray(format="rgb24"))
                    else:
                        scaler = scaler or av_scale_graph(frame, stream.time_base, size)
                        scaler.push(frame)
                        out.append(scaler.pull().to_ndarray())
                if i >= uniq[-1]:
                    break
        except Exception as exc:  # av.error.*
            raise ClipDecodeError(shown, f"cannot decode video ({type(exc).__name__})") from None
    if len(out) != len(uniq):
        raise ClipDecodeError(shown, f"cannot decode video (got {len(out)} of {len(uniq)} frames: truncated file?)")
    return np.stack(out)[inverse]


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling with half-pixel centres (``align_corners=False``): source indices and weights."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """x float (T, H, W, C) -> (T, size[0], size[1], C), upsampling bilinearly."""
    (h, w), (oh, ow) = x.shape[1:3], size
    if (h, w) == (oh, ow):
        return x
    i0, i1, a = _linear_weights(h, oh)
    x = x[:, i0] * (1 - a)[None, :, None, None] + x[:, i1] * a[None, :, None, None]
    j0, j1, b = _linear_weights(w, ow)
    return x[:, :, j0] * (1 - b)[None, None, :, None] + x[:, :, j1] * b[None, None, :, None]


def preprocess(frames: np.ndarray, spec: NpClipSpec, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (3, T, size, size): the eval transform of ``clip_transform``."""
    x = frames.astype(np.float32) / np.float32(255.0)
    h, w = x.shape[1:3]
    s, short = spec.size, spec.decode_short_side
    if min(h, w) != short:
        x = _resize(x, (max(s, round(h * short / min(h, w))), max(s, round(w * short / min(h, w)))))
        h, w = x.shape[1:3]
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, top : top + s, left : left + s]
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2), dtype=np.float32)

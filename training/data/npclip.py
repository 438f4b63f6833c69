"""The eval clip of a video in numpy alone (no torch), for serving an ONNX export (docs/export.md).

It matches ``read_video_clip`` + ``clip_transform(train=False)`` (training/data/video.py, dataset.py): the same frame
indices, PyAV's decoding with the same bilinear scale filter at the decode short side (which gives decord's frames
bit for bit), the centre crop, and the same resize where a video is smaller than the decode size (bilinear,
half-pixel centres, as ``F.interpolate(..., antialias=True)`` upsamples). ``tests/training/test_npclip.py`` compares
the two on real videos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data.sources import (
    ClipSpec,
    VideoDecodeError,
    av_frames,
    av_shape,
    check_video_file,
    reason,
    resized_hw,
    sample_indices,
)

ClipDecodeError = VideoDecodeError  # one error for a source that cannot be read, on either path
NpClipSpec = ClipSpec  # the clip spec of training/data/sources.py (torch-free)


def eval_indices(num_frames: int, spec: ClipSpec) -> np.ndarray:
    """The frame indices of the eval clip (``sample_indices(..., train=False)``)."""
    return sample_indices(num_frames, spec, False, None)


def video_shape(path: str | Path, label: str | None = None) -> tuple[int, int, int]:
    """(frames, height, width) of a video container file (never a frame folder or list)."""
    path = Path(path)
    shown = label or path
    check_video_file(path, shown)
    try:
        return av_shape(str(path))
    except Exception as exc:  # av.error.*, OSError, DecoderFailed
        raise VideoDecodeError(shown, f"cannot decode video ({reason(exc, path, shown)})") from None


def decode_frames(path: str | Path, spec: ClipSpec, max_frames: int | None = None, label: str | None = None):
    """uint8 (T, H, W, 3) frames of the eval clip, resized at decode time to the decode short side."""
    path = Path(path)
    shown = label or path
    n, h, w = video_shape(path, label)
    if max_frames:
        n = min(n, max_frames)
    idx = eval_indices(n, spec)
    size = resized_hw(h, w, spec.decode_short_side)
    uniq, inverse = np.unique(idx, return_inverse=True)
    try:
        out = av_frames(str(path), uniq.tolist(), size if size != (h, w) else None)
    except Exception as exc:  # av.error.*
        raise VideoDecodeError(shown, f"cannot decode video ({reason(exc, path, shown)})") from None
    if len(out) != len(uniq):
        raise VideoDecodeError(shown, f"cannot decode video (got {len(out)} of {len(uniq)} frames: truncated file?)")
    return out[inverse]


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


def preprocess(frames: np.ndarray, spec: ClipSpec, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
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

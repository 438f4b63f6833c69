"""Decode and sample clips: video files through decord (PyAV where decord fails), frame folders and frame lists
through Pillow.

A clip is a uint8 tensor (T, H, W, C) plus the frame indices it was sampled at.

Sources:
* a video file (anything decord opens: mp4, avi, mkv, webm, mov);
* a folder of frame images (jpg/png, read with Pillow), ordered by file name;
* a frame-list file ``*.frames``: one image path per line, relative to the file's folder (how a MARS tracklet,
  a run of frames inside a person's folder, is pointed at without copying images).

Untrusted files (uploads to the service) go through ``declared_shape`` (the frame size and count the container
declares, checked before any frame is decoded), then ``count_video_frames`` / ``read_video_clip``: container
demuxers only, never the frame-folder or frame-list readers, and errors that name ``label`` instead of the file.
``sniff_container`` tells a container type from a file's first bytes. Clip specs, frame sampling, the file checks,
frame images, container headers and PyAV's frames are torch-free and live in training/data/sources.py (re-exported
here); this module adds decord and tensors.

decord readers are opened inside the call that reads (so inside DataLoader workers, never inherited from the
parent), with a bounded number of decoding threads, and resize at decode time. decord 0.6.0 cannot return frames
of some widths (8, 12, 16, 24, 48, 72 px: 4- or 6-channel rows, "DECORDArrayCopyFromTo"), and fails on some files
outright; those videos are decoded with PyAV instead, to the same frames: the same frame indices, the same
YUV->RGB conversion and the same resize (FFmpeg's bilinear scaler, which decord resizes with), logged at debug
level. Frame images are read with Pillow: torchvision 0.29's image decoding is deprecated and failed on valid PNG
files here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from training.data import sources
from training.data.containers import (  # noqa: F401 - torch-free (training/data/containers.py), re-exported
    CONTAINER_DEMUXERS,
    CONTAINER_NAMES,
    SNIFF_BYTES,
    TS_MIN_PACKETS,
    TS_PACKET,
    av_scale_graph,
    sniff_container,
    sniff_file,
)
from training.data.sources import (  # noqa: F401 - torch-free (training/data/sources.py), re-exported
    DECODE_THREADS,
    SAMPLINGS,
    ClipSpec,
    DecoderFailed,
    VideoDecodeError,
    av_frames,
    av_open,
    av_shape,
    check_file,
    check_video_file,
    declared_shape,
    is_frame_source,
    middle_frame_jpeg,
    reason,
    resized_hw,
    sample_indices,
)

log = logging.getLogger(__name__)


def _decord():
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


# Output widths decord 0.6.0 cannot return frames at (found at run time: 8, 12, 16, 24, 48, 72 px so far): it gives
# 4- or 6-channel rows, or fails with "DECORDArrayCopyFromTo: The size must exactly match". PyAV decodes those.
_BAD_DECODE_WIDTHS: set[int] = set()


@lru_cache(maxsize=4096)
def _video_shape(path: str, stamp: tuple[int, int, int]) -> tuple[int, int, int, str]:
    """(frames, height, width, reader): reader "decord", or "pyav" when decord cannot open the file."""
    decord = _decord()
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
        n = len(vr)
        if n == 0:
            raise DecoderFailed("the video has no frames")
        h, w, c = vr[0].shape
        del vr
        if c != 3:  # decord opens the file but cannot return its frames at full size
            _BAD_DECODE_WIDTHS.add(int(w))
        return n, int(h), int(w), "decord"
    except Exception as exc:  # decord raises DECORDError / RuntimeError with the decoder's message
        first = reason(exc)
    try:
        n, h, w = av_shape(path)
    except Exception as exc:
        raise DecoderFailed(f"decord: {first}; PyAV: {reason(exc)}") from None
    log.debug("decord cannot open %s (%s): reading it with PyAV", path, first)
    return n, h, w, "pyav"


def _shape(path: Path, shown: str | Path) -> tuple[int, int, int, str]:
    st = path.stat()
    try:
        return _video_shape(str(path), (st.st_mtime_ns, st.st_size, st.st_ino))
    except Exception as exc:
        raise VideoDecodeError(shown, f"cannot decode video ({reason(exc, path, shown)})") from None


def _decode_frames(
    path: str, indices: list[int], size: tuple[int, int] | None, full: tuple[int, int], reader: str
) -> torch.Tensor:
    """Frames ``indices`` (sorted, distinct) of a video at ``size`` (None: full size ``full``), uint8 (N, H, W, 3):
    decord, or PyAV where decord cannot (the same frames)."""
    out_w = (size or full)[1]
    if reader != "decord":
        first = "it cannot open the file"
    elif out_w in _BAD_DECODE_WIDTHS:
        first = f"it cannot return frames {out_w} px wide"
    else:
        decord = _decord()
        try:
            kw = {"width": size[1], "height": size[0]} if size is not None else {}
            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS, **kw)
            frames = vr.get_batch(indices).asnumpy()
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise DecoderFailed(f"decord returned frames of shape {tuple(frames.shape)}")
            return torch.from_numpy(frames)
        except Exception as exc:  # decord's errors carry the decoder's reason; PyAV gets its turn below
            if "DECORDArrayCopyFromTo" in str(exc) or isinstance(exc, DecoderFailed):
                _BAD_DECODE_WIDTHS.add(out_w)
            first = reason(exc)
    log.debug("decord cannot decode %s (%s): decoding it with PyAV", path, first)
    try:
        return torch.from_numpy(av_frames(path, indices, size))
    except Exception as exc:
        raise DecoderFailed(f"decord: {first}; PyAV: {reason(exc)}") from None


def num_frames(path: str | Path) -> int:
    """Frames of a video file, frame folder or frame list."""
    path = Path(path)
    check_file(path)
    if is_frame_source(path):
        return len(sources.frame_files(path))
    return count_video_frames(path)


def count_video_frames(path: str | Path, label: str | None = None) -> int:
    """Frames of a video container file; never reads a frame folder or frame list (for untrusted files). Errors
    name ``label`` (e.g. "the upload") instead of the path when it is given."""
    path = Path(path)
    shown = label if label is not None else path
    check_video_file(path, shown)
    return _shape(path, shown)[0]


def read_clip(
    path: str | Path,
    spec: ClipSpec,
    train: bool,
    rng: np.random.Generator | None = None,
    decode_short_side: int | None = None,
    max_frames: int | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode one clip of a video file, frame folder or frame list: uint8 (T, H, W, C) and the frame indices used.

    ``max_frames`` bounds the number of frames considered.
    """
    path = Path(path)
    check_file(path)
    if is_frame_source(path):
        short = decode_short_side if decode_short_side is not None else spec.decode_short_side
        files = sources.frame_files(path)
        if max_frames:
            files = files[:max_frames]
        idx = sample_indices(len(files), spec, train, rng)
        return torch.from_numpy(sources.read_images(files, idx, short)), idx
    return read_video_clip(path, spec, train, rng, decode_short_side, max_frames)


def read_video_clip(
    path: str | Path,
    spec: ClipSpec,
    train: bool,
    rng: np.random.Generator | None = None,
    decode_short_side: int | None = None,
    max_frames: int | None = None,
    label: str | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """``read_clip`` for a video container file only: never reads a frame folder or frame list, whatever the file
    is named (for untrusted files). Errors name ``label`` instead of the path when it is given."""
    path = Path(path)
    shown = label if label is not None else path
    check_video_file(path, shown)
    short = decode_short_side if decode_short_side is not None else spec.decode_short_side
    n, h, w, reader = _shape(path, shown)
    if max_frames:
        n = min(n, max_frames)
    idx = sample_indices(n, spec, train, rng)
    rh, rw = resized_hw(h, w, short)
    uniq, inverse = np.unique(idx, return_inverse=True)
    try:
        frames = _decode_frames(str(path), uniq.tolist(), (rh, rw) if (rh, rw) != (h, w) else None, (h, w), reader)
    except Exception as exc:
        raise VideoDecodeError(shown, f"cannot decode video ({reason(exc, path, shown)})") from None
    if frames.ndim != 4 or frames.shape[0] != len(uniq):
        raise VideoDecodeError(
            shown,
            f"cannot decode video (the decoder returned {frames.shape[0]} of {len(uniq)} frames: truncated file?)",
        )
    return frames[torch.from_numpy(inverse)], idx

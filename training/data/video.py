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
``sniff_container`` tells a container type from a file's first bytes.

Sampling (``ClipSpec.sampling``): ``segments`` (TSN: N equal segments, a random frame in each for training, the
centre at evaluation), ``uniform`` (N evenly spaced frames), ``random`` (a contiguous run of N frames with
``stride``, at a random start for training, centred at evaluation). Videos shorter than the clip loop.

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
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from indexing.errors import UserError
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
from training.data.manifest import FRAME_LIST_EXTENSION, IMAGE_EXTENSIONS

SAMPLINGS = ("segments", "uniform", "random")
DECODE_THREADS = int(os.environ.get("VIDRET_DECODE_THREADS", "1"))
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16
    size: int = 112
    sampling: str = "segments"
    stride: int = 2

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise UserError(f"--sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.frames < 1 or self.size < 8 or self.stride < 1:
            raise UserError(
                f"bad clip spec: frames={self.frames} (>= 1), size={self.size} (>= 8), stride={self.stride} (>= 1)"
            )

    @property
    def decode_short_side(self) -> int:
        """Short side frames are resized to at decode time (crops are taken from it)."""
        return int(round(self.size * 8 / 7))


# an absolute path inside a message (a decoder's or the OS's): "/a/b/c.mp4" -> "c.mp4"
_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"/:,;()\[\]]+/)*([^\s'\"/:,;()\[\]]*)")


def _without_paths(text: str) -> str:
    return _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text)


class VideoDecodeError(UserError):
    """A source that cannot be read. ``path`` is the source (or the label it was read under); ``reason`` says why
    and never contains an absolute path, so a service can show it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        reason = _without_paths(reason)
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def sample_indices(num_frames: int, spec: ClipSpec, train: bool, rng: np.random.Generator | None) -> np.ndarray:
    """Frame indices for one clip (length ``spec.frames``), looping videos shorter than the clip."""
    n, length = spec.frames, num_frames
    if length <= 0:
        raise ValueError("a video needs at least one frame")
    rng = rng if rng is not None else np.random.default_rng(0)
    if spec.sampling == "random":
        span = (n - 1) * spec.stride + 1
        start = int(rng.integers(0, max(length - span, 0) + 1)) if train else max(length - span, 0) // 2
        return (start + np.arange(n) * spec.stride) % length
    if length < n:  # loop the video
        offset = int(rng.integers(0, length)) if train and spec.sampling == "segments" else 0
        return (offset + np.arange(n)) % length
    if spec.sampling == "uniform":
        return np.round(np.linspace(0, length - 1, n)).astype(np.int64)
    edges = np.linspace(0, length, n + 1)
    lo, hi = np.floor(edges[:-1]).astype(np.int64), np.maximum(np.floor(edges[1:]).astype(np.int64), 1)
    hi = np.maximum(hi, lo + 1)
    if train:
        return lo + (rng.random(n) * (hi - lo)).astype(np.int64)
    return ((lo + hi - 1) // 2).astype(np.int64)


def _resized_hw(h: int, w: int, short: int | None) -> tuple[int, int]:
    if not short or min(h, w) <= short:
        return h, w
    scale = short / min(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _frame_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise VideoDecodeError(path, "the frame folder has no jpg/png images")
        return files
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(path, f"cannot read the frame list ({exc})") from None
    files = [path.parent / ln.strip() for ln in lines if ln.strip()]
    if not files:
        raise VideoDecodeError(path, "the frame list is empty")
    return files


def _read_images(files: list[Path], idx: np.ndarray, short: int | None) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    cache: dict[int, torch.Tensor] = {}
    out = []
    size: tuple[int, int] | None = None
    for i in idx.tolist():
        if i not in cache:
            f = files[i]
            try:
                with Image.open(f) as im:
                    img = im.convert("RGB")
                    size = size or _resized_hw(img.height, img.width, short)
                    if (img.height, img.width) != size:
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    cache[i] = torch.from_numpy(np.asarray(img).copy())
            except FileNotFoundError:
                raise VideoDecodeError(f, "frame image not found") from None
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise VideoDecodeError(f, f"unreadable image ({str(exc).splitlines()[0][:120]})") from None
        out.append(cache[i])
    return torch.stack(out)


def _decord():
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


def _check_file(path: Path, shown: str | Path | None = None) -> None:
    shown = path if shown is None else shown
    if not path.exists():
        raise VideoDecodeError(shown, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(shown, "empty file (0 bytes)")


def _is_frame_source(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == FRAME_LIST_EXTENSION


def _reason(exc: BaseException, path: str | Path | None = None, shown: str | Path | None = None) -> str:
    """One line saying why a decoder failed, with the file's path replaced by how it is shown."""
    import av

    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror).strip()[:200]
    text = str(exc)
    if isinstance(exc, _DecoderFailed):  # already a reason (or two)
        return text.replace(str(path), str(shown if shown is not None else Path(path).name)) if path else text
    text = re.sub(r"\[\d{2}:\d{2}:\d{2}\]\s*\S+:\d+:\s*", "\n", text)  # decord's "[time] file.cc:line: " prefixes
    opening = re.search(r"ERROR opening: .*, ([^,\n]+)$", text, re.M)  # decord: "ERROR opening: <path>, <why>"
    if opening:
        text = opening.group(1)
    if path is not None:
        text = text.replace(str(path), str(shown if shown is not None else Path(path).name))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next(
        (ln for ln in lines if "Error" in ln or "error" in ln or "failed" in ln),
        lines[0] if lines else type(exc).__name__,
    )
    return line[:200]


class _DecoderFailed(Exception):
    """decord failed (or returned wrong frames), or PyAV did; the message is already a reason."""


def _av_open(path: str):
    import av

    ext = sniff_file(path)
    if ext is None:
        raise _DecoderFailed(f"not a recognised video container ({CONTAINER_NAMES})")
    return av.open(path, format=CONTAINER_DEMUXERS[ext])


def _av_shape(path: str) -> tuple[int, int, int]:
    """(frames, height, width) with PyAV: the container's frame count, else the video packets counted."""
    with _av_open(path) as container:
        if not container.streams.video:
            raise _DecoderFailed("the file has no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:
            n = sum(1 for packet in container.demux(stream) if packet.size)
        h, w = int(stream.codec_context.height), int(stream.codec_context.width)
    if n <= 0 or h <= 0 or w <= 0:
        raise _DecoderFailed("the video has no frames")
    return n, h, w


def declared_shape(path: str | Path, label: str | None = None) -> tuple[int, int, int]:
    """(frames, height, width) as a video container file declares them, read from its headers with PyAV before any
    frame is decoded (for untrusted files: a small file may declare huge frames). The frame count is the stream's
    own, else its duration times its frame rate, else its video packets counted (demuxed, not decoded). Errors name
    ``label`` instead of the path when it is given."""
    path = Path(path)
    shown = label if label is not None else path
    _check_video_file(path, shown)
    try:
        with _av_open(str(path)) as container:
            if not container.streams.video:
                raise _DecoderFailed("the file has no video stream")
            stream = container.streams.video[0]
            h, w = int(stream.codec_context.height), int(stream.codec_context.width)
            n = int(stream.frames or 0)
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if n <= 0 and rate > 0 and stream.duration and stream.time_base:
                n = int(round(float(stream.duration * stream.time_base) * rate))
            elif n <= 0 and rate > 0 and container.duration:
                n = int(round(container.duration / 1e6 * rate))
            if n <= 0:
                n = sum(1 for packet in container.demux(stream) if packet.size)
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(shown, f"cannot read the video's headers ({_reason(exc, path, shown)})") from None
    if h <= 0 or w <= 0:
        raise VideoDecodeError(shown, "the video declares no frame size")
    return n, h, w


def _av_frames(path: str, indices: list[int], size: tuple[int, int] | None) -> torch.Tensor:
    """Frames ``indices`` (sorted, distinct) decoded in order with PyAV, resized to ``size`` (h, w) as decord resizes.
    Fewer frames come back when the video ends first."""
    wanted, out = set(indices), []
    with _av_open(path) as container:
        if not container.streams.video:
            raise _DecoderFailed("the file has no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODE_THREADS
        scaler = None
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                if size is None:
                    out.append(frame.to_ndarray(format="rgb24"))
                else:
                    scaler = scaler or av_scale_graph(frame, stream.time_base, size)
                    scaler.push(frame)
                    out.append(scaler.pull().to_ndarray())
            if i >= indices[-1]:
                break
    if not out:
        return torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    return torch.from_numpy(np.stack(out))


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
            raise _DecoderFailed("the video has no frames")
        h, w, c = vr[0].shape
        del vr
        if c != 3:  # decord opens the file but cannot return its frames at full size
            _BAD_DECODE_WIDTHS.add(int(w))
        return n, int(h), int(w), "decord"
    except Exception as exc:  # decord raises DECORDError / RuntimeError with the decoder's message
        first = _reason(exc)
    try:
        n, h, w = _av_shape(path)
    except Exception as exc:
        raise _DecoderFailed(f"decord: {first}; PyAV: {_reason(exc)}") from None
    log.debug("decord cannot open %s (%s): reading it with PyAV", path, first)
    return n, h, w, "pyav"


def _shape(path: Path, shown: str | Path) -> tuple[int, int, int, str]:
    st = path.stat()
    try:
        return _video_shape(str(path), (st.st_mtime_ns, st.st_size, st.st_ino))
    except Exception as exc:
        raise VideoDecodeError(shown, f"cannot decode video ({_reason(exc, path, shown)})") from None


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
                raise _DecoderFailed(f"decord returned frames of shape {tuple(frames.shape)}")
            return torch.from_numpy(frames)
        except Exception as exc:  # decord's errors carry the decoder's reason; PyAV gets its turn below
            if "DECORDArrayCopyFromTo" in str(exc) or isinstance(exc, _DecoderFailed):
                _BAD_DECODE_WIDTHS.add(out_w)
            first = _reason(exc)
    log.debug("decord cannot decode %s (%s): decoding it with PyAV", path, first)
    try:
        return _av_frames(path, indices, size)
    except Exception as exc:
        raise _DecoderFailed(f"decord: {first}; PyAV: {_reason(exc)}") from None


def num_frames(path: str | Path) -> int:
    """Frames of a video file, frame folder or frame list."""
    path = Path(path)
    _check_file(path)
    if _is_frame_source(path):
        return len(_frame_files(path))
    return count_video_frames(path)


def count_video_frames(path: str | Path, label: str | None = None) -> int:
    """Frames of a video container file; never reads a frame folder or frame list (for untrusted files). Errors
    name ``label`` (e.g. "the upload") instead of the path when it is given."""
    path = Path(path)
    shown = label if label is not None else path
    _check_video_file(path, shown)
    return _shape(path, shown)[0]


def _check_video_file(path: Path, shown: str | Path) -> None:
    _check_file(path, shown)
    if not path.is_file():
        raise VideoDecodeError(shown, "not a video file")


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
    _check_file(path)
    if _is_frame_source(path):
        short = decode_short_side if decode_short_side is not None else spec.decode_short_side
        files = _frame_files(path)
        if max_frames:
            files = files[:max_frames]
        idx = sample_indices(len(files), spec, train, rng)
        return _read_images(files, idx, short), idx
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
    _check_video_file(path, shown)
    short = decode_short_side if decode_short_side is not None else spec.decode_short_side
    n, h, w, reader = _shape(path, shown)
    if max_frames:
        n = min(n, max_frames)
    idx = sample_indices(n, spec, train, rng)
    rh, rw = _resized_hw(h, w, short)
    uniq, inverse = np.unique(idx, return_inverse=True)
    try:
        frames = _decode_frames(str(path), uniq.tolist(), (rh, rw) if (rh, rw) != (h, w) else None, (h, w), reader)
    except Exception as exc:
        raise VideoDecodeError(shown, f"cannot decode video ({_reason(exc, path, shown)})") from None
    if frames.ndim != 4 or frames.shape[0] != len(uniq):
        raise VideoDecodeError(
            shown,
            f"cannot decode video (the decoder returned {frames.shape[0]} of {len(uniq)} frames: truncated file?)",
        )
    return frames[torch.from_numpy(inverse)], idx


def middle_frame_jpeg(
    path: str | Path, short_side: int = 192, quality: int = 85, *, video_only: bool = False, label: str | None = None
) -> bytes:
    """The middle frame of a video (or frame folder / list) as JPEG bytes, for thumbnails. ``video_only`` reads
    ``path`` as a video container only (``read_video_clip``), with errors naming ``label``."""
    import io

    from PIL import Image

    # the centre frame of a 3-frame uniform clip is the video's middle frame
    spec = ClipSpec(frames=3, size=8, sampling="uniform")
    if video_only:
        clip, _ = read_video_clip(path, spec, train=False, decode_short_side=short_side, label=label)
    else:
        clip, _ = read_clip(path, spec, train=False, decode_short_side=short_side)
    buf = io.BytesIO()
    Image.fromarray(clip[1].numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()

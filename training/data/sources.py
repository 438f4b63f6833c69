"""Reading video sources without torch: clip specs and frame sampling, file checks, frame folders and frame lists
(Pillow), video containers' headers and frames (PyAV), thumbnails, and the errors that name a source without its
path. training/data/video.py builds the training path on it (decord first, tensors); the ONNX server
(training/data/npclip.py, docs/export.md) and the service's upload checks and thumbnails use it alone, so a server
with an ONNX model imports no torch.

Sampling (``ClipSpec.sampling``): ``segments`` (TSN: N equal segments, a random frame in each for training, the
centre at evaluation), ``uniform`` (N evenly spaced frames), ``random`` (a contiguous run of N frames with
``stride``, at a random start for training, centred at evaluation). Videos shorter than the clip loop.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing.errors import UserError
from training.data.containers import CONTAINER_DEMUXERS, CONTAINER_NAMES, av_scale_graph, sniff_file
from training.data.manifest import FRAME_LIST_EXTENSION, IMAGE_EXTENSIONS

SAMPLINGS = ("segments", "uniform", "random")
DECODE_THREADS = int(os.environ.get("VIDRET_DECODE_THREADS", "1"))
THUMBNAIL_SHORT_SIDE = 192

# an absolute path inside a message (a decoder's or the OS's): "/a/b/c.mp4" -> "c.mp4"
_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"/:,;()\[\]]+/)*([^\s'\"/:,;()\[\]]*)")


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


def resized_hw(h: int, w: int, short: int | None) -> tuple[int, int]:
    if not short or min(h, w) <= short:
        return h, w
    scale = short / min(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def _without_paths(text: str) -> str:
    return _ABS_PATH.sub(lambda m: m.group(1) or "<path>", text)


class VideoDecodeError(UserError):
    """A source that cannot be read. ``path`` is the source (or the label it was read under); ``reason`` says why
    and never contains an absolute path, so a service can show it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        reason = _without_paths(reason)
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class DecoderFailed(Exception):
    """decord failed (or returned wrong frames), or PyAV did; the message is already a reason."""


def check_file(path: Path, shown: str | Path | None = None) -> None:
    shown = path if shown is None else shown
    if not path.exists():
        raise VideoDecodeError(shown, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(shown, "empty file (0 bytes)")


def check_video_file(path: Path, shown: str | Path) -> None:
    check_file(path, shown)
    if not path.is_file():
        raise VideoDecodeError(shown, "not a video file")


def is_frame_source(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == FRAME_LIST_EXTENSION


def frame_files(path: Path) -> list[Path]:
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


def read_images(files: list[Path], idx: np.ndarray, short: int | None) -> np.ndarray:
    """uint8 (T, H, W, 3): the images ``idx`` of a frame folder or list, resized to the short side ``short``."""
    from PIL import Image, UnidentifiedImageError

    cache: dict[int, np.ndarray] = {}
    out = []
    size: tuple[int, int] | None = None
    for i in idx.tolist():
        if i not in cache:
            f = files[i]
            try:
                with Image.open(f) as im:
                    img = im.convert("RGB")
                    size = size or resized_hw(img.height, img.width, short)
                    if (img.height, img.width) != size:
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    cache[i] = np.asarray(img).copy()
            except FileNotFoundError:
                raise VideoDecodeError(f, "frame image not found") from None
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise VideoDecodeError(f, f"unreadable image ({str(exc).splitlines()[0][:120]})") from None
        out.append(cache[i])
    return np.stack(out)


def reason(exc: BaseException, path: str | Path | None = None, shown: str | Path | None = None) -> str:
    """One line saying why a decoder failed, with the file's path replaced by how it is shown."""
    import av

    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror).strip()[:200]
    text = str(exc)
    if isinstance(exc, DecoderFailed):  # already a reason (or two)
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


def av_open(path: str):
    import av

    ext = sniff_file(path)
    if ext is None:
        raise DecoderFailed(f"not a recognised video container ({CONTAINER_NAMES})")
    return av.open(path, format=CONTAINER_DEMUXERS[ext])


def av_shape(path: str) -> tuple[int, int, int]:
    """(frames, height, width) with PyAV: the container's frame count, else the video packets counted."""
    with av_open(path) as container:
        if not container.streams.video:
            raise DecoderFailed("the file has no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:
            n = sum(1 for packet in container.demux(stream) if packet.size)
        h, w = int(stream.codec_context.height), int(stream.codec_context.width)
    if n <= 0 or h <= 0 or w <= 0:
        raise DecoderFailed("the video has no frames")
    return n, h, w


def declared_shape(path: str | Path, label: str | None = None) -> tuple[int, int, int]:
    """(frames, height, width) as a video container file declares them, read from its headers with PyAV before any
    frame is decoded (for untrusted files: a small file may declare huge frames). The frame count is the stream's
    own, else its duration times its frame rate, else its video packets counted (demuxed, not decoded). Errors name
    ``label`` instead of the path when it is given."""
    path = Path(path)
    shown = label if label is not None else path
    check_video_file(path, shown)
    try:
        with av_open(str(path)) as container:
            if not container.streams.video:
                raise DecoderFailed("the file has no video stream")
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
        raise VideoDecodeError(shown, f"cannot read the video's headers ({reason(exc, path, shown)})") from None
    if h <= 0 or w <= 0:
        raise VideoDecodeError(shown, "the video declares no frame size")
    return n, h, w


def av_frames(path: str, indices: list[int], size: tuple[int, int] | None) -> np.ndarray:
    """Frames ``indices`` (sorted, distinct) decoded in order with PyAV, resized to ``size`` (h, w) as decord resizes.
    Fewer frames come back when the video ends first."""
    wanted, out = set(indices), []
    with av_open(path) as container:
        if not container.streams.video:
            raise DecoderFailed("the file has no video stream")
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
        return np.empty((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(out)


def middle_frame_jpeg(
    path: str | Path,
    short_side: int = THUMBNAIL_SHORT_SIDE,
    quality: int = 85,
    *,
    video_only: bool = False,
    label: str | None = None,
) -> bytes:
    """The middle frame of a video (or frame folder / list) as JPEG bytes, for thumbnails, resized to ``short_side``
    as clips are. ``video_only`` reads ``path`` as a video container only (never a frame folder or list, whatever
    its name: for uploads), with errors naming ``label``. PyAV decodes videos here, on a torch server too."""
    from PIL import Image

    path = Path(path)
    shown = label if label is not None else path
    middle = ClipSpec(frames=3, size=8, sampling="uniform")  # the centre of 3 evenly spaced frames, as clips sample
    if not video_only and is_frame_source(path):
        check_file(path)
        files = frame_files(path)
        frame = read_images(files, sample_indices(len(files), middle, False, None)[1:2], short_side)[0]
    else:
        check_video_file(path, shown)
        try:
            n, h, w = av_shape(str(path))
            rh, rw = resized_hw(h, w, short_side)
            i = int(sample_indices(n, middle, False, None)[1])
            frames = av_frames(str(path), [i], (rh, rw) if (rh, rw) != (h, w) else None)
        except Exception as exc:
            raise VideoDecodeError(shown, f"cannot decode video ({reason(exc, path, shown)})") from None
        if len(frames) != 1:
            raise VideoDecodeError(shown, "cannot decode video (the middle frame is missing: truncated file?)")
        frame = frames[0]
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()

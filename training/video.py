"""Decode and sample clips: video files through decord, frame folders and frame lists through torchvision.

A clip is a uint8 tensor (T, H, W, C) plus the frame indices it was sampled at.

Sources:
* a video file (anything decord opens: mp4, avi, mkv, webm, mov);
* a folder of frame images (jpg/png, read with Pillow), ordered by file name;
* a frame-list file ``*.frames``: one image path per line, relative to the file's folder (how a MARS tracklet,
  a run of frames inside a person's folder, is pointed at without copying images).

Sampling (``ClipSpec.sampling``): ``segments`` (TSN: N equal segments, a random frame in each for training, the
centre at evaluation), ``uniform`` (N evenly spaced frames), ``random`` (a contiguous run of N frames with
``stride``, at a random start for training, centred at evaluation). Videos shorter than the clip loop.

decord readers are opened inside the call that reads (so inside DataLoader workers, never inherited from the
parent), with a bounded number of decoding threads, and resize at decode time. Frame images are read with Pillow:
torchvision 0.29's image decoding is deprecated and failed on valid PNG files here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from indexing.errors import UserError
from training.manifest import FRAME_LIST_EXTENSION, IMAGE_EXTENSIONS

SAMPLINGS = ("segments", "uniform", "random")
DECODE_THREADS = int(os.environ.get("VIDRET_DECODE_THREADS", "1"))


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
            raise UserError(f"bad clip spec: frames={self.frames} (>= 1), size={self.size} (>= 8), "
                            f"stride={self.stride} (>= 1)")

    @property
    def decode_short_side(self) -> int:
        """Short side frames are resized to at decode time (crops are taken from it)."""
        return int(round(self.size * 8 / 7))


class VideoDecodeError(UserError):
    def __init__(self, path: str | Path, reason: str) -> None:
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


def _decord():  # noqa: ANN202 - the decord module, with the decoder's own console logging silenced
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


@lru_cache(maxsize=4096)
def _video_shape(path: str, mtime: float) -> tuple[int, int, int]:
    decord = _decord()

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
    n = len(vr)
    if n == 0:
        raise RuntimeError("the video has no frames")
    h, w = vr[0].shape[:2]
    del vr
    return n, int(h), int(w)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def num_frames(path: str | Path) -> int:
    path = Path(path)
    _check_file(path)
    if path.is_dir() or path.suffix.lower() == FRAME_LIST_EXTENSION:
        return len(_frame_files(path))
    try:
        return _video_shape(str(path), path.stat().st_mtime)[0]
    except Exception as exc:  # decord raises DECORDError / RuntimeError with the decoder's message
        raise VideoDecodeError(path, f"cannot decode video ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    line = next((ln for ln in text if "Error" in ln or "error" in ln), text[0] if text else type(exc).__name__)
    return line.strip()[:160]


def read_clip(path: str | Path, spec: ClipSpec, train: bool, rng: np.random.Generator | None = None,
              decode_short_side: int | None = None, max_frames: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Decode one clip: uint8 (T, H, W, C) and the frame indices used.

    ``max_frames`` bounds the number of frames considered (uploads to the service).
    """
    path = Path(path)
    _check_file(path)
    short = decode_short_side if decode_short_side is not None else spec.decode_short_side
    if path.is_dir() or path.suffix.lower() == FRAME_LIST_EXTENSION:
        files = _frame_files(path)
        if max_frames:
            files = files[:max_frames]
        idx = sample_indices(len(files), spec, train, rng)
        return _read_images(files, idx, short), idx
    decord = _decord()

    try:
        n, h, w = _video_shape(str(path), path.stat().st_mtime)
        if max_frames:
            n = min(n, max_frames)
        idx = sample_indices(n, spec, train, rng)
        rh, rw = _resized_hw(h, w, short)
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = _decode_frames(decord, str(path), uniq.tolist(), (rh, rw) if (rh, rw) != (h, w) else None)
    except VideoDecodeError:
        raise
    except Exception as exc:  # decord's errors carry the decoder's reason
        raise VideoDecodeError(path, f"cannot decode video ({_reason(exc)})") from None
    if frames.ndim != 4 or frames.shape[0] != len(uniq):
        raise VideoDecodeError(path, f"decoder returned {frames.shape[0]} of {len(uniq)} frames (truncated file?)")
    return frames[torch.from_numpy(inverse)], idx


# decord 0.6.0 fails to resize at decode time to some output widths (12, 16, 24, 48, 72, ... px: "DECORDArrayCopyFromTo:
# The size must exactly match"); for those widths the frames are decoded at full size and resized with torch.
_BAD_DECODE_WIDTHS: set[int] = set()


def _decode_frames(decord, path: str, indices: list[int], size: tuple[int, int] | None) -> torch.Tensor:  # noqa: ANN001
    if size is not None and size[1] not in _BAD_DECODE_WIDTHS:
        try:
            vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS, width=size[1], height=size[0])
            return torch.from_numpy(vr.get_batch(indices).asnumpy())
        except Exception as exc:  # only decord's resize bug is handled here; anything else is re-raised below
            if "DECORDArrayCopyFromTo" not in str(exc):
                raise
            _BAD_DECODE_WIDTHS.add(size[1])
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
    frames = torch.from_numpy(vr.get_batch(indices).asnumpy())
    if size is None or tuple(frames.shape[1:3]) == size:
        return frames
    x = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear",
                                        antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def middle_frame_jpeg(path: str | Path, short_side: int = 192, quality: int = 85) -> bytes:
    """The middle frame of a video (or frame folder / list) as JPEG bytes, for thumbnails."""
    import io

    from PIL import Image

    # the centre frame of a 3-frame uniform clip is the video's middle frame
    clip, _ = read_clip(path, ClipSpec(frames=3, size=8, sampling="uniform"), train=False,
                        decode_short_side=short_side)
    buf = io.BytesIO()
    Image.fromarray(clip[1].numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()

"""Clip sampling and decoding: video files (decord), frame folders, frame lists, and every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.synth import write_mp4
from training.video import ClipSpec, VideoDecodeError, middle_frame_jpeg, num_frames, read_clip, sample_indices


def _frames(n: int = 20, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame t has brightness 10 * t in its first channel: the decoded frame tells its index."""
    f = np.zeros((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        f[t, :, :, 0] = 10 * t
        f[t, :, :, 1] = 128
    return f


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    write_mp4(d / "v.mp4", _frames())
    folder = d / "frames"
    folder.mkdir()
    for t, fr in enumerate(_frames(6)):
        Image.fromarray(fr).save(folder / f"{t:04d}.png")
    (d / "list.frames").write_text("\n".join(f"frames/{t:04d}.png" for t in (5, 4, 3)) + "\n")
    data = (d / "v.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 20)
    shutil.copy(folder / "0000.png", d / "image.mp4")
    (d / "empty_folder").mkdir()
    bad_folder = d / "bad_folder"
    bad_folder.mkdir()
    shutil.copy(folder / "0000.png", bad_folder / "0000.png")
    (bad_folder / "0001.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    return {p.stem if p.is_file() else p.name: p for p in d.iterdir()}


def test_segments_sampling_train_random_eval_centre() -> None:
    spec = ClipSpec(frames=4, sampling="segments")
    assert sample_indices(40, spec, train=False, rng=None).tolist() == [4, 14, 24, 34]
    rng = np.random.default_rng(0)
    idx = sample_indices(40, spec, train=True, rng=rng)
    assert all(10 * i <= v < 10 * (i + 1) for i, v in enumerate(idx))
    runs = {tuple(sample_indices(40, spec, True, np.random.default_rng(s))) for s in range(5)}
    assert len(runs) > 1


def test_uniform_and_random_sampling_and_looping() -> None:
    assert sample_indices(10, ClipSpec(frames=4, sampling="uniform"), False, None).tolist() == [0, 3, 6, 9]
    idx = sample_indices(100, ClipSpec(frames=4, sampling="random", stride=3), True, np.random.default_rng(1))
    assert np.all(np.diff(idx) == 3)
    # short videos loop
    assert sample_indices(3, ClipSpec(frames=7, sampling="segments"), False, None).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sample_indices(5, ClipSpec(frames=4, sampling="random", stride=2), False, None).tolist() == [0, 2, 4, 1]


def test_video_file_decodes_the_sampled_frames_resized(media: dict[str, Path]) -> None:
    spec = ClipSpec(frames=4, size=24, sampling="uniform")  # decode short side 27
    clip, idx = read_clip(media["v"], spec, train=False)
    assert clip.dtype == torch.uint8 and clip.shape == (4, 27, 36, 3)
    assert idx.tolist() == [0, 6, 13, 19]
    red = clip[..., 0].float().mean(dim=(1, 2))
    assert torch.allclose(red, torch.tensor([10.0 * int(i) for i in idx]), atol=6)
    assert num_frames(media["v"]) == 20


@pytest.mark.parametrize("width", [12, 16, 24, 48])
def test_decode_time_resize_widths_decord_cannot_do(media: dict[str, Path], width: int) -> None:
    clip, _ = read_clip(media["v"], ClipSpec(frames=2, size=8), train=False, decode_short_side=width * 3 // 4)
    assert clip.shape[1:] == (width * 3 // 4, width, 3)


def test_frame_folder_and_frame_list(media: dict[str, Path]) -> None:
    clip, idx = read_clip(media["frames"], ClipSpec(frames=3, size=24, sampling="uniform"), train=False,
                          decode_short_side=0)
    assert clip.shape == (3, 48, 64, 3) and idx.tolist() == [0, 2, 5]
    assert clip[:, 0, 0, 0].tolist() == [0, 20, 50]
    clip, _ = read_clip(media["list"], ClipSpec(frames=3, size=24, sampling="uniform"), train=False,
                        decode_short_side=0)
    assert clip[:, 0, 0, 0].tolist() == [50, 40, 30]  # the list's order, not the file names'


@pytest.mark.parametrize("name,reason", [
    ("truncated", "cannot decode"), ("empty", "empty file"), ("text", "cannot decode"), ("image", "cannot decode"),
    ("missing", "file not found"), ("empty_folder", "no jpg/png"), ("bad_folder", "unreadable image"),
])
def test_bad_inputs_raise_a_clear_error(media: dict[str, Path], name: str, reason: str) -> None:
    path = media.get(name, media["v"].parent / "missing.mp4")
    with pytest.raises(VideoDecodeError, match=reason) as info:
        read_clip(path, ClipSpec(frames=8, size=16, sampling="uniform"), train=False)
    assert "\n" not in str(info.value) and info.value.path.endswith(path.name if name != "bad_folder" else "0001.jpg")


def test_middle_frame_thumbnail(media: dict[str, Path]) -> None:
    jpeg = middle_frame_jpeg(media["v"])
    assert jpeg[:2] == b"\xff\xd8"
    img = np.asarray(Image.open(__import__("io").BytesIO(jpeg)))
    assert abs(img[..., 0].mean() - 100) < 12  # frame 10 of 20

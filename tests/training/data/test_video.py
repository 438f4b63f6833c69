"""Clip sampling and decoding: video files (decord, PyAV where decord fails), frame folders, frame lists, container
sniffing for untrusted files, and every kind of bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_container
from training.data.synth import write_mp4
from training.data.video import (
    ClipSpec,
    VideoDecodeError,
    count_video_frames,
    middle_frame_jpeg,
    num_frames,
    read_clip,
    read_video_clip,
    sample_indices,
    sniff_container,
    sniff_file,
)


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
    clip, idx = read_clip(
        media["frames"], ClipSpec(frames=3, size=24, sampling="uniform"), train=False, decode_short_side=0
    )
    assert clip.shape == (3, 48, 64, 3) and idx.tolist() == [0, 2, 5]
    assert clip[:, 0, 0, 0].tolist() == [0, 20, 50]
    clip, _ = read_clip(
        media["list"], ClipSpec(frames=3, size=24, sampling="uniform"), train=False, decode_short_side=0
    )
    assert clip[:, 0, 0, 0].tolist() == [50, 40, 30]  # the list's order, not the file names'


@pytest.mark.parametrize(
    "name,reason",
    [
        ("truncated", "cannot decode"),
        ("empty", "empty file"),
        ("text", "cannot decode"),
        ("image", "cannot decode"),
        ("missing", "file not found"),
        ("empty_folder", "no jpg/png"),
        ("bad_folder", "unreadable image"),
    ],
)
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


# --- container sniffing, untrusted files, and videos decord cannot decode (PyAV) ---------------------------------

CONTAINERS = [
    (".mp4", "mp4", "libx264"),
    (".mov", "mov", "libx264"),
    (".mkv", "matroska", "libx264"),
    (".webm", "webm", "libvpx"),
    (".avi", "avi", "mpeg4"),
    (".mpg", "mpeg", "mpeg2video"),
    (".ts", "mpegts", "libx264"),
]


def _red(clip: torch.Tensor) -> list[float]:
    return clip[..., 0].float().mean(dim=(1, 2)).tolist()


@pytest.mark.parametrize("ext,fmt,codec", CONTAINERS)
def test_containers_are_told_by_their_bytes_not_their_names(tmp_path: Path, ext: str, fmt: str, codec: str) -> None:
    path = write_container(tmp_path / "clip.frames", _frames(10, 32, 48), fmt, codec)  # a misleading name
    assert sniff_file(path) == ext
    clip, idx = read_video_clip(path, ClipSpec(frames=4, size=24, sampling="uniform"), train=False, decode_short_side=0)
    assert clip.shape == (4, 32, 48, 3) and idx.tolist() == [0, 3, 6, 9]
    assert _red(clip) == pytest.approx([10.0 * i for i in idx], abs=10)  # lossy codecs: frames 30 levels apart
    assert count_video_frames(path) == 10


def test_sniffing_rejects_non_videos_and_a_lone_ts_sync_byte(media: dict[str, Path]) -> None:
    ts_packet = b"G" + bytes(187)
    for head in (
        b"",
        b"G",
        b"G" + b"/etc/hosts\n" * 100,
        ts_packet * 2 + b"x" * 300,
        ts_packet * 3 + b"x",
        (ts_packet * 4)[:-188] + b"H" + bytes(187),
        media["text"].read_bytes(),
        media["image"].read_bytes(),
    ):
        assert sniff_container(head) is None, head[:20]
    assert sniff_container(ts_packet * 3) == ".ts" and sniff_container(ts_packet * 40) == ".ts"
    assert sniff_container(b"\x00\x00\x00\x18ftypisom" + bytes(16)) == ".mp4"


def test_untrusted_reads_never_open_frame_lists_or_folders(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import PIL.Image

    import training.data.video as video

    opened: list = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    monkeypatch.setattr(video.sources, "frame_files", lambda p: opened.append(p) or [])
    image = (media["frames"] / "0001.png").resolve()
    crafted = tmp_path / "crafted.frames"  # a frame list that also passes the MPEG-TS check
    crafted.write_bytes((b"G\n" + str(image).encode().ljust(185) + b"\n") * 24)
    assert sniff_file(crafted) == ".ts"
    spec = ClipSpec(frames=4, size=16)
    for path in (media["list"], crafted, media["frames"]):
        with pytest.raises(VideoDecodeError) as info:
            read_video_clip(path, spec, train=False, label="the upload")
        assert str(info.value).startswith("the upload: ") and str(path.parent) not in str(info.value)
        with pytest.raises(VideoDecodeError):
            count_video_frames(path, label="the upload")
    with pytest.raises(VideoDecodeError, match="^the upload: "):
        middle_frame_jpeg(crafted, video_only=True, label="the upload")
    assert opened == []


def test_a_48px_video_decord_cannot_decode_is_read_with_pyav(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "w48.mp4"
    write_mp4(path, _frames(12, 48, 48))
    caplog.set_level(logging.DEBUG, logger="training.data.video")
    assert num_frames(path) == 12
    clip, idx = read_clip(path, ClipSpec(frames=4, size=42, sampling="uniform"), train=False)  # 48 px: no resize
    assert clip.shape == (4, 48, 48, 3) and idx.tolist() == [0, 4, 7, 11]
    assert _red(clip) == pytest.approx([10.0 * i for i in idx], abs=6)
    assert any("decoding it with PyAV" in r.getMessage() for r in caplog.records)
    resized, _ = read_clip(path, ClipSpec(frames=4, size=24, sampling="uniform"), train=False)
    assert resized.shape == (4, 27, 27, 3) and _red(resized) == pytest.approx(_red(clip), abs=3)
    img = np.asarray(Image.open(__import__("io").BytesIO(middle_frame_jpeg(path))))
    assert img.shape == (48, 48, 3) and abs(img[..., 0].mean() - 60) < 12  # frame 6 of 12
    wide = write_container(tmp_path / "w48h26.mkv", _frames(6, 26, 48), "matroska", "libx264")
    clip, idx = read_video_clip(wide, ClipSpec(frames=3, size=24, sampling="uniform"), train=False)
    assert clip.shape == (3, 26, 48, 3) and _red(clip) == pytest.approx([10.0 * i for i in idx], abs=6)


class _BrokenDecord:
    """decord failing on every file, so that everything is read with PyAV."""

    class logging:
        QUIET = 0

        @staticmethod
        def set_level(level: int) -> None:
            pass

    @staticmethod
    def cpu(i: int) -> None:
        return None

    @staticmethod
    def VideoReader(*args, **kwargs) -> None:
        raise RuntimeError("simulated decord failure")


@pytest.mark.parametrize("short", [0, 27, 20])  # full size, and resized at decode time
def test_pyav_gives_the_frames_decord_gives(
    media: dict[str, Path], monkeypatch: pytest.MonkeyPatch, short: int
) -> None:
    import training.data.video as video

    spec = ClipSpec(frames=6, size=24, sampling="segments")
    video._video_shape.cache_clear()
    want, want_idx = read_clip(media["v"], spec, train=True, rng=np.random.default_rng(3), decode_short_side=short)
    monkeypatch.setattr(video, "_decord", lambda: _BrokenDecord)
    video._video_shape.cache_clear()
    try:
        assert num_frames(media["v"]) == 20
        got, got_idx = read_clip(media["v"], spec, train=True, rng=np.random.default_rng(3), decode_short_side=short)
    finally:
        video._video_shape.cache_clear()
    assert got_idx.tolist() == want_idx.tolist() and got.shape == want.shape
    assert (got.int() - want.int()).abs().max().item() <= 2  # the same decoder and scaler: equal here


def test_both_decoders_failing_name_both_reasons_and_no_path(media: dict[str, Path]) -> None:
    with pytest.raises(VideoDecodeError) as info:
        read_video_clip(media["text"], ClipSpec(frames=4, size=16), train=False, label="the upload")
    reason = info.value.reason
    assert "decord:" in reason and "PyAV:" in reason and "not a recognised video container" in reason
    assert "/" not in reason and str(info.value).startswith("the upload: cannot decode video")


def test_cli_trains_and_embeds_a_48px_synthetic_set(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    data, run, emb = tmp_path / "synth48", tmp_path / "run", tmp_path / "gallery.npz"
    res = run_cli(
        "data",
        "synth",
        data,
        "--size",
        "48",
        "--identities",
        "4",
        "--cameras",
        "2",
        "--clips-per-camera",
        "1",
        "--frames",
        "8",
        "--workers",
        "1",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(
        "train",
        "--train",
        data / "train.csv",
        "--out",
        run,
        "--size",
        "48",
        "--epochs",
        "1",
        "--model",
        "tiny3d",
        "--frames",
        "4",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--embedding-dim",
        "8",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(
        "embed",
        "--checkpoint",
        run / "checkpoints" / "last.pt",
        "--manifest",
        data / "gallery.csv",
        "--out",
        emb,
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    from indexing.embeddings import load_embeddings

    out = load_embeddings(emb)  # checks they are finite and L2-normalised
    assert out.embeddings.shape == (2, 8) and sorted(out.ids.tolist()) == ["id0002_c2_s0", "id0003_c2_s0"]

"""The numpy eval clip (training/data/npclip.py, what an ONNX server decodes uploads with) against the torch path
(read_video_clip + clip_transform) on real videos: smaller than the decode size (upsampled), larger (resized at
decode time), each sampling; and the embeddings of both through one ONNX export within 1e-4 cosine distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_container
from training.data.dataset import MEAN, STD, clip_transform
from training.data.npclip import ClipDecodeError, NpClipSpec, decode_frames, preprocess
from training.data.video import ClipSpec, read_video_clip


def _video(path: Path, t: int, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, h, w, 3))
    frames = np.clip(base + np.arange(t)[:, None, None, None] * 7, 0, 255).astype(np.uint8)
    return write_container(path, frames, "mp4", "libx264")


@pytest.mark.parametrize(
    ("shape", "sampling"), [((9, 30, 40), "segments"), ((20, 96, 128), "uniform"), ((13, 64, 48), "random")]
)
def test_numpy_clip_equals_the_torch_transform(tmp_path: Path, shape: tuple, sampling: str) -> None:
    video = _video(tmp_path / "v.mp4", *shape)
    spec = ClipSpec(frames=6, size=32, sampling=sampling, stride=2)
    frames, _ = read_video_clip(video, spec, train=False)
    want = clip_transform(frames, spec, False, None, MEAN, STD).numpy()
    np_spec = NpClipSpec(6, 32, sampling, 2)
    got_frames = decode_frames(video, np_spec)
    assert np.array_equal(got_frames, frames.numpy())  # the same decoded frames, bit for bit
    got = preprocess(got_frames, np_spec, MEAN, STD)
    assert got.shape == want.shape == (3, 6, 32, 32)
    assert float(np.abs(got - want).max()) < 1e-5


def test_numpy_decode_errors(tmp_path: Path) -> None:
    (tmp_path / "t.mp4").write_bytes(b"hello, I am text")
    with pytest.raises(ClipDecodeError, match="upload"):
        decode_frames(tmp_path / "t.mp4", NpClipSpec(4, 32), label="upload")


def test_embeddings_through_onnx_match_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import torch

    from tests.training.test_export import make_checkpoint
    from training.embed import embed_video, load_checkpoint
    from training.export import PARITY_COSINE, cosine_distance, export_onnx
    from training.onnx_model import OnnxModel

    ck = make_checkpoint(tmp_path / "m.pt", "tiny3d", frames=6, size=32)
    export_onnx(ck, tmp_path / "m.onnx")
    loaded, onnx_model = load_checkpoint(ck, device="cpu"), OnnxModel(tmp_path / "m.onnx")
    for i, shape in enumerate([(9, 30, 40), (20, 96, 128)]):
        video = _video(tmp_path / f"v{i}.mp4", *shape, seed=i)
        with torch.no_grad():
            want = embed_video(loaded, video)[None]
        got = onnx_model.embed_video(video)[None]
        assert float(cosine_distance(want, got).max()) <= PARITY_COSINE

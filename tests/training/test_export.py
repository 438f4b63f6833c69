"""``vidret export --format onnx`` (training/export.py): onnxruntime's embeddings equal torch's within 1e-4 cosine
distance on real decoded clips, for every exportable model; dynamic batch; the metadata; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from indexing.errors import UserError
from tests.conftest import run_cli
from training.data.dataset import MEAN, STD, clip_transform
from training.data.video import read_clip

pytest.importorskip("onnxruntime")

from training.embed import load_checkpoint
from training.export import PARITY_COSINE, OnnxEmbedder, cosine_distance, export_onnx
from training.models import build_model


def make_checkpoint(path: Path, arch: str, frames: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A vidret checkpoint of ``arch`` with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=3, embedding_dim=24)
    model.train()
    with torch.no_grad():  # a few forward passes give the BatchNorm layers running statistics
        for _ in range(2):
            model(torch.randn(4, 3, frames, size, size))
    torch.save(
        {
            "format": "vidret-checkpoint",
            "version": 1,
            "arch": {"name": arch, "num_classes": 3, "embedding_dim": 24, "scale": 16.0},
            "model": model.state_dict(),
            "classes": ["a", "b", "c"],
            "input": {
                "frames": frames,
                "size": size,
                "sampling": "segments",
                "stride": 2,
                "mean": list(MEAN),
                "std": list(STD),
            },  # fmt: skip
            "embedding_dim": 24,
        },
        path,
    )
    return path


def _videos(synth_dir: Path) -> list[Path]:
    return sorted((synth_dir / "videos").rglob("*.mp4"))[:3]


@pytest.mark.parametrize("arch", ["tiny3d", "r2plus1d_18", "resnet18-tap", "tiny2d-tap"])
def test_onnxruntime_equals_torch_on_real_clips(arch: str, synth_dir: Path, tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / f"{arch}.pt", arch)
    res = export_onnx(ck, tmp_path / "m.onnx")
    assert res["parity_cosine_distance"] <= PARITY_COSINE
    loaded = load_checkpoint(ck, device="cpu")
    clips = [clip_transform(read_clip(v, loaded.spec, train=False)[0], loaded.spec, False, None, loaded.mean,
                            loaded.std) for v in _videos(synth_dir)]  # fmt: skip
    x = torch.stack(clips)
    with torch.no_grad():
        want = loaded.model.embed(x).numpy()
    ort = OnnxEmbedder(tmp_path / "m.onnx")
    got = ort.run(x.numpy())  # batch 3: not the batch the graph was traced with
    assert got.shape == want.shape == (3, 24)
    assert float(cosine_distance(want, got).max()) <= PARITY_COSINE
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    one = ort.run(x[:1].numpy())
    assert float(cosine_distance(want[:1], one).max()) <= PARITY_COSINE


def test_the_command_line_writes_the_metadata(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    res = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "onnxruntime vs torch cosine distance" in res.stdout
    ort = OnnxEmbedder(out)
    loaded = load_checkpoint(checkpoint, device="cpu")
    meta = ort.meta
    assert meta["vidret.checkpoint_sha256"] == loaded.sha256 and meta["vidret.model"] == "tiny3d"
    assert int(meta["vidret.frames"]) == loaded.spec.frames and int(meta["vidret.size"]) == loaded.spec.size
    assert int(meta["vidret.decode_short_side"]) == loaded.spec.decode_short_side
    assert (
        json.loads(meta["vidret.mean"]) == list(loaded.mean)
        and int(meta["vidret.embedding_dim"]) == loaded.embedding_dim
    )
    inp = ort.session.get_inputs()[0]
    assert inp.name == "clip" and isinstance(inp.shape[0], str)  # a dynamic batch dimension
    assert inp.shape[1:] == [3, loaded.spec.frames, loaded.spec.size, loaded.spec.size]
    res = run_cli("export", "--checkpoint", checkpoint, "--format", "tflite", "--out", out)
    assert res.returncode == 1 and "--format" in res.stderr and "Traceback" not in res.stderr


def test_errors_name_the_file_or_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        export_onnx(tmp_path / "nope.pt", tmp_path / "m.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match="bad.onnx"):
        OnnxEmbedder(tmp_path / "bad.onnx")
    ck = make_checkpoint(tmp_path / "t.pt", "tiny3d")

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(UserError, match="model 'tiny3d' cannot be exported to ONNX.*aten::fancy"):
        export_onnx(ck, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".m.onnx*"))

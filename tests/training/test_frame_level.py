"""Frame-level training (--loss-level frame): the loss sees every frame with its clip's label, a clip's embedding
stays the mean of its frames', statistics split clean and outlier frames, 3D backbones are refused, and resume stays
exact with the PK sampler and SGD, with workers and under torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import training.plots as plots
import training.trainer as trainer
from tests.conftest import run_cli
from training.data.synth import SynthConfig, generate
from training.frame_level import FrameSums, frame_targets
from training.models import build_model

NEW_OPTIONS = dict(model="tiny2d-tap", loss_level="frame", sampler="pk", pk_identities=3, pk_clips=2, optimizer="sgd")
TIMING = {"clips_per_s", "data_wait_share", "epoch_seconds"}


@pytest.fixture(scope="module")
def frame_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 training identities x 4 clips of 10 frames, 4 of them outliers in each clip."""
    out = tmp_path_factory.mktemp("frames")
    generate(out, SynthConfig(identities=12, cameras=2, clips_per_camera=2, frames=10, size=32, seed=1,
                              frame_noise=0.4), workers=1)  # fmt: skip
    return out


def test_a_clip_embedding_is_the_mean_of_its_frame_embeddings() -> None:
    torch.manual_seed(0)
    model = build_model("tiny2d-tap", num_classes=5, embedding_dim=16).eval()
    x = torch.randn(3, 3, 4, 24, 24)
    with torch.no_grad():
        emb, logits = model(x)
        f_emb, f_logits = model(x, per_frame=True)
        raw = model.neck(model.backbone.frame_model(x.transpose(1, 2).reshape(12, 3, 24, 24)))
    assert f_emb.shape == (12, 16) and f_logits.shape == (12, 5) and logits.shape == (3, 5)
    assert torch.allclose(f_emb, F.normalize(raw, dim=1), atol=1e-5)
    assert torch.allclose(emb, F.normalize(raw.view(3, 4, 16).mean(1), dim=1), atol=1e-5)
    assert frame_targets(torch.tensor([2, 0]), 3).tolist() == [2, 2, 2, 0, 0, 0]


def test_frame_sums_split_clean_and_outlier_frames() -> None:
    sums = FrameSums(torch.device("cpu"))
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    p = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.5, 0.5])
    sums.add(w, p, torch.tensor([[0, 1, 0], [1, -1, -1]], dtype=torch.int8))
    cols = FrameSums.columns(sums.gather(False))
    assert cols["weight_mean_clean_frames"] == pytest.approx(2.0)  # frames 0 and 2
    assert cols["weight_mean_outlier_frames"] == pytest.approx(3.0)  # frames 1 and 3
    assert cols["p_y_clean_frames"] == pytest.approx(0.85) and cols["p_y_outlier_frames"] == pytest.approx(0.15)


def _fit(data: Path, out: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> trainer.FitResult:
    with monkeypatch.context() as m:
        m.setattr(plots, "plot_training", lambda *a, **k: None)
        cfg = trainer.TrainConfig(
            train=str(data / "train.csv"), out=str(out), frames=4, size=24, lr=0.05, embedding_dim=16,
            seed=5, quiet=True, cache=True, **{"workers": 2, "epochs": 2, **NEW_OPTIONS, **kw},
        )  # fmt: skip
        return trainer.fit(cfg)


def test_the_loss_sees_every_frame_with_its_clip_label(frame_data: Path, tmp_path: Path, monkeypatch) -> None:
    seen = []
    real = trainer.build_loss

    def recording(name, **kw):
        loss = real(name, **kw)
        forward = loss.forward

        def spy(logits, y):
            seen.append((logits.shape, y.clone()))
            return forward(logits, y)

        loss.forward = spy
        return loss

    monkeypatch.setattr(trainer, "build_loss", recording)
    res = _fit(frame_data, tmp_path / "run", monkeypatch, workers=0, epochs=1, loss="imae")
    assert seen and all(shape[0] == 6 * 4 and len(y) == 24 for shape, y in seen)  # P x K clips x 4 frames
    assert all((y.view(6, 4) == y.view(6, 4)[:, :1]).all() for _, y in seen)  # a clip's frames share its label
    row = res.history[0]
    for col in ("weight_mean_clean_frames", "weight_mean_outlier_frames", "p_y_clean_frames", "p_y_outlier_frames"):
        assert 0 < row[col] < float("inf"), col
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        assert "p_y_outlier_frames" in next(csv.reader(fh))


def test_a_3d_backbone_with_frame_level_loss_is_a_clear_error(frame_data: Path, tmp_path: Path) -> None:
    res = run_cli("train", "--train", frame_data / "train.csv", "--out", tmp_path / "r", "--model", "tiny3d",
                  "--loss-level", "frame", "--workers", "0")  # fmt: skip
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--loss-level frame needs a frame backbone" in res.stderr and "tiny3d" in res.stderr
    res = run_cli("train", "--train", frame_data / "train.csv", "--out", tmp_path / "r", "--sampler", "pq")
    assert res.returncode != 0 and "--sampler must be one of random, pk" in res.stderr


def _learnt(history):
    return [{k: repr(v) for k, v in h.items() if k not in TIMING} for h in history]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_pk_sgd_and_frame_level_is_exact_with_workers(frame_data: Path, tmp_path: Path, monkeypatch):
    straight = _fit(frame_data, tmp_path / "straight", monkeypatch)
    _fit(frame_data, tmp_path / "resumed", monkeypatch, stop_after_epoch=1)
    resumed = _fit(frame_data, tmp_path / "resumed", monkeypatch, resume=True)
    assert _learnt(resumed.history) == _learnt(straight.history)
    assert _same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_torchrun_resume_with_pk_sgd_and_frame_level_is_exact(frame_data: Path, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in NEW_OPTIONS.items()]

    def torchrun(out: Path, *extra: str) -> None:
        cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", "vidret", "train",
               "--train", str(frame_data / "train.csv"), "--out", str(out), "--epochs", "2", "--frames", "4",
               "--size", "24", "--embedding-dim", "16", "--lr", "0.05", "--workers", "1", "--cache", *flags, *extra]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]

    torchrun(tmp_path / "ddp")
    torchrun(tmp_path / "resumed", "--stop-after-epoch", "1")
    torchrun(tmp_path / "resumed", "--resume")
    rows = [list(csv.DictReader(open(r / "metrics.csv"))) for r in (tmp_path / "ddp", tmp_path / "resumed")]
    learnt = ("epoch", "loss", "train_acc", "lr", "weight_mean", "p_y_outlier_frames")
    assert [[r[c] for c in learnt] for r in rows[0]] == [[r[c] for c in learnt] for r in rows[1]]
    assert _same_weights(tmp_path / "ddp", tmp_path / "resumed")

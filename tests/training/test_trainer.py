"""Training through the real CLI: files of docs/formats.md, exact resume, DDP with torchrun, bad videos, bad flags, NaN."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from indexing.errors import UserError
from tests.conftest import TRAIN_ARGS, run_cli
from training.runtime import resolve_precision, select_device


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _train(synth_dir: Path, out: Path, *extra: str):
    return run_cli("train", "--train", synth_dir / "train.csv", "--out", out, *TRAIN_ARGS, *extra)


def test_run_directory_and_checkpoint_follow_the_contract(trained_run: Path) -> None:
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["model"] == "tiny3d" and cfg["loss"] == "imae" and cfg["resolved_device"] == "cpu"
    rows = _metrics(trained_run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in (
        "loss",
        "train_acc",
        "val_mAP",
        "val_cmc1",
        "lr",
        "clips_per_s",
        "data_wait_share",
        "weight_mean_clean",
        "weight_mean_noisy",
    ):
        assert rows[-1][col] != "", col
    assert 0.0 <= float(rows[-1]["val_mAP"]) <= 1.0
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    assert (trained_run / "plots" / "curves.png").stat().st_size > 1000
    ck = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)  # plain tensors and primitives
    assert ck["arch"]["name"] == "tiny3d" and ck["embedding_dim"] == 32 and ck["epoch"] == 2
    assert ck["input"] == {
        "frames": 4,
        "size": 24,
        "sampling": "segments",
        "stride": 2,
        "mean": ck["input"]["mean"],
        "std": ck["input"]["std"],
    }
    assert len(ck["classes"]) == 6 and {"optimizer", "scheduler", "scaler", "rng_ranks"} <= set(ck)
    assert (trained_run / "checkpoints" / "best.pt").exists()
    for written in ("checkpoints/last.pt", "metrics.csv", "config.json", "plots/curves.png"):  # atomic, not 0600
        assert (trained_run / written).stat().st_mode & 0o777 == 0o644, written


def test_loss_falls(tmp_path: Path) -> None:
    from training.data.synth import SynthConfig, generate

    generate(tmp_path / "data", SynthConfig(identities=16, cameras=2, clips_per_camera=3, frames=8, size=32), workers=1)
    res = run_cli(
        "train",
        "--train",
        tmp_path / "data" / "train.csv",
        "--out",
        tmp_path / "run",
        *TRAIN_ARGS,
        "--epochs",
        "2",
        "--loss",
        "cce",
        "--lr",
        "1e-3",
        "--warmup-epochs",
        "0",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    losses = [float(r["loss"]) for r in _metrics(tmp_path / "run")]
    assert losses[1] < 0.9 * losses[0]


def test_resume_reproduces_the_uninterrupted_run(synth_dir: Path, trained_run: Path, tmp_path: Path) -> None:
    val = ("--val-query", synth_dir / "query.csv", "--val-gallery", synth_dir / "gallery.csv")
    res = _train(synth_dir, tmp_path / "run", "--epochs", "2", "--stop-after-epoch", "1", *val)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(_metrics(tmp_path / "run")) == 1
    res = _train(synth_dir, tmp_path / "run", "--epochs", "2")
    assert res.returncode == 1 and "--resume" in res.stderr  # never silently overwrites a run
    res = _train(synth_dir, tmp_path / "run", "--epochs", "2", "--resume", *val)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed, straight = _metrics(tmp_path / "run"), _metrics(trained_run)
    assert len(resumed) == 2
    for col in ("loss", "train_acc", "val_mAP"):
        assert float(resumed[1][col]) == pytest.approx(float(straight[1][col]), rel=1e-6, abs=1e-9), col


def test_torchrun_two_processes_write_one_run_and_resume_it_exactly(synth_dir: Path, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}

    def torchrun(out: Path, *extra: str) -> None:
        cmd = [
            str(bin_dir / "torchrun"),
            "--nproc-per-node",
            "2",
            "--no-python",
            "vidret",
            "train",
            "--train",
            str(synth_dir / "train.csv"),
            "--out",
            str(out),
            "--epochs",
            "2",
            *TRAIN_ARGS,
            "--workers",
            "2",
            *extra,
        ]  # the last --workers counts
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]

    torchrun(tmp_path / "ddp")
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["workers"] == 2
    assert [r["epoch"] for r in _metrics(tmp_path / "ddp")] == ["1", "2"]
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # --workers 2 in each process: stopped after epoch 1 and resumed, the run is the uninterrupted one
    torchrun(tmp_path / "resumed", "--stop-after-epoch", "1")
    torchrun(tmp_path / "resumed", "--resume")
    learnt = ("epoch", "loss", "train_acc", "lr", "weight_mean", "weight_share_noisy")
    assert [[r[c] for c in learnt] for r in _metrics(tmp_path / "resumed")] == [
        [r[c] for c in learnt] for r in _metrics(tmp_path / "ddp")
    ]
    straight, resumed = (
        torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
        for run in (tmp_path / "ddp", tmp_path / "resumed")
    )
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_bad_video_policy(synth_dir: Path, tmp_path: Path) -> None:
    lines = (synth_dir / "train.csv").read_text().splitlines()
    lines = [lines[0]] + [ln.replace("videos/", f"{synth_dir}/videos/") for ln in lines[1:]]
    lines.append(f"{tmp_path / 'broken.mp4'},broken,id0000,c1,id0000")
    (tmp_path / "broken.mp4").write_text("not a video")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    args = ("train", "--train", tmp_path / "train.csv", *TRAIN_ARGS, "--epochs", "1")
    res = run_cli(*args, "--out", tmp_path / "fail")
    assert res.returncode == 1 and "broken.mp4: cannot decode video" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(*args, "--out", tmp_path / "skip", "--on-bad-video", "skip")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "broken.mp4" in (tmp_path / "skip" / "skipped.txt").read_text()


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--loss", "focal"), "--loss must be one of"),
        (("--epochs", "0"), "--epochs: invalid value 0"),
        (("--device", "cuda"), "CUDA is not available"),
        (("--sampling", "dense"), "--sampling must be one of"),
        (("--model", "resnet9000"), "unknown model 'resnet9000'"),
        (("--imae-normalize", "sum"), "normalize must be"),
        (("--log-interval", "0"), "--log-interval: invalid value 0"),
    ],
)
def test_bad_flags_give_one_line_errors(synth_dir: Path, tmp_path: Path, flags: tuple, needle: str) -> None:
    res = _train(synth_dir, tmp_path / "run", "--epochs", "1", *flags)
    assert res.returncode == 1 and needle in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("log_interval", [2, 20])  # read back mid-epoch (a step late) and at the epoch's end
def test_nan_loss_stops_with_the_last_good_checkpoint_intact(
    synth_dir: Path, tmp_path: Path, monkeypatch, log_interval: int
) -> None:
    import training.trainer as trainer
    from training.losses import build_loss

    calls = {"n": 0}

    class NanAfterFirstEpoch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = build_loss("cce")
            self.sample_weights = self.inner.sample_weights

        def forward(self, logits, targets):
            calls["n"] += 1
            out = self.inner(logits, targets)
            return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(trainer, "build_loss", lambda *a, **k: NanAfterFirstEpoch())
    cfg = trainer.TrainConfig(
        train=str(synth_dir / "train.csv"),
        out=str(tmp_path / "run"),
        model="tiny3d",
        frames=4,
        size=24,
        batch_size=8,
        workers=0,
        epochs=3,
        quiet=True,
        loss="cce",
        log_interval=log_interval,
    )
    # three steps an epoch: the fourth loss is the first step of epoch 2, whenever it is read back
    with pytest.raises(trainer.TrainingDiverged, match=r"became nan at epoch 2, step 1; the last good checkpoint"):
        trainer.fit(cfg)
    assert calls["n"] == 3 + min(log_interval, 3)  # stopped at the first read-back after it
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_resume_restores_the_gpu_generators_saved_in_the_checkpoint(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.plots as plots
    import training.trainer as trainer

    monkeypatch.setattr(plots, "plot_training", lambda *a, **k: None)  # seconds; the figures are not the point here
    cfg = trainer.TrainConfig(
        train=str(synth_dir / "train.csv"),
        out=str(tmp_path / "run"),
        model="tiny3d",
        frames=4,
        size=24,
        batch_size=8,
        workers=0,
        epochs=1,
        quiet=True,
        device="cpu",
    )
    trainer.fit(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    gpu_states = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)]
    ck["rng_ranks"][0]["cuda"] = gpu_states  # as written on a machine with two GPUs
    torch.save(ck, last)
    restored: list[list[torch.Tensor]] = []
    # resumed on a machine with one GPU (faked: this one has none); nothing is left to train, so no CUDA call but
    # the generators' runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(list(states)))
    trainer.fit(trainer.TrainConfig(**{**vars(cfg), "resume": True}))
    assert len(restored) == 1 and len(restored[0]) == 1 and torch.equal(restored[0][0], gpu_states[0])


def test_device_and_precision_selection(caplog: pytest.LogCaptureFixture) -> None:
    assert select_device("auto", cuda_available=False).type == "cpu"
    assert select_device("auto", local_rank=1, cuda_available=True) == torch.device("cuda:1")
    assert select_device("cpu", cuda_available=True).type == "cpu"
    with pytest.raises(UserError, match="CUDA is not available"):
        select_device("cuda", cuda_available=False)
    with pytest.raises(UserError, match="--device must be"):
        select_device("tpu")
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", gpu, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", gpu, bf16_supported=False) == "fp16"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert "oneDNN" in caplog.text and "fp32, the CPU default" in caplog.text  # bf16 on a CPU: said once, not refused
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)


def test_fine_tuning_from_a_vidret_checkpoint_says_what_it_loaded(
    synth_dir: Path, trained_run: Path, tmp_path: Path
) -> None:
    ck = trained_run / "checkpoints" / "last.pt"
    res = _train(synth_dir, tmp_path / "ft", "--epochs", "1", "--weights", ck)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"--weights {ck}: loaded the checkpoint's backbone and embedding neck" in res.stdout
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["weights"] == str(ck) and cfg["imae_t"] == 8.0  # fine-tuning's T (docs/losses.md)

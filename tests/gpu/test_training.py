"""Training on the GPU: two epochs of tiny3d and of r2plus1d_18 with DataLoader workers, fp16 with the scaler,
channels-last, --compile, and an exact resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import training.trainer as trainer
from tests.gpu.helpers import TIMING, clip_batch, compare_grads, exact_fp32, fit_on_gpu, make_model

pytestmark = pytest.mark.gpu


def _check_run(res, epochs: int, precision: str | None = None, validated: bool = False) -> dict:
    """A finished run: every epoch's row finite, metrics.csv written, on the GPU; its resolved config."""
    assert len(res.history) == epochs
    for row in res.history:
        assert math.isfinite(row["loss"]) and row["clips_per_s"] > 0 and 0 <= row["data_wait_share"] <= 1, row
        if validated:
            assert 0 <= row["val_mAP"] <= 1, row
    with open(res.run_dir / "metrics.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == epochs
    config = json.loads((res.run_dir / "config.json").read_text())
    assert config["resolved_device"].startswith("cuda"), config["resolved_device"]
    expected = precision or ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert config["resolved_precision"] == expected
    assert res.last_checkpoint.is_file()
    return config


def test_tiny3d_trains_two_epochs_on_the_gpu_with_workers(gpu_run) -> None:
    config = _check_run(gpu_run, 2, validated=True)
    assert config["workers"] == 4


def test_r2plus1d_18_trains_two_epochs_on_the_gpu_with_workers(gpu_data: Path, tmp_path: Path) -> None:
    res = fit_on_gpu(
        gpu_data,
        tmp_path / "run",
        model="r2plus1d_18",
        size=112,
        embedding_dim=128,
        val_query=str(gpu_data / "query.csv"),
        val_gallery=str(gpu_data / "gallery.csv"),
    )
    _check_run(res, 2, validated=True)


def test_fp16_trains_with_the_gradient_scaler(gpu_data: Path, tmp_path: Path) -> None:
    res = fit_on_gpu(gpu_data, tmp_path / "run", precision="fp16", workers=2)
    _check_run(res, 2, precision="fp16")
    scaler = torch.load(res.last_checkpoint, weights_only=True)["scaler"]
    assert scaler and 0 < scaler["scale"] < float("inf"), scaler  # enabled, and saved for --resume


@pytest.mark.parametrize("name,size", [("tiny3d", 64), ("r2plus1d_18", 112)])
def test_channels_last_gives_what_the_default_layout_gives(name: str, size: int) -> None:
    cuda = torch.device("cuda")
    x, y = clip_batch(4, 8, size, 6)
    outs, grads = [], []
    with exact_fp32():
        for channels_last in (True, False):
            model = make_model(name, 6, cuda).eval()  # make_model: channels-last, as the trainer places it
            inp = x.to(cuda)
            if not channels_last:
                model = model.to(memory_format=torch.contiguous_format)
            else:
                inp = inp.contiguous(memory_format=torch.channels_last_3d)
            emb, logits = model(inp)
            torch.nn.functional.cross_entropy(logits, y.to(cuda)).backward()
            outs.append({"embedding": emb.detach().double().cpu()})
            grads.append({n: p.grad.double().cpu() for n, p in model.named_parameters()})
    # the two layouts pick other kernels, which sum in another order: equal up to fp32 rounding
    emb = compare_grads(outs[1], outs[0])
    assert emb.ok(1e-4, 0.999999), f"embeddings, channels-last vs default layout: {emb}"
    diff = compare_grads(grads[1], grads[0])
    assert diff.ok(1e-3, 0.99999), f"gradients, channels-last vs default layout: {diff}"


def test_the_trainer_keeps_model_and_clips_channels_last_on_the_gpu(
    gpu_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real_step = trainer._train_step

    def watching(cfg, job, optim, batch):
        convs = [m.weight for m in optim.model.modules() if isinstance(m, torch.nn.Conv3d)]
        seen.append(all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs))
        return real_step(cfg, job, optim, batch)

    monkeypatch.setattr(trainer, "_train_step", watching)
    fit_on_gpu(gpu_data, tmp_path / "run", epochs=1, workers=0)
    assert seen and all(seen), "conv weights are not channels-last during training"


def test_compile_trains_on_the_gpu(gpu_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[object] = []
    real_compile = torch.compile

    def recording(model, *a, **k):
        compiled.append(model)
        return real_compile(model, *a, **k)

    monkeypatch.setattr(torch, "compile", recording)
    res = fit_on_gpu(gpu_data, tmp_path / "run", compile=True, workers=2)
    _check_run(res, 2)
    assert len(compiled) == 1, "--compile did not reach torch.compile"
    # the checkpoint holds the bare model's weights (no _orig_mod. prefix): it loads for embedding and --resume
    state = torch.load(res.last_checkpoint, weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)


def _learnt(history: list[dict[str, float]]) -> list[dict[str, str]]:
    return [{k: repr(v) for k, v in h.items() if k not in TIMING} for h in history]  # repr: nan == nan


def _weight_differences(a_run, b_run) -> dict[str, float]:
    a = torch.load(a_run.last_checkpoint, weights_only=True)["model"]
    b = torch.load(b_run.last_checkpoint, weights_only=True)["model"]
    return {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}


def test_resume_on_the_gpu_is_exact(gpu_data: Path, tmp_path: Path, deterministic: None) -> None:
    straight = fit_on_gpu(gpu_data, tmp_path / "straight", workers=2)
    # first the GPU itself: the same run twice (else a difference below could not be told from a resume bug)
    again = fit_on_gpu(gpu_data, tmp_path / "again", workers=2)
    differ = _weight_differences(straight, again)
    assert not differ, (
        f"two identical GPU runs differ, even on deterministic algorithms (largest differences): {differ}"
    )
    first = fit_on_gpu(gpu_data, tmp_path / "resumed", workers=2, stop_after_epoch=1)
    assert len(first.history) == 1
    resumed = fit_on_gpu(gpu_data, tmp_path / "resumed", workers=2, resume=True)
    assert _learnt(resumed.history) == _learnt(straight.history)
    differ = _weight_differences(straight, resumed)
    assert not differ, f"resumed weights differ from the straight run's (largest differences): {differ}"

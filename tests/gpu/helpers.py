"""What the GPU tests compare with, kept apart so that the CPU tests check it too: gradients under each precision
(with the trainer's gradient scaler for fp16), their agreement with fp32, embeddings' agreement."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.losses import build_loss
from training.models import build_model
from training.runtime import autocast

# the GPU runs' sizes: small, but real decoding, workers and validation
FRAMES, SIZE, BATCH = 8, 64, 8
# columns of a metrics row that measure time, not what was learnt
TIMING = {"clips_per_s", "data_wait_share", "epoch_seconds"}


def fit_on_gpu(data: Path, out: Path, **kw: Any) -> Any:
    """fit() on the GPU with the test sizes (a FitResult); ``kw`` overrides any TrainConfig field."""
    from training.trainer import TrainConfig, fit

    cfg = {
        "train": str(data / "train.csv"),
        "out": str(out),
        "model": "tiny3d",
        "frames": FRAMES,
        "size": SIZE,
        "batch_size": BATCH,
        "epochs": 2,
        "workers": 4,
        "embedding_dim": 64,
        "lr": 3e-3,
        "seed": 0,
        "device": "cuda",
        "quiet": True,
        **kw,
    }
    return fit(TrainConfig(**cfg))


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 without TF32 in convolutions and matrix products (the reference the reduced precisions are held to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers its fp32_precision settings; these still hold
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def clip_batch(batch: int, frames: int, size: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking clips (B, 3, T, S, S) and labels, on the CPU, the same for a seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g)


def make_model(name: str, classes: int, device: torch.device, seed: int = 0) -> nn.Module:
    """A model as the trainer places it: on ``device``, channels-last on a GPU."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=classes, embedding_dim=64).to(device)
    return model.to(memory_format=torch.channels_last_3d) if device.type == "cuda" else model


@dataclass
class GradResult:
    grads: dict[str, torch.Tensor]  # float64 copies on the CPU
    logit_grad: torch.Tensor
    tries: int  # backward passes until the gradients were finite (the scaler lowers its scale on overflow)
    scale: float  # the gradient scaler's scale that gave them (1.0 without a scaler)


def imae_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, max_tries: int = 24) -> GradResult:
    """The IMAE gradients of every parameter for one batch, computed as ``_train_step`` does: the forward under
    autocast, float32 logits, the loss, and for fp16 the backward through a GradScaler (unscaled before reading;
    an overflowing try is skipped and the scale lowered, as in training)."""
    device = next(model.parameters()).device
    x = x.to(device).contiguous(memory_format=torch.channels_last_3d) if device.type == "cuda" else x.to(device)
    y = y.to(device)
    loss_fn = build_loss("imae", t=8.0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the scaler's step needs one; lr 0 changes nothing
    for tries in range(1, max_tries + 1):
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            _, logits = model(x)
        logits = logits.float()
        logits.retain_grad()
        scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0
        scaler.scale(loss_fn(logits, y)).backward()
        scaler.unscale_(opt)
        grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}
        finite = all(bool(torch.isfinite(g).all()) for g in grads.values())
        scaler.step(opt)
        scaler.update()
        if finite:
            return GradResult(grads, (logits.grad.detach() / scale).double().cpu(), tries, scale)
    raise AssertionError(f"{precision}: no finite gradients in {max_tries} tries (last scale {scale:g})")


@dataclass
class GradDiff:
    rel_error: float  # |g - ref| / |ref| over all parameters together
    cosine: float  # of the two whole gradient vectors
    worst: str  # the parameter with the largest relative error among those that carry weight
    worst_rel_error: float
    nonfinite: list[str]

    def ok(self, rel: float, cos: float) -> bool:
        return not self.nonfinite and self.rel_error <= rel and self.cosine >= cos

    def __str__(self) -> str:
        return (
            f"relative error {self.rel_error:.4f}, cosine {self.cosine:.6f}, worst {self.worst} "
            f"({self.worst_rel_error:.4f})" + (f", non-finite: {self.nonfinite}" if self.nonfinite else "")
        )


def compare_grads(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor], floor: float = 1e-3) -> GradDiff:
    """How far ``other`` is from ``ref``; the worst parameter is looked for among those whose gradient norm is at
    least ``floor`` of the largest (the near-zero ones have no meaningful relative error)."""
    if ref.keys() != other.keys():
        raise AssertionError(f"different parameters: {sorted(ref.keys() ^ other.keys())}")
    nonfinite = [k for k, v in other.items() if not bool(torch.isfinite(v).all())]
    a = torch.cat([ref[k].flatten().double() for k in ref])
    b = torch.cat([other[k].flatten().double() for k in ref])
    if nonfinite:
        return GradDiff(math.inf, -1.0, nonfinite[0], math.inf, nonfinite)
    norm = float(a.norm())
    rel = float((a - b).norm()) / norm if norm > 0 else float((a - b).norm())
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if norm > 0 and float(b.norm()) > 0 else 0.0
    biggest = max(float(v.norm()) for v in ref.values())
    per = {
        k: float((ref[k] - other[k]).norm()) / float(ref[k].norm())
        for k in ref
        if float(ref[k].norm()) >= floor * biggest and biggest > 0
    }
    worst = max(per, key=per.get) if per else ""
    return GradDiff(rel, cos, worst, per.get(worst, 0.0), [])


def embedding_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(largest absolute difference, smallest row cosine) of two embedding matrices of the same videos."""
    assert a.shape == b.shape, (a.shape, b.shape)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-12)
    return float(np.abs(a64 - b64).max()) if a.size else 0.0, float(cos.min()) if len(cos) else 1.0

"""Classification losses for learning under label noise: CCE, label smoothing, MAE, GCE, SCE, NCE+RCE and IMAE.

Every loss is an ``nn.Module`` built by name through one registry (``build_loss``; the names, options and
constructors are in training/loss_registry.py) and shares one signature:

* ``loss(logits, targets)`` -> the reduced scalar to back-propagate;
* ``loss.sample_weights(logits, targets)`` -> each sample's weight, the L1 norm of dL_i/dz (the paper's
  "sample weighting" view, arXiv 1903.12141, Table 2).

The losses compute in at least float32 whatever the input dtype (bf16/fp16 logits from autocast give finite
gradients) and keep float64 inputs in float64.

IMAE is defined by its gradient; its integral diverges as p_y -> 1, so there is no honest closed-form IMAE loss
value. The module returns a surrogate whose gradient is exactly IMAE's:
``L_i = (w_i / 2) * (logsumexp_{j != y} z_j - z_y)`` with ``w_i = exp(T p_y (1 - p_y))`` detached.
Its value is only meaningful for back-propagation; log cross-entropy and the weight statistics instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.loss_registry import IMAE_T_FINETUNE, build_loss, list_losses, register_loss  # noqa: F401 (the registry)


def _prepare(
    logits: torch.Tensor, targets: torch.Tensor, check_on_host: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and labels; upcast half precision to float32 (float64 stays float64).

    ``check_on_host``: an out-of-range label raises at once, which reads the labels back (a host sync on a GPU).
    Without it nothing is read back: such a label is clamped and its sample's logits made NaN, so the loss is NaN
    and the trainer's device-side non-finite flag reports the step (read once per ``--log-interval``)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    n, c = logits.shape
    if c < 2:
        raise ValueError(f"need at least 2 classes, got {c}")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"targets must be (N,) = ({n},), got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got {targets.dtype}")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    if n:
        bad = (targets < 0) | (targets >= c)
        if check_on_host and bool(bad.any()):
            first = int(targets[bad.nonzero()[0, 0]])
            raise ValueError(f"label {first} is outside [0, {c}) for {c} classes")
        if not check_on_host:
            logits = logits + torch.where(bad, float("nan"), 0.0).to(logits.dtype)[:, None]
            targets = targets.clamp(0, c - 1)
    return logits, targets.long()


def _p_y(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(dim=1).gather(1, targets[:, None]).squeeze(1).exp()


class _Loss(nn.Module):
    """Base: subclasses implement ``_per_sample`` (un-reduced) and ``_weights`` (L1 norm of dL_i/dz).

    ``check_labels_on_host`` (default True): raise at once for an out-of-range label. The trainer turns it off, so a
    step reads nothing back from the device; a bad label then shows as a NaN loss at its step (``_prepare``)."""

    check_labels_on_host = True

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets, self.check_labels_on_host)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        return self._per_sample(logits, targets).mean()

    @torch.no_grad()
    def sample_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits.detach(), targets, self.check_labels_on_host)
        return self._weights(logits, targets)

    def _per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CCE(_Loss):
    """Categorical cross-entropy, optionally label-smoothed."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def _per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p = logits.softmax(dim=1)
        c = logits.shape[1]
        q = torch.full_like(p, self.label_smoothing / c)
        q.scatter_add_(1, targets[:, None], torch.full_like(p[:, :1], 1.0 - self.label_smoothing))
        return (p - q).abs().sum(dim=1)


class MAE(_Loss):
    """Mean absolute error between softmax and one-hot: L = ||p - e_y||_1 = 2 (1 - p_y)."""

    def _per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 2.0 * (1.0 - _p_y(logits, targets))

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p_y = _p_y(logits, targets)
        return 4.0 * p_y * (1.0 - p_y)


class GCE(_Loss):
    """Generalized cross-entropy (Zhang & Sabuncu 2018): L = (1 - p_y^q) / q."""

    def __init__(self, q: float = 0.7) -> None:
        super().__init__()
        if not 0.0 < float(q) <= 1.0:
            raise ValueError(f"GCE q must be in (0, 1], got {q}")
        self.q = float(q)

    def _per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p_y = logits.log_softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
        return (1.0 - torch.exp(self.q * log_p_y)) / self.q

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p_y = _p_y(logits, targets)
        return p_y.pow(self.q) * 2.0 * (1.0 - p_y)


class SCE(_Loss):
    """Symmetric cross-entropy (Wang et al. 2019): alpha * CE + beta * RCE, RCE = -A (1 - p_y), A = log(1e-4).

    A is the log of the clamped zero entries of the one-hot target, as in the authors' implementation.
    """

    A = math.log(1e-4)

    def __init__(self, alpha: float = 0.1, beta: float = 1.0) -> None:
        super().__init__()
        if float(alpha) < 0 or float(beta) < 0:
            raise ValueError(f"SCE alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def _per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p_y = logits.log_softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
        rce = -self.A * (1.0 - log_p_y.exp())
        return self.alpha * (-log_p_y) + self.beta * rce

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p_y = _p_y(logits, targets)
        return (self.alpha - self.beta * self.A * p_y) * 2.0 * (1.0 - p_y)


class NCERCE(_Loss):
    """NCE+RCE, the normalised active-passive loss (Ma et al., ICML 2020, "Normalized Loss Functions for Deep
    Learning with Noisy Labels"): ``alpha * NCE + beta * RCE``.

    ``NCE = -log p_y / sum_j (-log p_j)`` (cross-entropy normalised over all possible labels, in (0, 1]) and
    ``RCE = -sum_j p_j log q_j`` with the one-hot target's ``log 0`` clipped to ``A = -4``, so
    ``RCE = -A (1 - p_y) = 4 (1 - p_y)``. alpha = beta = 1 are the paper's CIFAR-10 values (CIFAR-100: 10 and 0.1).
    """

    A = -4.0

    def __init__(self, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        if float(alpha) < 0 or float(beta) < 0:
            raise ValueError(f"NCE+RCE alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def _per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = logits.log_softmax(dim=1)
        log_p_y = log_p.gather(1, targets[:, None]).squeeze(1)
        nce = log_p_y / log_p.sum(dim=1)  # (-log p_y) / sum_j (-log p_j)
        rce = -self.A * (1.0 - log_p_y.exp())
        return self.alpha * nce + self.beta * rce

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # no short closed form for NCE's gradient: take it from autograd (rows are independent, so the gradient of
        # the sum is each sample's own gradient)
        with torch.enable_grad():
            z = logits.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._per_sample(z, targets).sum(), z)
        return grad.abs().sum(dim=1)


class IMAE(_Loss):
    """Improved MAE (Wang et al., arXiv 1903.12141): CCE's direction, weight w = exp(T p_y (1 - p_y)).

    ``normalize="weight"`` divides the batch sum by the batch's total weight (only ratios between samples change
    with T); ``normalize="mean"`` divides by the batch size.
    """

    def __init__(self, t: float = IMAE_T_FINETUNE, normalize: str = "weight") -> None:
        super().__init__()
        if float(t) < 0 or not math.isfinite(float(t)):
            raise ValueError(f"IMAE t must be a finite number >= 0, got {t}")
        if normalize not in ("weight", "mean"):
            raise ValueError(f"IMAE normalize must be 'weight' or 'mean', got {normalize!r}")
        self.t, self.normalize = float(t), normalize

    def _weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p_y = _p_y(logits, targets)
        return torch.exp(self.t * p_y * (1.0 - p_y))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets, self.check_labels_on_host)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        return _IMAEFunction.apply(logits, targets, self.t, self.normalize == "weight")


class _IMAEFunction(torch.autograd.Function):
    """The stable surrogate ``sum_i (w_i / 2) (logsumexp_{j != y} z_j - z_y) / denom`` with a fused backward.

    One masked copy of the logits, exponentiated once, serves the weight and the gradient: with ``lse_o`` the
    log-sum-exp of the non-target logits, ``p_y = sigmoid(z_y - lse_o)`` (exact, no cancellation as p_y -> 1) and the
    gradient is ``(w_i / 2) (softmax_{j != y}(z) - e_y) / denom``. No division by 1 - p_y anywhere.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, t: float, by_weight: bool) -> torch.Tensor:
        idx = targets[:, None]
        others = logits.scatter(1, idx, float("-inf"))
        top = others.amax(dim=1, keepdim=True)  # finite for finite logits: there are at least 2 classes
        exp_o = others.sub_(top).exp_()  # exp(-inf) = 0 at the target
        sum_o = exp_o.sum(dim=1)
        margin = top.squeeze(1) + sum_o.log() - logits.gather(1, idx).squeeze(1)  # logsumexp_{j != y} z_j - z_y
        p_y = torch.sigmoid(-margin)
        w = torch.exp(t * p_y * (1.0 - p_y))
        denom = w.sum() if by_weight else logits.new_tensor(float(logits.shape[0]))
        half_w = w / (2.0 * denom)
        ctx.save_for_backward(exp_o, sum_o, half_w, idx)
        return (half_w * margin).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        exp_o, sum_o, half_w, idx = ctx.saved_tensors
        scale = half_w * grad_out
        grad = exp_o * (scale / sum_o)[:, None]  # (w/2) softmax over the non-target logits
        grad.scatter_(1, idx, -scale[:, None])
        return grad, None, None, None


def weight_curves(p_y: torch.Tensor, ts: list[float]) -> dict[str, torch.Tensor]:
    """Sample weight as a function of p_y for CCE, MAE and IMAE at each T (the paper's Figure 1)."""
    curves = {"CCE": 2.0 * (1.0 - p_y), "MAE": 4.0 * p_y * (1.0 - p_y)}
    for t in ts:
        curves[f"IMAE T={t:g}"] = torch.exp(t * p_y * (1.0 - p_y))
    return curves

"""Frame-level training (``vidret train --loss-level frame``), the protocol of the IMAE paper's video experiment.

With a frame backbone (a ``-tap`` model: a 2D network on every frame, features averaged over time) the classifier
and the loss apply to every frame's embedding, each frame carrying its clip's label, so a per-sample weight (IMAE's
``exp(T p_y (1 - p_y))``, GCE's ``p_y^q``) can damp the frames that show background or another person inside a
correctly labelled tracklet. A clip's retrieval embedding stays what it was: the mean over its frames (the model's
``embed``), so ``vidret embed``, the index and the service are unchanged.

``FrameSums`` keeps an epoch's per-frame statistics on the device (one sync per read, like the trainer's sums):
mean sample weight and mean ``p_y`` of clean and of outlier frames, where the manifest's ``outlier_frames`` says
which frames are which.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from indexing.errors import UserError

LOSS_LEVELS = ("clip", "frame")
FRAME_COLUMNS = ["weight_mean_clean_frames", "weight_mean_outlier_frames", "p_y_clean_frames", "p_y_outlier_frames"]


def check_loss_level(level: str, model: str) -> None:
    """A UserError for an unknown level or for ``frame`` with a backbone that has no frames of its own."""
    from training.models import is_frame_model

    if level not in LOSS_LEVELS:
        raise UserError(f"--loss-level must be one of {', '.join(LOSS_LEVELS)}, got {level!r}")
    if level == "frame" and not is_frame_model(model):
        raise UserError(
            f"--loss-level frame needs a frame backbone (resnet18-tap, resnet50-tap, tiny2d-tap); --model {model} "
            "is a 3D network whose features mix the frames, so no frame has an embedding of its own"
        )


def frame_targets(y: torch.Tensor, frames: int) -> torch.Tensor:
    """Each clip's label once per frame, in the clip-major order of the model's per-frame outputs."""
    return y.repeat_interleave(frames)


def per_clip(values: torch.Tensor, clips: int) -> torch.Tensor:
    """A per-frame statistic (B * T,) averaged over each clip's frames: (B,)."""
    return values.view(clips, -1).mean(dim=1)


class FrameSums:
    """Sums of the sample weight and ``p_y`` over clean and over outlier frames, and their counts (float64)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)  # w clean, w outlier, p clean, p outlier, n, n

    @torch.no_grad()
    def add(self, weights: torch.Tensor, p_y: torch.Tensor, outlier: torch.Tensor) -> None:
        """``weights``, ``p_y``: (B * T,); ``outlier``: (B, T) int8, 1 outlier, 0 clean, -1 unknown."""
        flags = outlier.reshape(-1).to(weights.device, non_blocking=True)
        clean, bad = (flags == 0).double(), (flags == 1).double()
        w, p = weights.double(), p_y.double()
        self.sums += torch.stack(
            [(w * clean).sum(), (w * bad).sum(), (p * clean).sum(), (p * bad).sum(), clean.sum(), bad.sum()]
        )

    def gather(self, enabled: bool) -> list[float]:
        if enabled:
            dist.all_reduce(self.sums)
        return self.sums.tolist()

    @staticmethod
    def columns(sums: list[float] | None) -> dict[str, float]:
        """The metrics.csv columns of ``gather``'s sums (NaN where no frame of the kind was seen)."""
        nan = float("nan")
        if sums is None:
            return dict.fromkeys(FRAME_COLUMNS, nan)
        wc, wo, pc, po, nc, no = sums
        return {
            "weight_mean_clean_frames": wc / nc if nc else nan,
            "weight_mean_outlier_frames": wo / no if no else nan,
            "p_y_clean_frames": pc / nc if nc else nan,
            "p_y_outlier_frames": po / no if no else nan,
        }

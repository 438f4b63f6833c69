"""``torchrun --nproc-per-node 2 tests/training/ddp_fit.py CONFIG_JSON``: ``fit()`` in each process, with a model
whose random draws differ per rank (input dropout after a rank-dependent number of extra draws), so each rank's
random stream is its own, as the dropout and augmentation of real models make it. The figures are not drawn."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F

import training.plots as plots
import training.trainer as trainer


class RankDropout(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.extra = int(os.environ.get("RANK", "0")) + 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            torch.rand(self.extra)  # rank r draws r + 1 numbers more per step: the ranks' streams part
            x = F.dropout(x, 0.2, True)
        return self.inner(x)


def main() -> None:
    cfg = trainer.TrainConfig(**json.loads(sys.argv[1]))
    real_build = trainer.build_model
    trainer.build_model = lambda *a, **k: RankDropout(real_build(*a, **k))
    plots.plot_training = lambda *a, **k: None
    trainer.fit(cfg)


if __name__ == "__main__":
    main()

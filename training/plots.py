"""Figures: the sample-weight curves of the losses (the paper's Figure 1)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def save_figure(fig, out: str | Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    """Write a matplotlib figure atomically (temp file in the same folder, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def plot_weights(out: str | Path, ts: list[float]) -> Path:
    """Sample weight against p_y for CCE, MAE and IMAE at each T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from training.losses import weight_curves

    p_y = torch.linspace(0.0, 1.0, 501, dtype=torch.float64)
    curves = weight_curves(p_y, ts)
    fig, (ax, ax_n) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, w in curves.items():
        style = "--" if name in ("CCE", "MAE") else "-"
        ax.plot(p_y.numpy(), w.numpy(), style, label=name, linewidth=2 if style == "--" else 1.6)
        ax_n.plot(p_y.numpy(), (w / w.max()).numpy(), style, label=name)
    ax.set(xlabel="$p_y$ (probability of the labelled class)", ylabel="sample weight $\\|\\partial L/\\partial z\\|_1$",
           title="Sample weight vs $p_y$", yscale="log")
    ax_n.set(xlabel="$p_y$", ylabel="weight / max weight", title="Normalised: which samples dominate")
    for a in (ax, ax_n):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("CCE favours hard samples (low $p_y$, often mislabelled); MAE starves them; "
                 "IMAE's T sets the emphasis", fontsize=9)
    path = save_figure(fig, out)
    plt.close(fig)
    return path

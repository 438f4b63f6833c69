"""Figures: the sample-weight curves of the losses (the paper's Figure 1)."""

from __future__ import annotations

from pathlib import Path

from indexing.atomic import atomic_write


def save_figure(fig, out: str | Path) -> Path:
    """Write a matplotlib figure atomically (indexing/atomic.py), in the format its extension names."""
    out = Path(out)
    return atomic_write(
        out,
        lambda fh: fig.savefig(fh, format=out.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight"),
        suffix=out.suffix,
    )


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
    ax.set(
        xlabel="$p_y$ (probability of the labelled class)",
        ylabel="sample weight $\\|\\partial L/\\partial z\\|_1$",
        title="Sample weight vs $p_y$",
        yscale="log",
    )
    ax_n.set(xlabel="$p_y$", ylabel="weight / max weight", title="Normalised: which samples dominate")
    for a in (ax, ax_n):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        "CCE favours hard samples (low $p_y$, often mislabelled); MAE starves them; IMAE's T sets the emphasis",
        fontsize=9,
    )
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_training(
    history: list[dict[str, float]], weights, flipped, known, loss: str, out_dir: str | Path
) -> list[Path]:
    """A run's curves (loss, train accuracy, val mAP/CMC-1) and its final sample-weight histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["loss"] for h in history], marker="o")
    axes[0].set(title="cross-entropy vs given labels", xlabel="epoch")
    axes[1].plot(epochs, [h["train_acc"] for h in history], marker="o")
    axes[1].set(title="train accuracy (given labels)", xlabel="epoch")
    val = [
        (e, h["val_mAP"], h["val_cmc1"])
        for e, h in zip(epochs, history, strict=True)
        if not math.isnan(h.get("val_mAP", float("nan")))
    ]
    if val:
        axes[2].plot([v[0] for v in val], [v[1] for v in val], marker="o", label="mAP")
        axes[2].plot([v[0] for v in val], [v[2] for v in val], marker="s", label="CMC-1")
        axes[2].legend()
    axes[2].set(title="validation retrieval", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"loss: {loss}")
    paths = [save_figure(fig, out_dir / "curves.png")]
    plt.close(fig)
    weights = np.asarray(weights)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    clean = np.asarray(known) & ~np.asarray(flipped)
    noisy = np.asarray(known) & np.asarray(flipped)
    bins = np.linspace(0, max(float(weights.max()), 1e-9), 31)
    if clean.any() or noisy.any():
        ax.hist(weights[clean], bins=bins, alpha=0.6, label=f"clean ({clean.sum()})")
        ax.hist(weights[noisy], bins=bins, alpha=0.6, label=f"mislabelled ({noisy.sum()})")
        ax.legend()
    else:
        ax.hist(weights, bins=bins, alpha=0.7, label="all samples")
    ax.set(title=f"final-epoch sample weights ({loss})", xlabel="weight = |dL/dz|_1", ylabel="samples")
    paths.append(save_figure(fig, out_dir / "sample_weights.png"))
    plt.close(fig)
    return paths

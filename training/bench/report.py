"""Reporting for the noise benchmark: results.csv, results.md (mean ± std) and the figures."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from indexing.atomic import atomic_write_text
from training.plots import save_figure


@dataclass
class RunResult:
    """One (loss, noise rate, seed) cell of the grid; mAP/CMC on the clean query/gallery split."""

    loss: str
    noise_rate: float
    seed: int
    final_mAP: float
    best_mAP: float
    final_cmc1: float
    best_cmc1: float
    train_acc_clean: float  # accuracy against the given labels on correctly labelled training samples
    train_acc_noisy: float  # ... and on the mislabelled ones (high = the noise was memorised)


RESULT_COLUMNS = [f.name for f in fields(RunResult)]


def write_results_csv(path: Path, results: Sequence[RunResult]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    for r in results:
        row = asdict(r)
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def read_results_csv(path: Path) -> list[RunResult]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            RunResult(
                loss=row["loss"],
                noise_rate=float(row["noise_rate"]),
                seed=int(row["seed"]),
                **{k: float(row[k]) for k in RESULT_COLUMNS[3:]},
            )
            for row in csv.DictReader(fh)
        ]


def _group(results: Sequence[RunResult]) -> dict[tuple[str, float], list[RunResult]]:
    groups: dict[tuple[str, float], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.loss, r.noise_rate)].append(r)
    return groups


def _ms(values: list[float], pct: bool = True) -> str:
    a = np.asarray(values, dtype=float) * (100.0 if pct else 1.0)
    return f"{a.mean():.1f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.1f}"


def results_markdown(results: Sequence[RunResult], header: str = "") -> str:
    """One table per metric family: rows = loss, columns = noise rate, cells = mean ± std over seeds (percent)."""
    groups = _group(results)
    losses = list(dict.fromkeys(r.loss for r in results))
    rates = sorted({r.noise_rate for r in results})
    seeds = len({r.seed for r in results})
    lines = [header] if header else []
    for title, attr in [
        ("final-epoch mAP", "final_mAP"),
        ("best-epoch mAP", "best_mAP"),
        ("final-epoch CMC-1", "final_cmc1"),
        ("best-epoch CMC-1", "best_cmc1"),
        ("train accuracy on mislabelled samples (given label; lower = less memorised)", "train_acc_noisy"),
        ("train accuracy on correctly labelled samples", "train_acc_clean"),
    ]:
        lines.append(f"\n**{title}** (%, mean ± std over {seeds} seed{'s' if seeds > 1 else ''})\n")
        lines.append("| loss | " + " | ".join(f"noise {r:g}" for r in rates) + " |")
        lines.append("|---|" + "---|" * len(rates))
        for loss in losses:
            cells = []
            for rate in rates:
                group = groups.get((loss, rate), [])
                vals = [getattr(r, attr) for r in group if not np.isnan(getattr(r, attr))]
                cells.append(_ms(vals) if vals else "–")
            lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_map_vs_noise(results: Sequence[RunResult], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(results)
    losses = list(dict.fromkeys(r.loss for r in results))
    rates = sorted({r.noise_rate for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, attr, title in [(axes[0], "final_mAP", "final epoch"), (axes[1], "best_mAP", "best epoch")]:
        for loss in losses:
            means = [np.mean([getattr(r, attr) for r in groups[(loss, q)]]) * 100 for q in rates]
            stds = [np.std([getattr(r, attr) for r in groups[(loss, q)]]) * 100 for q in rates]
            ax.errorbar(
                rates,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                label=loss.upper(),
                linewidth=2.2 if loss == "imae" else 1.4,
            )
        ax.set(xlabel="training label noise rate", title=f"test mAP, {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP (%)")
    axes[0].legend()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_curves(histories: dict[str, list[dict[str, float]]], out: Path, title: str) -> Path:
    """Train accuracy (given labels) and test mAP per epoch, one line per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tr, ax_te) = plt.subplots(1, 2, figsize=(11, 4.2))
    for loss, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        ax_tr.plot(epochs, [h["train_acc"] * 100 for h in hist], label=loss.upper())
        ax_te.plot(epochs, [h["val_mAP"] * 100 for h in hist], label=loss.upper())
    ax_tr.set(xlabel="epoch", ylabel="train accuracy vs given labels (%)", title="train (noisy labels)")
    ax_te.set(xlabel="epoch", ylabel="mAP (%)", title="test (clean query/gallery)")
    for ax in (ax_tr, ax_te):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def plot_weight_histograms(weights: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> Path:
    """Per loss: histogram of final sample weights for clean vs mislabelled training samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(weights)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (loss, (w, flipped)) in zip(axes[0], weights.items(), strict=True):
        w_norm = w / max(float(w.max()), 1e-12)
        bins = np.linspace(0, 1, 31)
        ax.hist(w_norm[~flipped], bins=bins, alpha=0.6, density=True, label=f"clean ({(~flipped).sum()})")
        ax.hist(w_norm[flipped], bins=bins, alpha=0.6, density=True, label=f"mislabelled ({flipped.sum()})")
        ax.set(title=loss.upper(), xlabel="sample weight / max")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("density")
    fig.suptitle(title)
    path = save_figure(fig, out)
    plt.close(fig)
    return path

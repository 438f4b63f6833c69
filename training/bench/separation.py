"""Does the clean majority pull ahead? Mean ``p_y`` of clean and of noisy training samples, epoch by epoch.

IMAE's weight ``exp(T p_y (1 - p_y))`` (like GCE's ``p_y^q``) can only favour the clean samples if the model is
more confident on them than on the noisy ones at some point of training: a re-weighting by ``p_y`` needs ``p_y`` to
separate them. So for every noisy setting the benchmark records, per epoch, the mean ``p_y`` (given label, training
mode, as the loss saw it) of the correctly labelled and of the mislabelled clips (label noise), or of the clean
and the outlier frames (frame noise, ``--loss-level frame``), and reports the largest gap. Where the clean samples
never pull ahead (gap at most ``PULL_AHEAD``) no choice of T can help, and the report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.plots import save_figure

PULL_AHEAD = 0.05  # a gap of mean p_y (clean minus noisy) this large counts as the clean samples pulling ahead


def p_y_columns(kind: str, hist: list[dict]) -> tuple[str, str]:
    """The metrics.csv columns of clean and noisy p_y for a noise type: per frame for outlier frames (when the run
    was frame-level), per clip otherwise."""
    if kind == "frames" and hist and not np.isnan(float(hist[0].get("p_y_outlier_frames", float("nan")))):
        return "p_y_clean_frames", "p_y_outlier_frames"
    return "p_y_clean", "p_y_noisy"


def gaps(kind: str, hist: list[dict]) -> np.ndarray:
    """Mean p_y of clean minus noisy samples, per epoch (NaN where the history lacks the columns)."""
    clean, noisy = p_y_columns(kind, hist)
    return np.array([float(h.get(clean, np.nan)) - float(h.get(noisy, np.nan)) for h in hist])


def separation_lines(curves: dict[tuple[str, int], dict[str, list[dict]]], kinds: dict[str, str]) -> list[str]:
    """A table (rows: losses, columns: noisy settings) of the largest clean-minus-noisy p_y gap over the epochs, mean
    over seeds, with the epoch where seed 0 reached it and the final gap; then one line per setting."""
    settings = [name for name in kinds if kinds[name] != "clean"]
    losses = list(dict.fromkeys(loss for hists in curves.values() for loss in hists))
    if not settings or not losses:
        return []
    lines = [
        "\n**Does the clean majority pull ahead?** Largest gap over the epochs of mean p_y, clean minus noisy "
        "training samples (frames for outlier frames), mean over seeds, in points; (epoch of seed 0's largest "
        "gap; final gap)\n",
        "| loss | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    verdicts = []
    for loss in losses:
        cells = []
        for name in settings:
            runs = {seed: h[loss] for (n, seed), h in curves.items() if n == name and loss in h}
            per_seed = [gaps(kinds[name], h) for h in runs.values()]
            per_seed = [g for g in per_seed if g.size and not np.isnan(g).all()]
            if not per_seed:
                cells.append("–")
                continue
            best = float(np.mean([np.nanmax(g) for g in per_seed]))
            g0 = gaps(kinds[name], runs[min(runs)])
            final = 100 * float(np.mean([g[-1] for g in per_seed]))
            cells.append(f"{100 * best:+.1f} (epoch {int(np.nanargmax(g0)) + 1}; {final:+.1f})")
            if loss == "cce":
                verdicts.append((name, best))
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    for name, best in verdicts:
        if best <= PULL_AHEAD:
            lines.append(
                f"\n- {name}: under CCE the clean samples never pull ahead (largest gap {100 * best:+.1f} points): "
                "a weight that is a function of p_y cannot tell them apart here, so no T can help."
            )
        else:
            lines.append(
                f"\n- {name}: under CCE the clean samples pull ahead by up to {100 * best:.1f} points of p_y: a "
                "p_y-based weight has something to work with."
            )
    return lines


def plot_p_y(histories: dict[str, list[dict]], kind: str, out: Path, title: str) -> Path:
    """Mean p_y of clean (solid) and noisy (dashed) training samples per epoch, one colour per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (loss, hist) in enumerate(histories.items()):
        clean, noisy = p_y_columns(kind, hist)
        epochs = [h["epoch"] for h in hist]
        colour = f"C{i}"
        ax.plot(epochs, [100 * float(h.get(clean, np.nan)) for h in hist], color=colour, label=f"{loss.upper()} clean")
        ax.plot(
            epochs, [100 * float(h.get(noisy, np.nan)) for h in hist], "--", color=colour, label=f"{loss.upper()} noisy"
        )
    what = "frames" if kind == "frames" else "clips"
    ax.set(xlabel="epoch", ylabel=f"mean p_y of the given label (%), training {what}", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = save_figure(fig, out)
    plt.close(fig)
    return path

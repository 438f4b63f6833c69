"""Reporting for the noise benchmark: results.csv, results.md (mean ± std, paired per-seed comparison) and figures."""

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
    """One (loss, noise setting, seed) cell of the grid; mAP/CMC on the clean query/gallery split."""

    loss: str
    noise_type: str  # clean | symmetric | pairflip | identity | frames (outlier frames, right labels)
    noise_rate: float
    seed: int
    final_mAP: float
    best_mAP: float
    best_epoch: int  # the epoch of best_mAP (1-based)
    epochs: int  # the final epoch
    final_cmc1: float
    best_cmc1: float
    train_acc_clean: float  # accuracy against the given labels on correctly labelled training samples
    train_acc_noisy: float  # ... and on the mislabelled ones (outlier frames for frames): the share memorised
    seconds: float  # wall time of the cell's training
    cpu_seconds: float  # CPU time of the cell's training, all threads (comparable on a busy machine)
    loss_level: str = "clip"  # clip | frame (vidret train --loss-level)

    @property
    def setting(self) -> str:
        return "clean" if self.noise_type == "clean" else f"{self.noise_type} {self.noise_rate:g}"


RESULT_COLUMNS = [f.name for f in fields(RunResult)]
_INT_COLUMNS = ("seed", "best_epoch", "epochs")
_STR_COLUMNS = ("loss", "loss_level", "noise_type")


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
                **{
                    k: (
                        row[k]
                        if k in ("loss", "loss_level", "noise_type")
                        else int(row[k])
                        if k in _INT_COLUMNS
                        else float(row[k])
                    )
                    for k in RESULT_COLUMNS
                }
            )
            for row in csv.DictReader(fh)
        ]


def _order(results: Sequence[RunResult]) -> tuple[list[str], list[str]]:
    """Losses in first-seen order; settings clean first, then by type (symmetric, pairflip, identity) and rate."""
    kinds = {"clean": 0, "symmetric": 1, "pairflip": 2, "identity": 3, "frames": 4}
    losses = list(dict.fromkeys(r.loss for r in results))
    pairs = sorted({(r.noise_type, r.noise_rate) for r in results}, key=lambda p: (kinds.get(p[0], 9), p[1]))
    return losses, ["clean" if k == "clean" else f"{k} {q:g}" for k, q in pairs]


def _group(results: Sequence[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        groups[(r.loss, r.setting)].append(r)
    return groups


def _std(values) -> float:
    """The sample standard deviation over seeds (0 for one seed): the ± of every table and error bar."""
    a = np.asarray(values, dtype=float)
    return float(a.std(ddof=1)) if a.size > 1 else 0.0


def _ms(values: list[float], scale: float = 100.0) -> str:
    a = np.asarray(values, dtype=float) * scale
    return f"{a.mean():.1f} ± {_std(a):.1f}"


def _table(results: Sequence[RunResult], attr: str, scale: float = 100.0) -> list[str]:
    groups = _group(results)
    losses, settings = _order(results)
    seeds = len({r.seed for r in results})
    lines = ["| loss | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for loss in losses:
        cells = []
        for s in settings:
            group = groups.get((loss, s), [])
            vals = [getattr(r, attr) for r in group if not np.isnan(getattr(r, attr))]
            fewer = f" ({len(group)} seed{'s' if len(group) > 1 else ''})" if 0 < len(group) < seeds else ""
            cells.append(_ms(vals, scale) + fewer if vals else "–")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


def paired_comparison(results: Sequence[RunResult], ref: str = "imae") -> list[str]:
    """Per setting and loss: ``ref`` minus that loss in final mAP (points), seed by seed, as mean ± std, the number
    of seeds ``ref`` is ahead, and whether the two seed ranges overlap."""
    groups = _group(results)
    losses, settings = _order(results)
    others = [loss for loss in losses if loss != ref]
    if ref not in losses or not others:
        return []
    lines = ["| vs | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for loss in others:
        cells = []
        for s in settings:
            a = {r.seed: r.final_mAP for r in groups.get((ref, s), [])}
            b = {r.seed: r.final_mAP for r in groups.get((loss, s), [])}
            seeds = sorted(a.keys() & b.keys())
            if not seeds:
                cells.append("–")
                continue
            d = np.array([a[k] - b[k] for k in seeds]) * 100
            wins = int((d > 0).sum())
            lo_a, hi_a, lo_b, hi_b = (f(d_[k] for k in seeds) for d_ in (a, b) for f in (min, max))
            apart = len(seeds) > 1 and (lo_a > hi_b or hi_a < lo_b)
            cells.append(f"{d.mean():+.1f} ± {_std(d):.1f} ({wins}/{len(seeds)}{', apart' if apart else ''})")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


REGIME = 80  # % of the noise CCE must fit by the final epoch (wrong labels, or outlier frames)


def verdict(results: Sequence[RunResult], ref: str = "imae", base: str = "cce") -> list[str]:
    """The benchmark's questions, answered from the cells at hand (docs/noise-benchmark.md, "Reading the results"):
    is it the memorising regime (``base`` fits >= REGIME % of the wrong labels at 40% symmetric noise, or of the
    outlier frames at frames 0.4), is ``ref`` ahead of
    ``base`` by 10 points there with the seed ranges apart, and is ``ref`` ahead of every loss (mean final mAP) at
    40-60% symmetric and at pair-flip noise. A question without the cells to answer it says so."""
    groups = _group(results)

    def finals(loss: str, setting: str) -> list[float]:
        return [100 * r.final_mAP for r in groups.get((loss, setting), [])]

    lines = []
    for setting, what in (("symmetric 0.4", "wrong labels"), ("frames 0.4", "outlier frames")):
        memo = [100 * r.train_acc_noisy for r in groups.get((base, setting), [])]
        if memo:
            m = float(np.mean(memo))
            lines.append(
                f"- Regime: {base} fits {m:.1f}% of the {what} at {setting} (mean of {len(memo)} seeds): "
                f"{'at or above' if m >= REGIME else 'NOT above'} the {REGIME}% of the memorising regime."
            )
        elif setting == "symmetric 0.4" or any(st == setting for _, st in groups):
            lines.append(f"- Regime: no {base} cell at {setting} to measure memorisation.")
    a, b = finals(ref, "symmetric 0.4"), finals(base, "symmetric 0.4")
    if len(a) >= 2 and len(b) >= 2:
        gap, apart = float(np.mean(a) - np.mean(b)), min(a) > max(b)
        met = gap >= 10 and apart
        lines.append(
            f"- {ref} >= {base} + 10 at symmetric 0.4, seed ranges apart: {'met' if met else 'NOT met'} "
            f"({ref} {np.mean(a):.1f} [{min(a):.1f}, {max(a):.1f}] vs {base} {np.mean(b):.1f} "
            f"[{min(b):.1f}, {max(b):.1f}]: {gap:+.1f} points)."
        )
    else:
        lines.append(f"- {ref} >= {base} + 10 at symmetric 0.4: not answerable (needs 2 seeds or more of each).")
    settings = [
        s
        for s in _order(results)[1]
        if s in ("symmetric 0.4", "symmetric 0.6") or s.startswith("pairflip") or s.startswith("frames")
    ]
    for s in settings:
        means = {loss: float(np.mean(v)) for (loss, st), rs in groups.items() if st == s and (v := finals(loss, s))}
        if ref not in means or len(means) < 2:
            continue
        ahead = [loss for loss, v in means.items() if loss != ref and v > means[ref]]
        seeds = min(len(groups[(loss, s)]) for loss in means)
        lines.append(
            f"- {ref} >= every loss at {s} (at least {seeds} seed{'s' if seeds > 1 else ''} each): "
            + ("met" if not ahead else "NOT met: " + ", ".join(f"{x} {means[x]:.1f}" for x in ahead))
            + f" ({ref} {means[ref]:.1f})."
        )
    return lines


def results_markdown(results: Sequence[RunResult], header: str = "") -> str:
    """Tables (rows = loss, columns = noise setting, cells = mean ± std over seeds) and the paired comparison."""
    seeds = len({r.seed for r in results})
    over = f"mean ± std over {seeds} seed{'s' if seeds > 1 else ''}"
    lines = [header] if header else []
    lines += ["\n**Verdict** (final-epoch test mAP, %)\n", *verdict(results)]
    for title, attr, scale in [
        ("final-epoch mAP", "final_mAP", 100.0),
        ("best-epoch mAP", "best_mAP", 100.0),
        ("epoch of the best mAP", "best_epoch", 1.0),
        ("final-epoch CMC-1", "final_cmc1", 100.0),
        (
            "memorisation: share of wrong training labels the final model predicts (lower = less memorised)",
            "train_acc_noisy",
            100.0,
        ),
        ("train accuracy on correctly labelled samples", "train_acc_clean", 100.0),
        ("training time of a cell, wall (s)", "seconds", 1.0),
        ("training time of a cell, CPU of all threads (s)", "cpu_seconds", 1.0),
    ]:
        unit = "" if scale == 1.0 else "%, "
        lines += [f"\n**{title}** ({unit}{over})\n", *_table(results, attr, scale)]
    paired = paired_comparison(results)
    if paired:
        lines += [
            "\n**IMAE minus each loss, final-epoch mAP, paired by seed** (points: mean ± std of the per-seed "
            "differences; in brackets the seeds where IMAE is ahead, and `apart` where the two losses' seed "
            "ranges do not overlap)\n",
            *paired,
        ]
    return "\n".join(lines) + "\n"


def _kinds(results: Sequence[RunResult]) -> list[str]:
    found = {r.noise_type for r in results} - {"clean"}
    return [k for k in ("symmetric", "pairflip", "identity", "frames") if k in found] or ["symmetric"]


def plot_map_vs_noise(results: Sequence[RunResult], out: Path) -> Path:
    """One panel per noise type (clean at rate 0 in each), final-epoch mAP on top and best-epoch below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(results)
    losses, _ = _order(results)
    kinds = _kinds(results)
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.6 * len(kinds), 7.6), sharey=True, squeeze=False)
    for col, kind in enumerate(kinds):
        rates = sorted({r.noise_rate for r in results if r.noise_type in (kind, "clean")})
        for row, (attr, title) in enumerate([("final_mAP", "final epoch"), ("best_mAP", "best epoch")]):
            ax = axes[row][col]
            for loss in losses:
                pts = [(q, [getattr(r, attr) * 100 for r in groups.get((loss, _name(kind, q)), [])]) for q in rates]
                pts = [(q, v) for q, v in pts if v]
                if pts:
                    ax.errorbar(
                        [q for q, _ in pts],
                        [np.mean(v) for _, v in pts],
                        yerr=[_std(v) for _, v in pts],
                        marker="o",
                        capsize=3,
                        label=loss.upper(),
                        linewidth=2.2 if loss == "imae" else 1.2,
                    )
            ax.set(xlabel=f"{kind} noise rate" if row else "", title=f"test mAP, {title}")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7)
    for row in range(2):
        axes[row][0].set_ylabel("mAP (%)")
    path = save_figure(fig, out)
    plt.close(fig)
    return path


def _name(kind: str, rate: float) -> str:
    return "clean" if rate == 0 else f"{kind} {rate:g}"


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
        ax.legend(fontsize=7)
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


def write_reports(
    out: Path,
    results: Sequence[RunResult],
    curves: dict[tuple[str, int], dict[str, list[dict]]],
    weights: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    header: str,
) -> None:
    """results.csv, results.md and plots/ (curves and weight histograms of seed 0 of every setting)."""
    from training.bench.clean import clean_gain_lines
    from training.bench.separation import plot_p_y, separation_lines

    kinds = {("clean" if r.noise_type == "clean" else f"{r.noise_type}{r.noise_rate:g}"): r.noise_type for r in results}
    write_results_csv(out / "results.csv", results)
    separated = "\n".join(separation_lines(curves, kinds) + clean_gain_lines(results))
    atomic_write_text(out / "results.md", results_markdown(results, header) + separated + ("\n" if separated else ""))
    plots = out / "plots"
    plot_map_vs_noise(results, plots / "map_vs_noise.png")
    for (name, seed), hists in curves.items():
        if seed == 0:
            plot_curves(hists, plots / f"curves_{name}.png", f"{name}, seed {seed}")
            if kinds.get(name, "clean") != "clean":
                plot_p_y(hists, kinds[name], plots / f"p_y_{name}.png", f"mean p_y, clean vs noisy: {name}, seed 0")
    for name, ws in weights.items():
        if name != "clean":
            plot_weight_histograms(ws, plots / f"weights_{name}.png", f"final sample weights, {name}")

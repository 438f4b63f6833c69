"""Clean, then retrain (``vidret bench noise --clean-rounds 1``): the product's own loop, measured.

For a finished cell: ``vidret audit`` (training/audit.py) ranks the cell's training clips by its final model's
``1 - p(label)``, the stated rule drops every clip whose given label is not the model's top-1 prediction
(``CLEAN_RULE``), and the same fine-tuning runs again from the pretrained checkpoint on the clips kept. The retrained
cell is reported as the loss ``<loss>+clean``, paired by seed with the loss alone. Outlier frames are not labels:
the rule drops whole clips, so under frame noise it measures what dropping clips does there.
"""

from __future__ import annotations

from pathlib import Path

from training.cleaning import CLEAN_RULE, drop_suspects
from training.data.manifest import VideoRow

__all__ = ["CLEAN_RULE", "SUFFIX", "audit_and_drop", "clean_gain_lines"]
SUFFIX = "+clean"


def audit_and_drop(run: Path, train_csv: Path, rows: list[VideoRow], batch_size: int) -> tuple[Path, dict]:
    """Audit a finished run on its training manifest (``run/audit.csv``), write the kept rows next to it
    (``run/cleaned.csv``): ``vidret train --clean-rounds``'s own step (training/cleaning.py). The manifest and
    what the rule dropped (clips, of which mislabelled, of which known); ``rows`` are the manifest's rows."""
    path, _, stats = drop_suspects(run / "checkpoints" / "last.pt", train_csv, run, batch_size, workers=0)
    return path, stats


def clean_gain_lines(results) -> list[str]:
    """``<loss>+clean`` minus ``<loss>``, final-epoch mAP, paired by seed, per setting (points: mean ± std of the
    per-seed differences; the seeds where cleaning helped)."""
    import numpy as np

    by = {(r.loss, r.setting, r.seed): r.final_mAP for r in results}
    pairs = sorted({(loss[: -len(SUFFIX)], s) for loss, s, _ in by if loss.endswith(SUFFIX)})
    if not pairs:
        return []
    settings = list(dict.fromkeys(s for _, s in pairs))
    lines = [
        f"\n**Clean, then retrain: mAP added over the loss alone** (final epoch, points, paired by seed; rule: "
        f"{CLEAN_RULE})\n",
        "| loss | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for loss in dict.fromkeys(loss for loss, _ in pairs):
        cells = []
        for s in settings:
            d = [by[(loss + SUFFIX, s, k)] - v for (l2, s2, k), v in by.items() if l2 == loss and s2 == s
                 and (loss + SUFFIX, s, k) in by]  # fmt: skip
            if not d:
                cells.append("–")
                continue
            a = 100 * np.array(d)
            sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
            cells.append(f"{a.mean():+.1f} ± {sd:.1f} ({int((a > 0).sum())}/{a.size})")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines

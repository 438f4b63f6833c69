"""Label audit: rank training videos by how likely their label is wrong.

For every row the checkpoint's classifier gives p(label) for the given label, the predicted label and its
probability. ``suspicion = 1 - p(label)``: low confidence in the given label. A model trained with a robust loss
(IMAE) fits mislabelled samples least (their sample weight is small), so they stand out. When ``clean_label`` is
known (benchmarks), the AUROC and precision@k of finding the mislabelled rows are reported.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexing.atomic import atomic_write_text
from indexing.errors import UserError


@dataclass
class AuditResult:
    rows: list[dict]  # sorted by suspicion, most suspect first
    auroc: float | None
    precision_at: dict[int, float]
    num_mislabelled: int | None


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def predict(
    checkpoint: str | Path,
    manifest: str | Path,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    cache: bool = False,
) -> tuple[list, np.ndarray, np.ndarray, list[str]]:
    """Rows that decoded, their class probabilities, the given labels' class indices, the class names.

    ``cache`` keeps decoded videos in memory (inside ``shared_frame_cache()``, shared with other datasets)."""
    from training.data.manifest import read_manifest
    from training.embed import eval_loader, load_checkpoint, run_inference

    loaded = load_checkpoint(checkpoint, device)
    rows = read_manifest(manifest, require_label=True)
    cmap = {c: i for i, c in enumerate(loaded.class_names)}
    for r in rows:
        if r.label not in cmap:
            raise UserError(
                f"{manifest}, row {r.row}: label {r.label!r} is not a class of the checkpoint "
                f"(audit the manifest the model was trained on)"
            )
    loader = eval_loader(
        rows,
        loaded.spec,
        batch_size,
        workers,
        loaded.mean,
        loaded.std,
        class_to_idx=cmap,
        on_bad_video="skip",
        cache=cache,
    )
    _, logits, kept, _ = run_inference(loaded.model, loader, loaded.device, with_logits=True, progress="auditing")
    kept_rows = [rows[i] for i in kept]
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return kept_rows, probs, np.array([cmap[r.label] for r in kept_rows]), loaded.class_names


def audit(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    ks: tuple[int, ...] = (10, 50, 100),
) -> AuditResult:
    rows, probs, given, classes = predict(checkpoint, manifest, batch_size, workers, device)
    p_label = probs[np.arange(len(rows)), given]
    pred = probs.argmax(1)
    suspicion = 1.0 - p_label
    order = np.argsort(-suspicion, kind="stable")
    records = [
        {
            "id": rows[i].id,
            "label": rows[i].label,
            "p_label": float(p_label[i]),
            "predicted": classes[pred[i]],
            "p_predicted": float(probs[i, pred[i]]),
            "suspicion": float(suspicion[i]),
        }
        for i in order
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["id"], lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in rec.items()})
    atomic_write_text(out, buf.getvalue())
    if not rows or any(r.clean_label is None for r in rows):
        return AuditResult(records, None, {}, None)
    wrong = np.array([r.clean_label != r.label for r in rows])
    ranked_wrong = wrong[order]
    n_wrong = int(wrong.sum())
    ks_all = sorted({k for k in (*ks, n_wrong) if 0 < k <= len(rows)})
    prec = {k: float(ranked_wrong[:k].mean()) for k in ks_all}
    return AuditResult(records, auroc(suspicion, wrong), prec, n_wrong)

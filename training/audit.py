"""Label audit: rank training videos by how likely their label is wrong.

For every row the checkpoint's classifier gives p(label) for the given label, the predicted label and its
probability. ``suspicion = 1 - p(label)``: low confidence in the given label. A model trained with a robust loss
(IMAE) fits mislabelled samples least (their sample weight is small), so they stand out. When ``clean_label`` is
known (benchmarks), the AUROC and precision@k of finding the mislabelled rows are reported.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
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


AUDIT_COLUMNS = ("id", "label", "p_label", "predicted", "p_predicted", "suspicion")  # the audit CSV, in order


@dataclass(frozen=True)
class AuditRow:
    """One audited video: its given label and p(label), the predicted label and its probability, the suspicion."""

    id: str
    label: str
    p_label: float
    predicted: str
    p_predicted: float
    suspicion: float


def classify(
    loaded, rows: list, batch_size: int, workers: int, cache: bool = False, progress: str | None = None
) -> tuple[list, np.ndarray]:
    """The rows that decoded and their class probabilities under ``loaded`` (a ``training.embed`` checkpoint),
    with its eval transform; each row's label must be one of its classes."""
    from training.embed import eval_loader, run_inference

    cmap = {c: i for i, c in enumerate(loaded.class_names)}
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
    _, logits, kept, _ = run_inference(loaded.model, loader, loaded.device, with_logits=True, progress=progress)
    z = logits - logits.max(1, keepdims=True)
    return [rows[i] for i in kept], np.exp(z) / np.exp(z).sum(1, keepdims=True)


def rank(rows: list, probs: np.ndarray, classes: list[str]) -> tuple[list[AuditRow], np.ndarray, np.ndarray]:
    """The audit ranking: ``suspicion = 1 - p(given label)``, most suspect first (ties keep the rows' order).
    Returns the ranked rows, the order (indices into ``rows``) and every row's suspicion in ``rows``' order."""
    cmap = {c: i for i, c in enumerate(classes)}
    given = np.array([cmap[r.label] for r in rows], dtype=np.int64)
    p_label = probs[np.arange(len(rows)), given] if len(rows) else np.zeros(0)
    pred = probs.argmax(1) if len(rows) else np.zeros(0, dtype=np.int64)
    suspicion = 1.0 - p_label
    order = np.argsort(-suspicion, kind="stable")
    ranked = [
        AuditRow(
            rows[i].id,
            rows[i].label,
            float(p_label[i]),
            classes[pred[i]],
            float(probs[i, pred[i]]),
            float(suspicion[i]),
        )
        for i in order
    ]
    return ranked, order, suspicion


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
    from training.embed import load_checkpoint

    loaded = load_checkpoint(checkpoint, device)
    rows = read_manifest(manifest, require_label=True)
    cmap = {c: i for i, c in enumerate(loaded.class_names)}
    for r in rows:
        if r.label not in cmap:
            raise UserError(
                f"{manifest}, row {r.row}: label {r.label!r} is not a class of the checkpoint "
                f"(audit the manifest the model was trained on)"
            )
    kept_rows, probs = classify(loaded, rows, batch_size, workers, cache=cache, progress="auditing")
    return kept_rows, probs, np.array([cmap[r.label] for r in kept_rows]), loaded.class_names


def audit_csv(rows: list[AuditRow]) -> str:
    """The audit CSV of ranked rows (``AUDIT_COLUMNS``; probabilities with 6 decimals)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(AUDIT_COLUMNS if rows else ["id"])
    for r in rows:
        w.writerow([r.id, r.label, f"{r.p_label:.6f}", r.predicted, f"{r.p_predicted:.6f}", f"{r.suspicion:.6f}"])
    return buf.getvalue()


def audit(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    ks: tuple[int, ...] = (10, 50, 100),
) -> AuditResult:
    rows, probs, _, classes = predict(checkpoint, manifest, batch_size, workers, device)
    ranked, order, suspicion = rank(rows, probs, classes)
    atomic_write_text(out, audit_csv(ranked))
    records = [asdict(r) for r in ranked]
    if not rows or any(r.clean_label is None for r in rows):
        return AuditResult(records, None, {}, None)
    wrong = np.array([r.clean_label != r.label for r in rows])
    ranked_wrong = wrong[order]
    n_wrong = int(wrong.sum())
    ks_all = sorted({k for k in (*ks, n_wrong) if 0 < k <= len(rows)})
    prec = {k: float(ranked_wrong[:k].mean()) for k in ks_all}
    return AuditResult(records, auroc(suspicion, wrong), prec, n_wrong)

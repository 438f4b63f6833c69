"""Clean, then retrain (``vidret train --clean-rounds N``): the audit loop as one command (docs/training.md).

After a run, ``vidret audit`` of its final model over its training manifest ranks the clips; the stated rule
(``CLEAN_RULE``) drops every clip whose given label is not the model's top-1 prediction; the same training runs again
on the clips kept, from the same ``--weights``, into ``<out>/clean1/`` (then ``clean2/`` ...). Each round's folder
holds its audit (``audit.csv``), the manifest it trained on (``cleaned.csv``) and its run; ``<out>/clean_report.json``
and ``clean_report.md`` say what each round dropped and the validation mAP before and after. The noise benchmark
measures one round with the same rule (training/bench/clean.py, docs/noise-benchmark.md).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.data.manifest import VideoRow, read_manifest, write_manifest

CLEAN_RULE = "drop every training clip whose given label is not the final model's top-1 prediction (vidret audit)"


def drop_suspects(
    checkpoint: Path, train_csv: Path, folder: Path, batch_size: int, workers: int, device: str = "auto"
) -> tuple[Path, list[VideoRow], dict]:
    """Audit ``checkpoint`` over ``train_csv`` into ``folder/audit.csv`` and write the rows ``CLEAN_RULE`` keeps to
    ``folder/cleaned.csv``: (that manifest, the kept rows, what was dropped). When the rule would leave fewer than two
    labels, nothing is dropped (training needs two classes)."""
    import csv

    from training.audit import audit

    folder.mkdir(parents=True, exist_ok=True)
    audit(checkpoint, train_csv, folder / "audit.csv", batch_size=batch_size, workers=workers, device=device)
    with open(folder / "audit.csv", newline="", encoding="utf-8") as fh:
        drop = {r["id"] for r in csv.DictReader(fh) if r["predicted"] != r["label"]}
    rows = read_manifest(train_csv, require_label=True)
    kept = [r for r in rows if r.id not in drop]
    if len({r.label for r in kept}) < 2:
        kept, drop = rows, set()
    wrong = {r.id for r in rows if r.clean_label is not None and r.clean_label != r.label}
    stats = {"clips": len(rows), "dropped": len(drop), "kept": len(kept)}
    if any(r.clean_label is not None for r in rows):  # benchmarks: how many of the dropped were mislabelled
        stats.update(mislabelled=len(wrong), dropped_mislabelled=len(drop & wrong))
    return write_manifest(folder / "cleaned.csv", kept), kept, stats


def fit_clean_rounds(cfg):
    """``fit(cfg)``, then ``cfg.clean_rounds`` rounds of audit, drop and retrain (each from ``cfg.weights``, as the
    first run); the last round's ``FitResult`` and the report's path."""
    import os

    from training.trainer import fit

    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--clean-rounds runs in one process; under torchrun train, vidret audit, then train again")
    if cfg.stop_after_epoch is not None:
        raise UserError("--clean-rounds needs whole runs: leave out --stop-after-epoch")
    res = fit(cfg)
    rounds = [_round_record(0, cfg.train, res, None)]
    train, last = cfg.train, res
    for k in range(1, cfg.clean_rounds + 1):
        folder = Path(cfg.out) / f"clean{k}"
        if (folder / "checkpoints" / "last.pt").exists() and not cfg.resume:
            raise UserError(f"{folder} already holds a run; pass --resume to continue it or choose another --out")
        cleaned, _, stats = drop_suspects(last.last_checkpoint, Path(train), folder, cfg.batch_size, cfg.workers)
        if not cfg.quiet:
            print(f"clean round {k}: dropped {stats['dropped']} of {stats['clips']} clips; retraining in {folder}")
        train = str(cleaned)
        last = fit(replace(cfg, train=train, out=str(folder), clean_rounds=0))
        rounds.append(_round_record(k, train, last, stats))
    report = _write_report(Path(cfg.out), rounds)
    return last, report


def _round_record(k: int, train: str, res, stats: dict | None) -> dict:
    last = res.history[-1] if res.history else {}
    score = lambda key: None if last.get(key) is None or last[key] != last[key] else float(last[key])  # noqa: E731
    return {
        "round": k,
        "run": str(res.run_dir),
        "train": str(train),
        "val_mAP": score("val_mAP"),  # None without validation (the history's NaN)
        "val_cmc1": score("val_cmc1"),
        **(stats or {}),
    }


def _write_report(out: Path, rounds: list[dict]) -> Path:
    """``clean_report.json`` and a short ``clean_report.md`` in the first run's folder."""
    atomic_write_text(out / "clean_report.json", json.dumps({"rule": CLEAN_RULE, "rounds": rounds}, indent=2))
    lines = [
        "# Clean, then retrain\n",
        f"Rule: {CLEAN_RULE}; every round retrains from the same --weights on the clips kept.\n",
        "| round | run | clips dropped | clips kept | final validation mAP |",
        "|---|---|---|---|---|",
    ]
    for r in rounds:
        known = f" ({r['dropped_mislabelled']} mislabelled)" if "dropped_mislabelled" in r else ""
        dropped = "–" if r["round"] == 0 else f"{r['dropped']}{known}"
        kept = "–" if r["round"] == 0 else str(r["kept"])
        score = "–" if r["val_mAP"] is None else f"{100 * r['val_mAP']:.1f}%"
        lines.append(f"| {r['round']} | {r['run']} | {dropped} | {kept} | {score} |")
    return atomic_write_text(out / "clean_report.md", "\n".join(lines) + "\n")

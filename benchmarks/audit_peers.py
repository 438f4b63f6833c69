"""Label audit: `vidret audit` vs cleanlab's ``find_label_issues`` at finding the wrong labels of the noise
benchmark's training set, side by side in one run.

The data is the noise grid's (``vidret bench noise``, training/bench/grid.py): the synthetic training identities,
their labels corrupted with the grid's noise at --noise (symmetric 0.4 by default, the grid's seed-0 labels). One
model is trained on them as the grid trains (tiny3d, IMAE with T = 2, the T the grid chose; 20 epochs); `vidret
audit` ranks the rows by 1 - p(given label) from that model. cleanlab gets:

- the same model's probabilities (in-sample: what `vidret audit` uses), and
- k-fold cross-validated probabilities (``--folds``, 4 by default; its documented input is out-of-sample
  probabilities): k more models of the same settings, each trained on the other folds (stratified by the given
  label) and predicting its held-out fold.

For each: the AUROC of its score at telling wrong labels (label != clean_label) from right ones, and precision@k
of its ranking. cleanlab's ranking is the rows ``find_label_issues`` flags (ranked by self-confidence), then the
rest by ``get_label_quality_scores``; its AUROC is of that ranking. Needs ``pip install -e '.[bench]'`` for cleanlab.

    python benchmarks/audit_peers.py            # 200 identities (100 train, 800 clips), 20 epochs, 4 folds
    python benchmarks/audit_peers.py --quick    # the grid's --quick data and model, 2 folds
    python benchmarks/audit_peers.py --json benchmarks/results/peers/audit.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from peers import add_peer_args, version_of, write_json

from training.audit import audit, auroc, predict
from training.bench.grid import NoiseBenchConfig, _noisy_rows, _synth, cell_config
from training.data.manifest import VideoRow, read_manifest, write_manifest


def audit_config(work: Path, quick: bool, identities: int | None, epochs: int | None) -> NoiseBenchConfig:
    """The audit's data and model: half the synthetic identities train (no pretraining group: the audit looks at
    a model trained on the noisy labels from scratch), the other half are never used; the sizes of the published
    figure (benchmarks/results/peers/audit_peers.json), or --quick's tiny ones."""
    n = identities or (16 if quick else 200)
    sizes = dict(cameras=2, clips_per_camera=2, video_frames=8, video_size=32, frames=4, size=24, batch_size=8)
    if not quick:
        sizes = dict(cameras=4, clips_per_camera=2, video_frames=16, video_size=64, frames=8, size=40, batch_size=32)
    return NoiseBenchConfig(
        out_dir=str(work),
        pretrain_identities=0,
        train_identities=n // 2,
        test_identities=n - n // 2,
        epochs=epochs or (2 if quick else 20),
        **sizes,
    )


def train(cfg: NoiseBenchConfig, t: float, train_csv: Path, run: Path, seed: int = 0) -> Path:
    """One model of the grid's settings (no validation split: nothing is chosen on one); its last checkpoint. A
    finished run of the same settings in ``run`` (a --work folder) is reused."""
    from training.trainer import fit

    tcfg = cell_config(cfg, "imae", t, train_csv, run, seed, device="cpu")
    done = run / "done.json"
    record = {"config": asdict(tcfg), "train_csv_sha": _digest(train_csv)}
    if done.exists() and json.loads(done.read_text()) == record:
        return run / "checkpoints" / "last.pt"
    if run.exists():
        shutil.rmtree(run)
    ckpt = Path(fit(tcfg).last_checkpoint)
    done.write_text(json.dumps(record))
    return ckpt


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def folds_of(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold of each row, stratified by the given label: each class's rows are shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)  # the next class starts where this one stopped: folds stay the same size
    return fold


def cross_val_probs(
    cfg: NoiseBenchConfig,
    t: float,
    rows: list[VideoRow],
    given: np.ndarray,
    classes: list[str],
    k: int,
    work: Path,
    log,
) -> np.ndarray:
    """Out-of-sample class probabilities of every row from k models, each trained without the row's fold."""
    fold = folds_of(given, k, seed=0)
    probs = np.zeros((len(rows), len(classes)))
    col = {c: i for i, c in enumerate(classes)}
    for f in range(k):
        t0 = time.perf_counter()
        fit_rows = [r for r, g in zip(rows, fold, strict=True) if g != f]
        held = np.flatnonzero(fold == f)
        fit_csv = write_manifest(work / f"fold{f}" / "train.csv", fit_rows)
        ckpt = train(cfg, t, fit_csv, work / f"fold{f}" / "run")
        known = sorted({r.label for r in fit_rows})
        # predict() checks each row's label against the model's classes; a class with every row in this fold (it
        # has too few rows) is not one of them, so such rows go in under a known label: only the probabilities are
        # used here, never the label
        held_rows = [rows[i] if rows[i].label in known else replace(rows[i], label=known[0]) for i in held]
        held_csv = write_manifest(work / f"fold{f}" / "held_out.csv", held_rows)
        kept, p, _, fold_classes = predict(
            ckpt, held_csv, batch_size=cfg.batch_size, workers=cfg.workers, device="cpu", cache=True
        )
        if len(kept) != len(held):
            raise RuntimeError(f"fold {f}: {len(held) - len(kept)} held-out videos did not decode")
        probs[np.ix_(held, [col[c] for c in fold_classes])] = p
        log(
            f"fold {f + 1}/{k}: trained on {len(fit_rows)} rows, predicted {len(held)} in "
            f"{time.perf_counter() - t0:.0f} s"
        )
    return probs


def precision_at(ranking: np.ndarray, wrong: np.ndarray, ks: list[int]) -> dict[int, float]:
    return {k: float(wrong[ranking[:k]].mean()) for k in ks if 0 < k <= len(ranking)}


def cleanlab_scores(given: np.ndarray, probs: np.ndarray, wrong: np.ndarray, ks: list[int]) -> dict:
    """cleanlab's flagged rows and ranking: the AUROC of the ranking, precision@k, precision and recall of the
    flagged set, and the AUROC of its label-quality score alone."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(given, probs)
    flagged = np.asarray(find_label_issues(given, probs, return_indices_ranked_by="self_confidence"), dtype=int)
    rest = np.setdiff1d(np.arange(len(given)), flagged)
    ranking = np.concatenate([flagged, rest[np.argsort(quality[rest], kind="stable")]])
    position = np.empty(len(given))
    position[ranking] = np.arange(len(given))
    n_flag = len(flagged)
    return {
        "auroc": auroc(-position, wrong),
        "auroc_quality_score": auroc(-quality, wrong),
        "precision_at": precision_at(ranking, wrong, ks),
        "flagged": n_flag,
        "flagged_precision": float(wrong[flagged].mean()) if n_flag else float("nan"),
        "flagged_recall": float(wrong[flagged].sum() / max(1, wrong.sum())),
    }


def ours_scores(given: np.ndarray, probs: np.ndarray, wrong: np.ndarray, ks: list[int]) -> dict:
    """`vidret audit`'s score, 1 - p(given label), on these probabilities."""
    suspicion = 1.0 - probs[np.arange(len(given)), given]
    ranking = np.argsort(-suspicion, kind="stable")
    return {"auroc": auroc(suspicion, wrong), "precision_at": precision_at(ranking, wrong, ks)}


def line(name: str, res: dict, ks: list[int]) -> str:
    extra = (
        f"; flags {res['flagged']} rows, {res['flagged_precision']:.3f} of them wrong, "
        f"{res['flagged_recall']:.3f} of the wrong ones"
        if "flagged" in res
        else ""
    )
    return (
        f"{name}: AUROC {res['auroc']:.4f}, precision@"
        + ", @".join(f"{k} {res['precision_at'][k]:.3f}" for k in ks if k in res["precision_at"])
        + extra
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--noise", type=float, default=0.4, help="Training label noise (the grid's rates: 0.2, 0.4, 0.6).")
    ap.add_argument("--imae-t", type=float, default=2.0, help="IMAE T (2: the one the noise grid chose).")
    ap.add_argument(
        "--folds",
        type=int,
        default=None,
        help="Cross-validation folds for cleanlab (default 4; --quick 2; 0: in-sample probabilities only).",
    )
    ap.add_argument("--identities", type=int, help="Synthetic identities, half of them training (default 200).")
    ap.add_argument("--epochs", type=int, help="Epochs of each model (default 20; --quick 2).")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's). On a machine shared with other "
        "work, 1 trains faster than 2 cores' worth of contended threads.",
    )
    ap.add_argument("--work", type=Path, help="Keep the data and runs in this folder (default: a temporary one).")
    add_peer_args(ap)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from training.data.dataset import shared_frame_cache

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        cfg = audit_config(work, args.quick, args.identities, args.epochs)
        k = args.folds if args.folds is not None else (2 if args.quick else 4)
        try:
            import cleanlab
        except ImportError:
            cleanlab = None
        if cleanlab is None and not args.no_peers:
            print("cleanlab: not installed (pip install -e '.[bench]'); its side is skipped")
        with_peer = cleanlab is not None and not args.no_peers
        with shared_frame_cache():
            _synth(cfg, work / "data")
            rows = read_manifest(work / "data" / "train.csv", require_label=True)
            noisy, realised = _noisy_rows(rows, args.noise, "symmetric", seed=int(round(args.noise * 100)))
            train_csv = write_manifest(work / "labels" / f"train_noise{args.noise:g}.csv", noisy)
            n_ids = len({r.clean_label for r in noisy})
            print(
                f"{len(noisy)} training clips of {n_ids} identities, symmetric noise {args.noise:g} "
                f"(realised {realised:.3f}); {cfg.model} {cfg.frames}x{cfg.size}, IMAE T={args.imae_t:g}, "
                f"{cfg.epochs} epochs"
            )
            t0 = time.perf_counter()
            ckpt = train(cfg, args.imae_t, train_csv, work / "runs" / "all")
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = audit(
                ckpt, train_csv, work / "audit.csv", batch_size=cfg.batch_size, workers=cfg.workers, device="cpu"
            )
            t_audit = time.perf_counter() - t0
            kept, probs, given, classes = predict(
                ckpt, train_csv, batch_size=cfg.batch_size, workers=cfg.workers, device="cpu", cache=True
            )
            wrong = np.array([r.clean_label != r.label for r in kept])
            ks = sorted({kk for kk in (10, 50, 100, int(wrong.sum())) if 0 < kk <= len(kept)})
            ours = {
                "auroc": res.auroc,
                "precision_at": {kk: v for kk, v in res.precision_at.items()},
                "train_seconds": t_train,
                "audit_seconds": t_audit,
            }
            print(
                f"{len(kept)} rows, {int(wrong.sum())} wrong; model trained in {t_train:.0f} s, audited in "
                f"{t_audit:.1f} s"
            )
            print(line("vidret audit (in-sample 1 - p(label))", ours, ks))
            figures: dict = {
                "rows": len(kept),
                "wrong": int(wrong.sum()),
                "noise": args.noise,
                "realised_noise": realised,
                "identities": n_ids,
                "model": cfg.model,
                "epochs": cfg.epochs,
                "imae_t": args.imae_t,
                "folds": k,
                "ours": ours,
            }
            if with_peer:
                figures["cleanlab_version"] = version_of("cleanlab")
                figures["cleanlab_in_sample"] = cleanlab_scores(given, probs, wrong, ks)
                print(
                    line(
                        f"cleanlab {version_of('cleanlab')} find_label_issues, in-sample probabilities (the same)",
                        figures["cleanlab_in_sample"],
                        ks,
                    )
                )
            if k >= 2:
                order = {r.id: i for i, r in enumerate(kept)}
                t0 = time.perf_counter()
                cv = cross_val_probs(cfg, args.imae_t, kept, given, classes, k, work / "cv", print)
                assert all(order[r.id] == i for i, r in enumerate(kept))
                figures["cv_seconds"] = time.perf_counter() - t0
                figures["ours_on_cv_probs"] = ours_scores(given, cv, wrong, ks)
                print(line(f"ours' score on the {k}-fold probabilities", figures["ours_on_cv_probs"], ks))
                if with_peer:
                    figures["cleanlab_cv"] = cleanlab_scores(given, cv, wrong, ks)
                    print(
                        line(
                            f"cleanlab find_label_issues, {k}-fold cross-validated probabilities",
                            figures["cleanlab_cv"],
                            ks,
                        )
                    )
            if with_peer:
                best = max(
                    (v for key, v in figures.items() if key.startswith("cleanlab_") and isinstance(v, dict)),
                    key=lambda v: v["auroc"],
                )
                figures["ratio_auroc_ours_over_best_cleanlab"] = ours["auroc"] / best["auroc"]
                print(
                    f"AUROC ours / cleanlab's best: {figures['ratio_auroc_ours_over_best_cleanlab']:.3f} (target >= 1)"
                )
    figures["wall_seconds"] = time.perf_counter() - t_start
    print(f"wall time {figures['wall_seconds']:.0f} s")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

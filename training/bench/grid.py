"""``vidret bench noise``: every loss x noise setting x seed, fine-tuned from a pretrained backbone
(docs/noise-benchmark.md).

1. One clean synthetic dataset with three disjoint groups of identities: a pretraining group, a fine-tuning
   (training) group and a test group (clean query/gallery; open-set retrieval).
2. Pretraining: the backbone is trained once with clean labels on the pretraining identities (the stand-in for
   ImageNet/Kinetics weights); its validation mAP is measured on a split of the pretraining identities.
3. Every later run fine-tunes from that checkpoint (``--weights``).
4. IMAE's T, unless given, is chosen on a validation split carved from the fine-tuning identities (never on
   query/gallery): IMAE is fine-tuned at ``select_rate`` symmetric noise with each candidate T, and the best final
   validation mAP wins.
5. For each noise setting (type, rate) and seed the training labels are corrupted once, the same for every loss.
   Identity-switch noise moves a label to the identity whose centroid is nearest in the pretrained embeddings.
   Each loss fine-tunes with the test query/gallery evaluated after every epoch (the curves; ``best`` is reported
   to show memorisation, never used to choose anything). The final model then runs over the training set:
   accuracy against the given labels on clean and on mislabelled samples (memorisation), final sample weights.
6. results.csv, results.md (mean ± std and the paired per-seed comparison), plots/.

Runs already finished with the same settings (a ``done.json`` in their folder records them) are reused, so an
interrupted benchmark continues, and a grid can be run in pieces; ``report_only`` (``--report-only``) trains
nothing and reports the finished cells. Cells (and T candidates) train ``jobs`` at a time, each in a spawned
process with its share of the CPU threads (``run_tasks``); a cell is the same run whichever process trains it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.bench.clean import CLEAN_RULE, audit_and_drop
from training.bench.clean import SUFFIX as CLEAN_SUFFIX
from training.bench.config import (  # noqa: F401 (re-exported: the grid's public names)
    BENCH_NOISE_TYPES,
    DEFAULT_LOSSES,
    DEFAULT_NOISE,
    HEADLINE_LOSSES,
    HEADLINE_NOISE,
    NoiseBenchConfig,
    flag,
    parse_noise,
    setting_name,
)
from training.bench.frames import FRAME_NOISE, frame_memorisation, frame_noise_rows
from training.bench.jobs import auto_jobs, resolve_jobs, run_tasks, watch_parent  # noqa: F401 (re-exported)
from training.bench.report import RunResult, write_reports
from training.config import TrainConfig
from training.data.manifest import VideoRow, class_map, read_manifest, write_manifest
from training.data.noise import inject_noise


@dataclass
class Prepared:
    """Where the benchmark's shared inputs are: manifests, the pretrained checkpoint, its cost and score."""

    data: Path
    pretrain_ckpt: Path
    finetune_csv: Path
    pretrain_seconds: float
    pretrain_cpu_seconds: float
    pretrain_val_map: float
    pretrain_test_map: float = float("nan")  # the pretrained checkpoint alone on the test query/gallery


def synth_config(cfg: NoiseBenchConfig):
    """The ``SynthConfig`` of the benchmark's clean dataset."""
    from training.data.synth import SynthConfig

    total = cfg.pretrain_identities + cfg.train_identities + cfg.test_identities
    return SynthConfig(
        identities=total,
        cameras=cfg.cameras,
        clips_per_camera=cfg.clips_per_camera,
        frames=cfg.video_frames,
        size=cfg.video_size,
        noise=0.0,
        seed=cfg.data_seed,
        train_fraction=(total - cfg.test_identities) / total,
    )


def _synth(cfg: NoiseBenchConfig, folder: Path) -> None:
    """The benchmark's synthetic videos, generated once per data settings (``--report-only``: checked, never made)."""
    from training.data.synth import generate

    scfg = synth_config(cfg)
    stamp = folder / "synth.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("config") == asdict(scfg):
        return
    if cfg.report_only:
        raise UserError(f"--report-only: {folder} holds no synthetic data of these settings; run without it first")
    if folder.exists():
        shutil.rmtree(folder)
    generate(folder, scfg)


def split_groups(rows: list[VideoRow], pretrain_identities: int) -> tuple[list[VideoRow], list[VideoRow]]:
    """The synthetic training rows split by identity: the first ``pretrain_identities`` (sorted) for pretraining,
    the rest for fine-tuning."""
    ids = sorted({r.clean_label or r.label for r in rows})
    pre = set(ids[:pretrain_identities])
    return [r for r in rows if (r.clean_label or r.label) in pre], [
        r for r in rows if (r.clean_label or r.label) not in pre
    ]


def _noisy_rows(
    rows: list[VideoRow], rate: float, kind: str, seed: int, embeddings: np.ndarray | None = None
) -> tuple[list[VideoRow], float]:
    cmap = class_map(r.clean_label or r.label for r in rows)
    names = sorted(cmap, key=cmap.get)
    clean = np.array([cmap[r.clean_label or r.label] for r in rows])
    res = inject_noise(clean, len(names), rate, "symmetric" if kind == "clean" else kind, seed, embeddings)
    return [
        replace(r, label=names[y], clean_label=r.clean_label or r.label) for r, y in zip(rows, res.labels, strict=True)
    ], res.rate


def carve_validation(rows: list[VideoRow], fraction: float, seed: int) -> tuple[list, list, list]:
    """Split training rows by identity: (fit rows, val query, val gallery); queries are the first clip of every
    other camera of each validation identity."""
    ids = sorted({r.clean_label or r.label for r in rows})
    rng = np.random.default_rng(seed)
    val_ids = set(rng.choice(ids, size=max(2, int(round(len(ids) * fraction))), replace=False).tolist())
    fit = [r for r in rows if (r.clean_label or r.label) not in val_ids]
    val = [replace(r, label=r.clean_label or r.label) for r in rows if (r.clean_label or r.label) in val_ids]
    query, gallery, seen = [], [], set()
    cams = sorted({r.camera for r in val})
    for r in val:
        key = (r.label, r.camera)
        if cams.index(r.camera) % 2 == 0 and key not in seen:
            seen.add(key)
            query.append(r)
        else:
            gallery.append(r)
    return fit, query, gallery


def _manifest(cfg: NoiseBenchConfig, path: Path, rows: list[VideoRow]) -> Path:
    """``rows`` written to ``path`` for training; ``--report-only`` writes nothing (the runs name the same path)."""
    return path if cfg.report_only else write_manifest(path, rows)


def cell_config(
    cfg: NoiseBenchConfig, loss: str, t: float, train_csv: Path, run: Path, seed: int, **overrides: Any
) -> TrainConfig:
    """The training configuration of one grid cell: the benchmark's model and schedule, decoded once (``cache``)."""
    settings = dict(
        train=str(train_csv),
        out=str(run),
        loss=loss,
        imae_t=t,
        model=cfg.model,
        loss_level=cfg.loss_level,
        optimizer=cfg.optimizer,
        sampler=cfg.sampler,
        frames=cfg.frames,
        size=cfg.size,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        workers=cfg.workers,
        seed=seed,
        cache=True,
        quiet=True,
        warmup_epochs=min(1.0, cfg.epochs / 4),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


class NotRun(Exception):
    """--report-only met a run that has not finished with these settings."""


def _finished(tcfg: TrainConfig) -> dict | None:
    """The record of a finished run of exactly these settings in ``tcfg.out``, or None."""
    done = Path(tcfg.out) / "done.json"
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    return record if same_settings(record.get("config") or {}, asdict(tcfg)) else None


def same_settings(recorded: dict, now: dict) -> bool:
    """A run recorded with ``recorded`` has the settings ``now``: every value equal, where a training option added
    since the run was recorded counts as equal when it has its default (the run had no other choice)."""
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    if set(recorded) - set(now):
        return False
    return all(recorded[k] == v if k in recorded else k in defaults and defaults[k] == v for k, v in now.items())


def _train(tcfg: TrainConfig, reuse_only: bool = False) -> tuple[list[dict], float, float]:
    """Train one run, or reuse a finished run of exactly these settings: (history, wall and CPU seconds of its
    training; CPU counts every thread of this process). ``reuse_only``: raise NotRun instead of training."""
    from training.trainer import fit

    run = Path(tcfg.out)
    done = run / "done.json"
    record = _finished(tcfg)
    if record:  # a finished run of these settings: reuse it
        return record["history"], float(record.get("seconds", "nan")), float(record.get("cpu_seconds", "nan"))
    if reuse_only:
        raise NotRun(str(run))
    if run.exists():
        shutil.rmtree(run)
    start, cpu = time.perf_counter(), time.process_time()
    res = fit(tcfg)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    record = {"config": asdict(tcfg), "history": res.history, "seconds": seconds, "cpu_seconds": cpu}
    atomic_write_text(done, json.dumps(record))
    return res.history, seconds, cpu


def _infer(checkpoint: Path, rows: list[VideoRow], batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeddings and logits of ``rows`` (all of them, in order) under a checkpoint, and its class names."""
    from training.embed import eval_loader, load_checkpoint, run_inference

    loaded = load_checkpoint(checkpoint, "auto")
    loader = eval_loader(rows, loaded.spec, batch_size, 0, loaded.mean, loaded.std, cache=True)
    embs, logits, kept, _ = run_inference(loaded.model, loader, loaded.device, with_logits=True)
    if len(kept) != len(rows):
        raise UserError(f"{len(rows) - len(kept)} benchmark videos did not decode")
    return embs, logits, loaded.class_names


def memorisation(
    cfg: NoiseBenchConfig, run: Path, rows: list[VideoRow], loss: str, t: float
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The final model over its training set: accuracy against the given labels on correctly labelled and on
    mislabelled samples (the share of wrong labels it predicts: memorisation), final weights, mislabelled mask."""
    import torch

    from training.losses import build_loss

    _, logits, classes = _infer(run / "checkpoints" / "last.pt", rows, cfg.batch_size)
    cmap = {c: i for i, c in enumerate(classes)}
    given = np.array([cmap[r.label] for r in rows])
    flipped = np.array([r.clean_label != r.label for r in rows])
    correct = logits.argmax(1) == given
    kwargs = {"t": t} if loss == "imae" else {}
    weights = build_loss(loss, **kwargs).sample_weights(torch.from_numpy(logits), torch.from_numpy(given)).numpy()
    acc = lambda m: float(correct[m].mean()) if m.any() else float("nan")  # noqa: E731
    return acc(~flipped), acc(flipped), weights, flipped


def prepare(cfg: NoiseBenchConfig, log) -> Prepared:
    """Data, the split into groups, and the pretrained backbone (trained once, then reused)."""
    out = Path(cfg.out_dir)
    data = out / "data"
    log(f"synthetic data -> {data}")
    _synth(cfg, data)
    pre_rows, ft_rows = split_groups(read_manifest(data / "train.csv", require_label=True), cfg.pretrain_identities)
    fit_rows, query, gallery = carve_validation(pre_rows, cfg.val_fraction, cfg.data_seed)
    folder = out / "pretrain"
    for name, rs in (("train.csv", fit_rows), ("val_query.csv", query), ("val_gallery.csv", gallery)):
        _manifest(cfg, folder / name, rs)
    finetune_csv = _manifest(cfg, data / "finetune.csv", ft_rows)
    tcfg = cell_config(
        cfg,
        "cce",
        4.0,
        folder / "train.csv",
        folder / "run",
        seed=0,
        epochs=cfg.pretrain_epochs,
        batch_size=cfg.pretrain_batch_size,
        lr=cfg.pretrain_lr,
        val_query=str(folder / "val_query.csv"),
        val_gallery=str(folder / "val_gallery.csv"),
        warmup_epochs=min(1.0, cfg.pretrain_epochs / 4),
    )
    log(f"pretraining {cfg.model} with clean labels on {cfg.pretrain_identities} identities ({len(fit_rows)} clips)")
    try:
        hist, seconds, cpu = _train(tcfg, reuse_only=cfg.report_only)
    except NotRun:
        raise UserError(
            f"--report-only: {folder / 'run'} holds no finished pretraining of these settings; "
            "run the benchmark without --report-only first"
        ) from None
    val_map = hist[-1]["val_mAP"]
    log(
        f"pretraining: validation mAP {val_map:.4f} after {cfg.pretrain_epochs} epochs, "
        f"{seconds:.0f} s ({cpu:.0f} s CPU)"
    )
    ckpt = folder / "run" / "checkpoints" / "last.pt"
    test_map = checkpoint_test_map(ckpt, data, cfg.batch_size)
    log(f"pretrained checkpoint alone on the test split: mAP {test_map:.4f}")
    record = {"seconds": seconds, "cpu_seconds": cpu, "val_mAP": val_map, "test_mAP": test_map}
    record.update(epochs=cfg.pretrain_epochs, identities=cfg.pretrain_identities)
    if not cfg.report_only:
        atomic_write_text(folder / "pretrain.json", json.dumps({**record, "clips": len(fit_rows)}))
    return Prepared(data, ckpt, finetune_csv, seconds, cpu, val_map, test_map)


def checkpoint_test_map(ckpt: Path, data: Path, batch_size: int) -> float:
    """A checkpoint's mAP on the benchmark's clean test query/gallery split (the pretrained model's own score)."""
    from indexing.metrics import evaluate_retrieval

    q, g = _test_rows(data)
    qe, ge = _infer(ckpt, q, batch_size)[0], _infer(ckpt, g, batch_size)[0]
    res = evaluate_retrieval(
        qe, [r.id for r in q], [r.label for r in q], [r.camera for r in q],
        ge, [r.id for r in g], [r.label for r in g], [r.camera for r in g],
    )  # fmt: skip
    return float(res.mAP)


def _test_rows(data: Path) -> tuple[list[VideoRow], list[VideoRow]]:
    return read_manifest(data / "query.csv", require_label=True), read_manifest(
        data / "gallery.csv", require_label=True
    )


def select_t(cfg: NoiseBenchConfig, prep: Prepared, rows: list[VideoRow], log) -> float:
    """IMAE's T: the candidate with the best final validation mAP on a split of the fine-tuning identities."""
    out = Path(cfg.out_dir)
    if cfg.report_only:
        chosen = out / "t_selection" / "selection.json"
        if not chosen.is_file():
            raise UserError(f"--report-only: no {chosen}; pass the T that was used with --imae-t")
        return float(json.loads(chosen.read_text())["chosen"])
    fit_rows, query, gallery = carve_validation(rows, cfg.val_fraction, cfg.data_seed)
    noisy, _ = _noisy_rows(fit_rows, cfg.select_rate, "symmetric", seed=12345)
    folder = out / "t_selection"
    for name, rs in (("train.csv", noisy), ("val_query.csv", query), ("val_gallery.csv", gallery)):
        write_manifest(folder / name, rs)
    scores, seconds = {}, {}
    tasks = {
        t: (
            cell_config(
                cfg,
                "imae",
                t,
                folder / "train.csv",
                folder / f"imae_t{t:g}",
                seed=0,
                weights=str(prep.pretrain_ckpt),
                val_query=str(folder / "val_query.csv"),
                val_gallery=str(folder / "val_gallery.csv"),
            ),
        )
        for t in cfg.t_candidates
    }
    for t, (hist, seconds[t], _) in run_tasks(cfg, _train, tasks):
        scores[t] = hist[-1]["val_mAP"]
        log(f"T selection: T={t:g} -> validation mAP {scores[t]:.4f} (symmetric noise {cfg.select_rate:g})")
    best = max(scores, key=lambda t: scores[t])
    record = {"candidates": scores, "chosen": best, "noise_rate": cfg.select_rate, "seconds": seconds}
    atomic_write_text(folder / "selection.json", json.dumps(record, indent=2))
    return best


def run_noise_bench(cfg: NoiseBenchConfig, log=print) -> list[RunResult]:
    """The whole grid. Every run trains on and is tested on the same videos: they are decoded once, in memory."""
    from training.data.dataset import shared_frame_cache

    cfg.validate()
    with shared_frame_cache():
        return _run_grid(cfg, log)


def _run_grid(cfg: NoiseBenchConfig, log) -> list[RunResult]:
    out = Path(cfg.out_dir)
    if cfg.report_only and not (out / "pretrain" / "run" / "done.json").is_file():
        raise UserError(f"--report-only: {out} holds no finished benchmark; run it without --report-only first")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prep = prepare(cfg, log)
    rows = read_manifest(prep.finetune_csv, require_label=True)
    t = cfg.imae_t
    if "imae" in cfg.losses and t is None:
        t = select_t(cfg, prep, rows, log)
        log(f"chosen IMAE T = {t:g} (on a validation split of the fine-tuning identities)")
    t = t if t is not None else 4.0
    if not cfg.report_only:
        record = {**asdict(cfg), "clips_per_identity": cfg.cameras * cfg.clips_per_camera, "imae_t_used": t}
        atomic_write_text(out / "bench_config.json", json.dumps(record, indent=2))
    embeddings = None
    if any(kind == "identity" for kind, _ in cfg.settings()):
        embeddings = _infer(prep.pretrain_ckpt, rows, cfg.batch_size)[0]
    tasks: dict[tuple[str, float, int, str], tuple] = {}
    for kind, rate in cfg.settings():
        name = setting_name(kind, rate)
        for seed in range(cfg.seeds):
            noise_seed = 1000 * seed + int(round(rate * 100))
            if kind == FRAME_NOISE:  # right labels, outlier frames inside the clips
                folder = out / "frames" / f"{name}_seed{seed}"
                noisy, realised = frame_noise_rows(synth_config(cfg), folder, rows, rate, noise_seed, cfg.report_only)
            else:
                noisy, realised = _noisy_rows(rows, rate, kind, noise_seed, embeddings)
            train_csv = _manifest(cfg, out / "labels" / f"train_{name}_seed{seed}.csv", noisy)
            what = "of the frames outliers" if kind == FRAME_NOISE else "of the labels wrong"
            log(f"{name}, seed {seed}: {realised:.3f} {what}")
            for loss in cfg.losses:
                tasks[(kind, rate, seed, loss)] = (cfg, prep, loss, t, kind, rate, seed, train_csv, noisy)
    # seed by seed (a grid cut short has whole seeds), in a seed the noisy settings first and CCE and IMAE first
    tasks = dict(sorted(tasks.items(), key=lambda kv: (kv[0][2], kv[0][0] == "clean", kv[0][3] not in ("cce", "imae"))))
    finished = {key for key, args in tasks.items() if _finished(_cell_config(*args[:8]))}
    rest = "not finished (--report-only trains nothing)" if cfg.report_only else "to train"
    log(f"{len(tasks)} cells: {len(finished)} finished earlier (reused), {len(tasks) - len(finished)} {rest}")
    done, missing = _run_cells(cfg, tasks, finished, log)
    if cfg.clean_rounds and done:  # clean, then retrain: every finished cell once more on the clips its audit kept
        chosen = set(cfg.clean_losses or cfg.losses)
        again = {(*k[:3], k[3] + CLEAN_SUFFIX): (*tasks[k], True) for k in tasks if k in done and k[3] in chosen}
        log(f"clean, then retrain ({CLEAN_RULE}): {len(again)} cells")
        done2, missing2 = _run_cells(cfg, again, set(), log)
        done.update(done2)
        missing += missing2
        tasks.update(again)
    if not done:
        raise UserError(f"--report-only: none of the {len(tasks)} cells has finished in {out}")
    results, curves, weights = [], {}, {}
    for key in (k for k in tasks if k in done):  # reports in grid order, whatever the order cells finished in
        res, hist, w = done[key]
        name = setting_name(res.noise_type, res.noise_rate)
        results.append(res)
        curves.setdefault((name, res.seed), {})[res.loss] = hist
        if res.seed == 0:
            weights.setdefault(name, {})[res.loss] = w
    header = _header(cfg, prep, t, time.perf_counter() - started)
    if missing:
        names = describe_cells(missing, len(cfg.losses))
        header += f"\nNot run (--report-only reports the {len(done)} finished cells): {names}.\n"
        log(f"{len(missing)} of {len(tasks)} cells have not finished: {names}")
    write_reports(out, results, curves, weights, header)
    return results


def _run_cells(cfg: NoiseBenchConfig, tasks: dict, finished: set, log) -> tuple[dict, list]:
    """Train (or with --report-only, read) ``tasks``: the finished ones by key, and the keys of the rest."""
    done: dict[tuple[str, float, int, str], tuple] = {}
    missing: list[tuple[str, float, int, str]] = []
    cell_start = time.perf_counter()
    for key, value in run_tasks(cfg, _report_cell if cfg.report_only else _cell, tasks, log):
        if value is None:
            missing.append(key)
            continue
        done[key] = value
        res = value[0]
        trained = len(done.keys() - finished)  # the time left is what the trained cells took, not the reused ones
        to_train = len(tasks) - len(finished) - trained
        left = (time.perf_counter() - cell_start) / trained * to_train if trained else 0.0
        log(
            f"[{len(done)}/{len(tasks)}] {res.loss}, {setting_name(res.noise_type, res.noise_rate)}, seed {res.seed}: "
            f"final mAP {res.final_mAP:.4f}, best {res.best_mAP:.4f} (epoch {res.best_epoch}); "
            f"fits {res.train_acc_noisy:.3f} of the "
            f"{'outlier frames' if res.noise_type == FRAME_NOISE else 'wrong labels'}; "
            f"{res.seconds:.0f} s ({res.cpu_seconds:.0f} s CPU)"
            + (f"; about {left / 60:.0f} min left" if trained and to_train else "")
        )
    return done, missing


def _cell_config(
    cfg: NoiseBenchConfig, prep: Prepared, loss: str, t: float, kind: str, rate: float, seed: int, train_csv: Path
) -> TrainConfig:
    """A grid cell's run: fine-tuning from the pretrained checkpoint, tested on the clean query/gallery."""
    return cell_config(
        cfg,
        loss,
        t,
        train_csv,
        Path(cfg.out_dir) / "runs" / f"{loss}_{setting_name(kind, rate)}_seed{seed}",
        seed,
        weights=str(prep.pretrain_ckpt),
        val_query=str(prep.data / "query.csv"),
        val_gallery=str(prep.data / "gallery.csv"),
        **(cfg.frames_schedule() if kind == FRAME_NOISE else {}),
    )


def _cell(
    cfg: NoiseBenchConfig,
    prep: Prepared,
    loss: str,
    t: float,
    kind: str,
    rate: float,
    seed: int,
    train_csv: Path,
    noisy: list[VideoRow],
    clean: bool = False,
) -> tuple[RunResult, list[dict], tuple[np.ndarray, np.ndarray]]:
    """One cell: train (or reuse) and measure. ``clean``: the cell's clean-then-retrain run, on the clips the audit
    of the cell's final model kept, reported as the loss ``<loss>+clean``."""
    loss = loss.removesuffix(CLEAN_SUFFIX)
    tcfg = _cell_config(cfg, prep, loss, t, kind, rate, seed, train_csv)
    if clean:
        first = Path(tcfg.out)
        cleaned = first / "cleaned.csv"
        fresh = cleaned.is_file() and cleaned.stat().st_mtime >= (first / "done.json").stat().st_mtime
        if not cfg.report_only and not fresh:
            cleaned = audit_and_drop(first, train_csv, noisy, cfg.batch_size)[0]
        elif not cleaned.is_file():
            raise NotRun(str(first))
        tcfg = replace(tcfg, train=str(cleaned), out=f"{tcfg.out}_clean1")
        noisy = read_manifest(cleaned, require_label=True)
    run = Path(tcfg.out)
    hist, seconds, cpu = _train(tcfg, reuse_only=cfg.report_only)
    if kind == FRAME_NOISE:  # memorisation of the outlier frames, frame by frame
        acc_clean, acc_noisy, w, flipped = frame_memorisation(run, noisy, loss, t, cfg.video_frames, cfg.batch_size)
    else:
        acc_clean, acc_noisy, w, flipped = memorisation(cfg, run, noisy, loss, t)
    maps = [h["val_mAP"] for h in hist]
    best = int(np.argmax(maps))
    res = RunResult(
        loss=loss + (CLEAN_SUFFIX if clean else ""),
        noise_type=kind,
        noise_rate=rate,
        seed=seed,
        final_mAP=maps[-1],
        best_mAP=maps[best],
        best_epoch=best + 1,
        epochs=len(maps),
        final_cmc1=hist[-1]["val_cmc1"],
        best_cmc1=max(h["val_cmc1"] for h in hist),
        train_acc_clean=acc_clean,
        train_acc_noisy=acc_noisy,
        seconds=seconds,
        cpu_seconds=cpu,
        loss_level=cfg.loss_level,
    )
    return res, hist, (w, flipped)


def describe_cells(cells: list[tuple[str, float, int, str]], n_losses: int) -> str:
    """``[(kind, rate, seed, loss)]`` -> "symmetric0.6: seed 1, seed 2 (cce, imae); clean: seed 2": a seed without
    a loss list stands for every loss."""
    by_seed: dict[tuple[str, int], list[str]] = {}
    for kind, rate, seed, loss in cells:
        by_seed.setdefault((setting_name(kind, rate), seed), []).append(loss)
    parts: dict[str, list[str]] = {}
    for (name, seed), losses in by_seed.items():
        every = len(losses) == n_losses
        parts.setdefault(name, []).append(f"seed {seed}" + ("" if every else f" ({', '.join(losses)})"))
    return "; ".join(f"{name}: {', '.join(seeds)}" for name, seeds in parts.items())


def _report_cell(*args) -> tuple | None:
    """``_cell`` of a finished run, or None where the run has not finished (--report-only)."""
    try:
        return _cell(*args)
    except NotRun:
        return None


def _header(cfg: NoiseBenchConfig, prep: Prepared, t: float, wall: float) -> str:
    return (
        f"# Noise benchmark\n\n{cfg.model} pretrained with clean labels on {cfg.pretrain_identities} separate "
        f"identities ({cfg.pretrain_epochs} epochs, {prep.pretrain_seconds:.0f} s wall, "
        f"{prep.pretrain_cpu_seconds:.0f} s CPU; validation mAP "
        f"{100 * prep.pretrain_val_map:.1f}%; test mAP of the pretrained model alone "
        f"{100 * prep.pretrain_test_map:.1f}%), then fine-tuned for {cfg.epochs} epochs on {cfg.train_identities} "
        f"identities ({cfg.cameras} cameras x {cfg.clips_per_camera} clips each; {cfg.frames} frames of "
        f"{cfg.size} px; {cfg.loss_level}-level loss, {cfg.optimizer} at lr {cfg.lr:g}, batch {cfg.batch_size}, "
        f"{cfg.sampler} sampler){_frames_note(cfg)}; IMAE T = {t:g}; test = clean query/gallery of "
        f"{cfg.test_identities} unseen identities. "
        + (
            f"Clean, then retrain: the cells of {', '.join(cfg.clean_losses)} only. "
            if cfg.clean_rounds and cfg.clean_losses
            else ""
        )
        + f"This invocation took {wall / 60:.1f} min (finished cells are reused and not re-timed).\n"
    )


def _frames_note(cfg: NoiseBenchConfig) -> str:
    """How the frames settings' cells are trained differently, for the header (nothing when they are not)."""
    schedule = {k: v for k, v in cfg.frames_schedule().items() if k != "warmup_epochs"}
    return "; the frames settings' cells: " + ", ".join(f"{k} {v:g}" for k, v in schedule.items()) if schedule else ""

"""The training loop: one ``fit()`` that reads top to bottom.

Set-up (devices, DDP, data, model, optimiser, schedule, resume) -> for each epoch: train with mixed precision,
gradient clipping and per-sample weight statistics; validate mAP/CMC on a query/gallery split; write metrics,
TensorBoard and atomic checkpoints -> final plots and per-sample weights.

About the ``loss`` column: IMAE is defined by its gradient and has no honest closed-form loss value, so the
logged ``loss`` is the cross-entropy of the model's logits against the given labels for every loss; ``objective``
holds the optimised loss's own value where it has one (all but IMAE).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.dataset import VideoDataset, apply_bad_video_policy, collate, worker_init
from training.losses import build_loss, list_losses
from training.manifest import class_map, read_manifest
from training.models import build_model
from training.runtime import (
    DistInfo,
    atomic_torch_save,
    autocast,
    init_distributed,
    load_checkpoint_file,
    resolve_precision,
    select_device,
)
from training.video import ClipSpec

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    train: str
    out: str
    val_query: str | None = None
    val_gallery: str | None = None
    loss: str = "imae"
    imae_t: float = 8.0
    imae_normalize: str = "weight"
    gce_q: float = 0.7
    sce_alpha: float = 0.1
    sce_beta: float = 1.0
    label_smoothing: float = 0.0
    model: str = "r2plus1d_18"
    embedding_dim: int = 256
    scale: float = 16.0
    weights: str | None = None
    frames: int = 16
    size: int = 112
    sampling: str = "segments"
    stride: int = 2
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    resume: bool = False
    seed: int = 0
    on_bad_video: str = "fail"
    cache: bool = False
    stop_after_epoch: int | None = None
    quiet: bool = False

    def loss_kwargs(self) -> dict[str, Any]:
        return {"imae": {"t": self.imae_t, "normalize": self.imae_normalize}, "gce": {"q": self.gce_q},
                "sce": {"alpha": self.sce_alpha, "beta": self.sce_beta},
                "cce": {"label_smoothing": self.label_smoothing}}.get(self.loss, {})

    def validate(self) -> None:
        if self.loss not in list_losses():
            raise UserError(f"--loss must be one of {', '.join(list_losses())}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for flag, value, ok in [("--epochs", self.epochs, self.epochs >= 1),
                                ("--batch-size", self.batch_size, self.batch_size >= 2),
                                ("--lr", self.lr, self.lr > 0), ("--weight-decay", self.weight_decay,
                                                                 self.weight_decay >= 0),
                                ("--workers", self.workers, self.workers >= 0),
                                ("--embedding-dim", self.embedding_dim, self.embedding_dim >= 2),
                                ("--warmup-epochs", self.warmup_epochs, self.warmup_epochs >= 0),
                                ("--grad-clip", self.grad_clip, self.grad_clip >= 0)]:
            if not ok:
                raise UserError(f"{flag}: invalid value {value}")
        if (self.val_query is None) != (self.val_gallery is None):
            raise UserError("--val-query and --val-gallery go together")
        try:
            build_loss(self.loss, **self.loss_kwargs())
        except ValueError as exc:
            raise UserError(f"--loss {self.loss}: {exc}") from None


@dataclass
class FitResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, float]]
    skipped: list[tuple[str, str]]


class TrainingDiverged(UserError):
    pass


METRIC_COLUMNS = ["epoch", "loss", "objective", "train_acc", "val_mAP", "val_cmc1", "val_cmc5", "lr", "clips_per_s",
                  "data_wait_share", "weight_mean", "weight_mean_clean", "weight_mean_noisy", "weight_share_noisy",
                  "epoch_seconds", "skipped_videos"]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def _write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for h in history:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items()})
    atomic_write_text(path, buf.getvalue())


def _validate(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
              val: tuple[VideoDataset, VideoDataset]) -> dict[str, float]:
    from indexing.metrics import evaluate_retrieval
    from training.embed import run_inference

    out = []
    for ds in val:
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=0 if cfg.cache else cfg.workers,
                            collate_fn=collate, worker_init_fn=worker_init if cfg.workers and not cfg.cache else None)
        emb, _, kept, _ = run_inference(model, loader, device)
        out.append((emb, [ds.rows[i] for i in kept]))
    (qe, qr), (ge, gr) = out
    res = evaluate_retrieval(qe, [r.id for r in qr], [r.label for r in qr], [r.camera for r in qr],
                             ge, [r.id for r in gr], [r.label for r in gr], [r.camera for r in gr], ks=(1, 5, 10))
    return {"val_mAP": res.mAP, "val_cmc1": res.cmc[1], "val_cmc5": res.cmc[5]}


def _checkpoint(model: torch.nn.Module, cfg: TrainConfig, spec: ClipSpec, classes: list[str], epoch: int,
                best: float, history: list[dict[str, float]], opt: torch.optim.Optimizer, sched: Any,
                scaler: torch.amp.GradScaler) -> dict[str, Any]:
    from training.dataset import MEAN, STD

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": "vidret-checkpoint", "version": 1,
        "arch": {"name": cfg.model, "num_classes": len(classes), "embedding_dim": cfg.embedding_dim,
                 "scale": cfg.scale},
        "model": state, "classes": classes,
        "input": {"frames": spec.frames, "size": spec.size, "sampling": spec.sampling, "stride": spec.stride,
                  "mean": list(MEAN), "std": list(STD)},
        "embedding_dim": cfg.embedding_dim, "config": asdict(cfg),
        "epoch": epoch, "best_map": best, "history": history,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
    }


def fit(cfg: TrainConfig) -> FitResult:
    # ---- set-up: processes, device, precision, seeds --------------------------------------------------------
    cfg.validate()
    info: DistInfo = init_distributed(cfg.device)
    device = select_device(cfg.device, info.local_rank)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if info.is_main:
        if last_path.exists() and not cfg.resume:
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plots").mkdir(exist_ok=True)
    say = (lambda *a: print(*a, flush=True)) if info.is_main and not cfg.quiet else (lambda *a: None)

    # ---- data ---------------------------------------------------------------------------------------------------
    rows = read_manifest(cfg.train, require_label=True)
    cmap = class_map(r.label for r in rows)
    classes = sorted(cmap, key=cmap.get)
    spec = ClipSpec(frames=cfg.frames, size=cfg.size, sampling=cfg.sampling, stride=cfg.stride)
    val = None
    if cfg.val_query:  # with --cache, validation clips are decoded once (in this process) and reused
        val = tuple(VideoDataset(read_manifest(m, require_label=True), spec, train=False,
                                 on_bad_video=cfg.on_bad_video, cache=cfg.cache)
                    for m in (cfg.val_query, cfg.val_gallery))
    flipped = np.array([r.clean_label is not None and r.clean_label != r.label for r in rows])
    known = np.array([r.clean_label is not None for r in rows])
    train_ds = VideoDataset(rows, spec, train=True, class_to_idx=cmap, on_bad_video=cfg.on_bad_video,
                            seed=cfg.seed, cache=cfg.cache)
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=info.enabled)
    per_rank_batch = max(2, cfg.batch_size // info.world_size)
    loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=collate, drop_last=len(train_ds) // info.world_size > per_rank_batch,
                        worker_init_fn=worker_init if cfg.workers else None, persistent_workers=cfg.workers > 0,
                        pin_memory=device.type == "cuda")

    # ---- model, loss, optimiser, schedule -------------------------------------------------------------------
    model = build_model(cfg.model, num_classes=len(classes), embedding_dim=cfg.embedding_dim, scale=cfg.scale,
                        weights=cfg.weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs())
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, lr=cfg.lr) if cfg.optimizer == "adamw"
           else torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True))
    steps_per_epoch = max(1, len(loader))
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, total))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start_epoch, best, history = 0, -1.0, []
    if cfg.resume and last_path.exists():
        ck = load_checkpoint_file(last_path)
        if ck["arch"]["name"] != cfg.model or list(ck["classes"]) != classes:
            raise UserError(f"--resume: {last_path} was trained with another model or label set")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"]["torch"])
        start_epoch, best, history = int(ck["epoch"]), float(ck["best_map"]), list(ck["history"])
        say(f"resuming {run_dir} after epoch {start_epoch}")
    elif cfg.resume:
        say(f"--resume: no checkpoint in {ckpt_dir} yet, starting a new run")
    core = model
    train_model: torch.nn.Module = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
        resolved = {**asdict(cfg), "resolved_device": str(device), "resolved_precision": precision,
                    "world_size": info.world_size, "num_classes": len(classes), "num_train_videos": len(rows),
                    "mislabelled_known": int(known.sum()), "mislabelled": int(flipped.sum())}
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2))
        say(f"training {cfg.model} with {cfg.loss} on {len(rows)} videos, {len(classes)} classes, device {device}, "
            f"{precision}, {info.world_size} process(es)")

    skipped: dict[str, str] = {}
    weights_epoch = np.zeros(len(rows))
    p_label_epoch = np.zeros(len(rows))
    # ---- epochs ---------------------------------------------------------------------------------------------------
    for epoch in range(start_epoch, cfg.epochs):
        train_model.train()
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        weights_epoch[:] = 0.0
        p_label_epoch[:] = 0.0
        seen = np.zeros(len(rows))
        sums = torch.zeros(6, dtype=torch.float64)  # ce, objective, correct, n, wait seconds, loop seconds
        t_epoch = time.perf_counter()
        t_ready = time.perf_counter()
        bar = None
        if info.is_main and not cfg.quiet:
            from training.data_cli import progress_bar

            bar = progress_bar(f"epoch {epoch + 1}/{cfg.epochs}")
            bar.start()
            task = bar.add_task("train", total=steps_per_epoch)
        for step, batch in enumerate(loader):
            sums[4] += time.perf_counter() - t_ready
            apply_bad_video_policy(batch["skipped"], cfg.on_bad_video, skipped)
            if batch["clip"].shape[0] < 2:  # BatchNorm needs two samples
                t_ready = time.perf_counter()
                continue
            x = batch["clip"].to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last_3d)
            y = batch["target"].to(device, non_blocking=True)
            with autocast(device, precision):
                _, logits = train_model(x)
            logits = logits.float()
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; the last good checkpoint "
                    f"is {last_path if last_path.exists() else '(none yet)'}; try a lower --lr or --precision fp32")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            with torch.no_grad():
                idx = batch["index"].numpy()
                w = loss_fn.sample_weights(logits, y).double().cpu().numpy()
                p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1).double().cpu().numpy()
                weights_epoch[idx] = w
                p_label_epoch[idx] = p_y
                seen[idx] = 1
                ce = F.cross_entropy(logits, y, reduction="sum")
                sums[0] += float(ce)
                sums[1] += float(loss) * len(y)
                sums[2] += float((logits.argmax(1) == y).sum())
                sums[3] += len(y)
            if bar is not None:
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} ce {sums[0] / sums[3]:.3f} "
                                                        f"acc {sums[2] / sums[3]:.3f}")
            t_ready = time.perf_counter()
        sums[5] = time.perf_counter() - t_epoch
        if bar is not None:
            bar.stop()
        if info.enabled:  # metrics and per-sample statistics from every process
            stats = torch.from_numpy(np.concatenate([weights_epoch, p_label_epoch, seen]))
            dist.all_reduce(sums)
            dist.all_reduce(stats)
            weights_epoch, p_label_epoch, seen = np.split(stats.numpy(), 3)
            sums[4:6] /= info.world_size
        n = max(1.0, float(sums[3]))
        has = seen > 0
        total_w = weights_epoch[has].sum()
        row: dict[str, float] = {
            "epoch": epoch + 1, "loss": float(sums[0]) / n,
            "objective": float("nan") if cfg.loss == "imae" else float(sums[1]) / n,
            "train_acc": float(sums[2]) / n, "val_mAP": float("nan"), "val_cmc1": float("nan"),
            "val_cmc5": float("nan"), "lr": opt.param_groups[0]["lr"], "clips_per_s": n / float(sums[5]),
            "data_wait_share": float(sums[4] / sums[5]), "weight_mean": _masked_mean(weights_epoch, has),
            "weight_mean_clean": _masked_mean(weights_epoch, has & known & ~flipped),
            "weight_mean_noisy": _masked_mean(weights_epoch, has & known & flipped),
            "weight_share_noisy": float(weights_epoch[has & flipped].sum() / total_w) if total_w > 0 else float("nan"),
            "epoch_seconds": time.perf_counter() - t_epoch, "skipped_videos": len(skipped)}
        if info.is_main:
            if val is not None:
                row.update(_validate(core, cfg, device, val))
            history.append(row)
            improved = val is None or row["val_mAP"] > best
            best = row["val_mAP"] if (val is not None and improved) else best
            ck = _checkpoint(core, cfg, spec, classes, epoch + 1, best, history, opt, sched, scaler)
            atomic_torch_save(ck, last_path)
            if improved:
                atomic_torch_save(ck, best_path)
            _write_metrics_csv(run_dir / "metrics.csv", history)
            for k, v in row.items():
                if k != "epoch" and not (isinstance(v, float) and math.isnan(v)):
                    writer.add_scalar(k, v, epoch + 1)
            writer.flush()
            val_txt = f" val mAP {row['val_mAP']:.3f} CMC-1 {row['val_cmc1']:.3f}" if val is not None else ""
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss(ce) {row['loss']:.4f} acc {row['train_acc']:.3f}{val_txt} "
                f"{row['clips_per_s']:.1f} clips/s, data wait {row['data_wait_share']:.0%}")
        if info.enabled:
            dist.barrier()
        if cfg.stop_after_epoch is not None and epoch + 1 >= cfg.stop_after_epoch and epoch + 1 < cfg.epochs:
            say(f"stopping after epoch {epoch + 1} as asked; continue with --resume")
            break

    # ---- wrap up ------------------------------------------------------------------------------------------------
    if info.is_main:
        np.savez(run_dir / "sample_weights.npz", ids=np.array([r.id for r in rows]), weights=weights_epoch,
                 p_label=p_label_epoch, flipped=flipped, known=known)
        if skipped:
            (run_dir / "skipped.txt").write_text("".join(f"{p}\t{r}\n" for p, r in sorted(skipped.items())))
            say(f"skipped {len(skipped)} unreadable video(s), listed in {run_dir / 'skipped.txt'}")
        if history:
            from training.plots import plot_training

            plot_training(history, weights_epoch, flipped, known, cfg.loss, run_dir / "plots")
        writer.close()
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return FitResult(run_dir=run_dir, last_checkpoint=last_path, best_checkpoint=best_path, history=history,
                     skipped=sorted(skipped.items()))

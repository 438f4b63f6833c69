"""The training loop: ``fit()`` reads top to bottom and calls one named step per stage.

``fit()``: set up the process (``_setup_job``: DDP, device, precision, seed, run folder) -> ``_setup_data`` ->
``_build_optimisation`` (model, loss, optimiser, schedule, gradient scaler) -> ``restore_checkpoint`` (--resume)
-> ``_wrap_for_training`` (DDP, torch.compile) -> for each epoch: ``train_one_epoch``, ``_epoch_row``, and on the
main process ``evaluate`` (validation mAP/CMC), ``save_checkpoint`` (atomic) and ``_log_epoch`` (metrics.csv,
TensorBoard, console) -> ``_wrap_up`` (per-sample weights, skipped videos, plots). DDP, precision and checkpoints
are small helpers here and in ``training/runtime.py``; the configuration is ``training/config.py``.

Device syncs: a training step queues work on the device and reads nothing back. The epoch's running sums
(cross-entropy, objective, correct predictions) and per-sample weights and ``p_y`` stay on the device in float64
(as the CPU sums always were; CUDA has float64, MPS would not) and are read back once per ``--log-interval``
steps (progress bar, finite-loss check) and once at the epoch's end.

About the ``loss`` column: IMAE is defined by its gradient and has no honest closed-form loss value, so the
logged ``loss`` is the cross-entropy of the model's logits against the given labels for every loss; ``objective``
holds the optimised loss's own value where it has one (all but IMAE).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from indexing.atomic import atomic_write, atomic_write_text
from indexing.errors import UserError
from training.checkpoint import checkpoint_state, gather_rng_states, load_checkpoint_file, restore_rng_state
from training.config import OPTIMIZERS, TrainConfig
from training.data.dataset import EpochSampler, VideoDataset, apply_bad_video_policy, collate, worker_init
from training.data.manifest import VideoRow, class_map, read_manifest
from training.data.video import ClipSpec
from training.distributed import every_rank_can_step, share_skipped
from training.frame_level import FRAME_COLUMNS, FrameSums, frame_targets, per_clip
from training.losses import build_loss
from training.models import build_model
from training.runtime import (
    DistInfo,
    atomic_torch_save,
    autocast,
    init_distributed,
    resolve_precision,
    select_device,
)
from training.sampler import build_sampler

__all__ = [
    "OPTIMIZERS",
    "FitResult",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "restore_checkpoint",
    "save_checkpoint",
    "train_one_epoch",
]


@dataclass
class FitResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    history: list[dict[str, float]]
    skipped: list[tuple[str, str]]


class TrainingDiverged(UserError):
    pass


METRIC_COLUMNS = [
    "epoch",
    "loss",
    "objective",
    "train_acc",
    "val_mAP",
    "val_cmc1",
    "val_cmc5",
    "lr",
    "clips_per_s",
    "data_wait_share",
    "weight_mean",
    "weight_mean_clean",
    "weight_mean_noisy",
    "weight_share_noisy",
    "p_y_clean",
    "p_y_noisy",
    *FRAME_COLUMNS,
    "epoch_seconds",
    "skipped_videos",
]


# ---- grouped state ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """Where this process trains and what it writes to."""

    info: DistInfo
    device: torch.device
    precision: str
    run_dir: Path
    say: Callable[..., None]

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"


@dataclass
class Data:
    rows: list[VideoRow]
    classes: list[str]
    spec: ClipSpec
    sampler: EpochSampler
    loader: DataLoader
    val: tuple[VideoDataset, VideoDataset] | None  # query, gallery
    flipped: np.ndarray  # label != clean_label, per training row
    known: np.ndarray  # clean_label given, per training row


@dataclass
class Optimisation:
    model: nn.Module  # the bare model: checkpoints and validation
    loss_fn: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    train_model: nn.Module | None = None  # what the steps run: ``model`` under DDP and/or torch.compile


@dataclass
class Progress:
    """What a resumed run continues from: the epochs done, the best validation mAP, the metric rows."""

    start_epoch: int = 0
    best: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)

    def add(self, row: dict[str, float], validated: bool) -> bool:
        """Record an epoch's row; True when it is the best so far (every epoch is, without validation)."""
        self.history.append(row)
        improved = not validated or row["val_mAP"] > self.best
        if validated and improved:
            self.best = row["val_mAP"]
        return improved


@dataclass
class EpochStats:
    """An epoch's statistics, summed over every process: float64 sums, per-sample arrays over the training rows."""

    ce: float
    objective: float  # the optimised loss times the batch size, summed
    correct: float
    n: float
    wait_s: float  # seconds spent waiting for the DataLoader
    loop_s: float
    weights: np.ndarray
    p_label: np.ndarray
    seen: np.ndarray
    t_start: float
    frames: list[float] | None = None  # FrameSums of a frame-level run


# ---- the run ---------------------------------------------------------------------------------------------------------
def fit(cfg: TrainConfig) -> FitResult:
    """Train as configured; the run folder of docs/formats.md. Under torchrun every process calls it; rank 0 writes."""
    cfg.validate()
    job = _setup_job(cfg)
    data = _setup_data(cfg, job.info, job.device)
    optim = _build_optimisation(cfg, len(data.classes), max(1, len(data.loader)), job.device, job.precision)
    if cfg.weights and not cfg.resume:
        job.say(f"--weights {cfg.weights}: loaded {optim.model.weights_loaded}")
    progress = restore_checkpoint(cfg, job, data.classes, optim)
    _wrap_for_training(cfg, job, optim)
    writer = _start_logging(cfg, job, data)
    skipped: dict[str, str] = {}
    stats: EpochStats | None = None
    for epoch in range(progress.start_epoch, cfg.epochs):
        stats = train_one_epoch(cfg, job, data, optim, epoch, skipped)
        row = _epoch_row(cfg, epoch, stats, optim, len(skipped), data)
        if job.info.is_main and data.val is not None:
            row.update(evaluate(optim.model, cfg, job.device, data.val))
        rng = gather_rng_states(job.info)  # every rank's generators (rank 0's after validation drew from them)
        if job.info.is_main:
            improved = progress.add(row, validated=data.val is not None)
            save_checkpoint(cfg, job, data, optim, progress, epoch + 1, improved, rng)
            _log_epoch(cfg, job, writer, progress.history, validated=data.val is not None)
        if job.info.enabled:
            dist.barrier()
        if cfg.stop_after_epoch is not None and epoch + 1 >= cfg.stop_after_epoch and epoch + 1 < cfg.epochs:
            job.say(f"stopping after epoch {epoch + 1} as asked; continue with --resume")
            break
    _wrap_up(cfg, job, data, progress.history, stats, skipped, writer)
    return FitResult(
        run_dir=job.run_dir,
        last_checkpoint=job.last_path,
        best_checkpoint=job.best_path,
        history=progress.history,
        skipped=sorted(skipped.items()),
    )


# ---- set-up ----------------------------------------------------------------------------------------------------------
def _setup_job(cfg: TrainConfig) -> Job:
    """Processes, device, precision, the seed and the run folder (which must not hold a run unless --resume)."""
    info = init_distributed(cfg.device)
    device = select_device(cfg.device, info.local_rank)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    say = (lambda *a: print(*a, flush=True)) if info.is_main and not cfg.quiet else (lambda *a: None)
    job = Job(info, device, precision, Path(cfg.out), say)
    if info.is_main:
        if job.last_path.exists() and not cfg.resume:
            raise UserError(f"{job.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        job.last_path.parent.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "plots").mkdir(exist_ok=True)
    return job


def _setup_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> Data:
    rows = read_manifest(cfg.train, require_label=True)
    cmap = class_map(r.label for r in rows)
    classes = sorted(cmap, key=cmap.get)
    spec = ClipSpec(frames=cfg.frames, size=cfg.size, sampling=cfg.sampling, stride=cfg.stride)
    val = None
    if cfg.val_query:  # with --cache, validation clips are decoded once (in this process) and reused
        val = tuple(
            VideoDataset(
                read_manifest(m, require_label=True), spec, train=False, on_bad_video=cfg.on_bad_video, cache=cfg.cache
            )
            for m in (cfg.val_query, cfg.val_gallery)
        )
    flipped = np.array([r.clean_label is not None and r.clean_label != r.label for r in rows])
    known = np.array([r.clean_label is not None for r in rows])
    train_ds = VideoDataset(
        rows, spec, train=True, class_to_idx=cmap, on_bad_video=cfg.on_bad_video, seed=cfg.seed, cache=cfg.cache
    )
    # (epoch, index) pairs: the epoch reaches the persistent workers' copies of the dataset
    sampler, per_rank_batch, drop_last = build_sampler(cfg, train_ds, info.rank, info.world_size)
    # the loader's own generator: starting the workers must not draw from the global one, whose state the
    # checkpoint saves (persistent workers start in a run's first epoch, which a resumed run shifts)
    loader = DataLoader(
        train_ds,
        batch_size=per_rank_batch,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=worker_init if cfg.workers else None,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return Data(rows, classes, spec, sampler, loader, val, flipped, known)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _build_optimisation(
    cfg: TrainConfig, num_classes: int, steps_per_epoch: int, device: torch.device, precision: str
) -> Optimisation:
    """The model (on ``device``), the loss, AdamW/SGD without decay on biases and norms, warm-up + cosine schedule."""
    model = build_model(
        cfg.model, num_classes=num_classes, embedding_dim=cfg.embedding_dim, scale=cfg.scale, weights=cfg.weights
    ).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs())
    loss_fn.check_labels_on_host = False  # no host sync a step: a bad label is a NaN loss, reported at its step
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (
        torch.optim.AdamW(groups, lr=cfg.lr)
        if cfg.optimizer == "adamw"
        else torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    )
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, total))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return Optimisation(model, loss_fn, opt, sched, scaler, steps_per_epoch)


def _wrap_for_training(cfg: TrainConfig, job: Job, optim: Optimisation) -> None:
    """DDP across processes, then torch.compile (--compile); ``optim.model`` stays the bare model."""
    train_model: nn.Module = optim.model
    if job.info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            optim.model, device_ids=[job.device.index] if job.device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)
    optim.train_model = train_model


def _start_logging(cfg: TrainConfig, job: Job, data: Data) -> Any:
    """On the main process: the TensorBoard writer and config.json (every option, resolved); None elsewhere."""
    if not job.info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(job.run_dir / "tb"))
    resolved = {
        **asdict(cfg),
        "resolved_device": str(job.device),
        "resolved_precision": job.precision,
        "world_size": job.info.world_size,
        "num_classes": len(data.classes),
        "num_train_videos": len(data.rows),
        "mislabelled_known": int(data.known.sum()),
        "mislabelled": int(data.flipped.sum()),
    }
    atomic_write_text(job.run_dir / "config.json", json.dumps(resolved, indent=2))
    job.say(
        f"training {cfg.model} with {cfg.loss} on {len(data.rows)} videos, {len(data.classes)} classes, device "
        f"{job.device}, {job.precision}, {job.info.world_size} process(es)"
    )
    return writer


# ---- checkpoints -----------------------------------------------------------------------------------------------------
def restore_checkpoint(cfg: TrainConfig, job: Job, classes: list[str], optim: Optimisation) -> Progress:
    """With --resume and checkpoints/last.pt: model, optimiser, schedule, scaler and random generators as saved."""
    if not cfg.resume:
        return Progress()
    if not job.last_path.exists():
        job.say(f"--resume: no checkpoint in {job.last_path.parent} yet, starting a new run")
        return Progress()
    ck = load_checkpoint_file(job.last_path)
    if ck["arch"]["name"] != cfg.model or list(ck["classes"]) != classes:
        raise UserError(f"--resume: {job.last_path} was trained with another model or label set")
    optim.model.load_state_dict(ck["model"])
    optim.opt.load_state_dict(ck["optimizer"])
    optim.sched.load_state_dict(ck["scheduler"])
    optim.scaler.load_state_dict(ck["scaler"])
    note = restore_rng_state(ck, job.info)  # each rank its own generators
    job.say(f"resuming {job.run_dir} after epoch {int(ck['epoch'])}" + (f"; {note}" if note else ""))
    return Progress(int(ck["epoch"]), float(ck["best_map"]), list(ck["history"]))


def _checkpoint_state(
    cfg: TrainConfig, data: Data, optim: Optimisation, progress: Progress, epoch: int, rng: list[dict[str, Any]]
) -> dict[str, Any]:
    """The checkpoint of docs/formats.md (``training/checkpoint.py``), with every rank's random state ``rng``."""
    from training.data.dataset import MEAN, STD

    spec = data.spec
    return checkpoint_state(
        arch={
            "name": cfg.model,
            "num_classes": len(data.classes),
            "embedding_dim": cfg.embedding_dim,
            "scale": cfg.scale,
        },
        model={k: v.detach().cpu() for k, v in optim.model.state_dict().items()},
        classes=data.classes,
        input_spec={
            "frames": spec.frames,
            "size": spec.size,
            "sampling": spec.sampling,
            "stride": spec.stride,
            "mean": list(MEAN),
            "std": list(STD),
        },
        config=asdict(cfg),
        epoch=epoch,
        best_map=progress.best,
        history=progress.history,
        optimizer=optim.opt.state_dict(),
        scheduler=optim.sched.state_dict(),
        scaler=optim.scaler.state_dict(),
        rng_ranks=rng,
    )


def save_checkpoint(
    cfg: TrainConfig,
    job: Job,
    data: Data,
    optim: Optimisation,
    progress: Progress,
    epoch: int,
    improved: bool,
    rng: list[dict[str, Any]] | None = None,
) -> None:
    """checkpoints/last.pt after every epoch, and best.pt when ``improved``; each written atomically. ``rng``: every
    rank's generator states (``gather_rng_states``, called on every rank; default: this process's alone)."""
    ck = _checkpoint_state(cfg, data, optim, progress, epoch, rng if rng is not None else gather_rng_states(DistInfo()))
    atomic_torch_save(ck, job.last_path)
    if improved:
        atomic_torch_save(ck, job.best_path)


# ---- one epoch -------------------------------------------------------------------------------------------------------
def train_one_epoch(
    cfg: TrainConfig, job: Job, data: Data, optim: Optimisation, epoch: int, skipped: dict[str, str]
) -> EpochStats:
    """One pass over this process's share of the training data; the statistics of every process.

    Every ``cfg.log_interval`` steps and at the end, the running sums are read back (the one sync) to refresh the
    progress bar and to check that every loss so far was finite. A non-finite loss is thus detected at most
    ``log_interval - 1`` steps late (its step is recorded on the device, so the error names it exactly); the
    updates made after it are never checkpointed, since checkpoints are written only after this function returns.
    """
    optim.train_model.train()
    data.sampler.set_epoch(epoch)
    running = _RunningSums(len(data.rows), job.device, frame_level=cfg.loss_level == "frame")
    bar = _epoch_bar(cfg, job, epoch, optim.steps_per_epoch)
    wait_s = 0.0
    t_start = t_ready = time.perf_counter()
    try:
        for step, batch in enumerate(data.loader):
            wait_s += time.perf_counter() - t_ready
            apply_bad_video_policy(batch["skipped"], cfg.on_bad_video, skipped)
            if every_rank_can_step(batch["clip"].shape[0], cfg.on_bad_video, job.info):  # 2 clips, on every rank
                logits, y, loss = _train_step(cfg, job, optim, batch)
                running.add(step, batch["index"], logits, y, loss, optim.loss_fn, batch["outlier"])
            if (step + 1) % cfg.log_interval == 0:
                _read_back(running, bar, step + 1, epoch, cfg, job)
            t_ready = time.perf_counter()
        _read_back(running, bar, optim.steps_per_epoch, epoch, cfg, job)
        loop_s = time.perf_counter() - t_start
        share_skipped(skipped, job.info)
    finally:
        if bar is not None:
            bar.stop()
    return running.gather(wait_s, loop_s, t_start, job.info)


def _train_step(
    cfg: TrainConfig, job: Job, optim: Optimisation, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward (autocast), backward (scaled for fp16), clip, step; the float32 logits, targets and loss."""
    x = batch["clip"].to(job.device, non_blocking=True)
    if job.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = batch["target"].to(job.device, non_blocking=True)
    frame_level = cfg.loss_level == "frame"
    with autocast(job.device, job.precision):
        _, logits = optim.train_model(x, per_frame=True) if frame_level else optim.train_model(x)
    logits = logits.float()
    if frame_level:  # every frame is a sample with its clip's label
        y = frame_targets(y, x.shape[2])
    loss = optim.loss_fn(logits, y)
    optim.opt.zero_grad(set_to_none=True)
    optim.scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        optim.scaler.unscale_(optim.opt)
        torch.nn.utils.clip_grad_norm_(optim.model.parameters(), cfg.grad_clip)
    optim.scaler.step(optim.opt)
    optim.scaler.update()
    optim.sched.step()
    return logits, y, loss


class _RunningSums:
    """An epoch's sums and per-sample statistics on the device, in float64; ``read()`` is the only sync."""

    def __init__(self, num_rows: int, device: torch.device, frame_level: bool = False) -> None:
        f64 = {"dtype": torch.float64, "device": device}
        self.frames = FrameSums(device) if frame_level else None  # per-frame rows: clip means below
        self.sums = torch.zeros(3, **f64)  # cross-entropy, objective x batch size, correct predictions
        self.n = 0  # samples: known on the host
        self.weights, self.p_label, self.seen = (torch.zeros(num_rows, **f64) for _ in range(3))
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every loss so far was finite
        self.bad_step = torch.zeros((), **f64)  # the first non-finite loss: its 1-based step and value
        self.bad_loss = torch.zeros((), **f64)

    @torch.no_grad()
    def add(
        self,
        step: int,
        index: torch.Tensor,
        logits: torch.Tensor,
        y: torch.Tensor,
        loss: torch.Tensor,
        loss_fn: nn.Module,
        outlier: torch.Tensor | None = None,
    ) -> None:
        idx = index.to(self.seen.device, non_blocking=True)
        weights = loss_fn.sample_weights(logits, y).double()
        p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1).double()
        if self.frames is not None:  # frame-level: logits are (clips x frames); the per-clip arrays get means
            self.frames.add(weights, p_y, outlier)
            weights, p_y = per_clip(weights, len(idx)), per_clip(p_y, len(idx))
        self.weights[idx] = weights
        self.p_label[idx] = p_y
        self.seen[idx] = 1.0
        ce = F.cross_entropy(logits, y, reduction="sum")
        self.sums += torch.stack([ce.double(), loss.double() * len(y), (logits.argmax(1) == y).sum().double()])
        self.n += len(y)
        finite = torch.isfinite(loss)
        first = self.finite & ~finite
        self.bad_step = torch.where(first, float(step + 1), self.bad_step)
        self.bad_loss = torch.where(first, loss.double(), self.bad_loss)
        self.finite &= finite

    def read(self) -> tuple[float, float, bool, int, float]:
        """Cross-entropy and accuracy so far; whether every loss was finite, else the first bad one's step and value."""
        ce, _, correct, bad_step, bad_loss, finite = torch.cat(
            [self.sums, torch.stack([self.bad_step, self.bad_loss, self.finite.double()])]
        ).tolist()
        n = max(1, self.n)
        return ce / n, correct / n, finite == 1.0, int(bad_step), bad_loss

    def gather(self, wait_s: float, loop_s: float, t_start: float, info: DistInfo) -> EpochStats:
        """The epoch's statistics summed over every process (timings averaged), back on the host."""
        totals = torch.cat(
            [self.sums, torch.tensor([self.n, wait_s, loop_s], dtype=torch.float64, device=self.sums.device)]
        )
        per_sample = torch.cat([self.weights, self.p_label, self.seen])
        if info.enabled:
            dist.all_reduce(totals)
            dist.all_reduce(per_sample)
            totals[4:6] /= info.world_size
        ce, objective, correct, n, wait_s, loop_s = totals.tolist()
        weights, p_label, seen = np.split(per_sample.cpu().numpy(), 3)
        frames = self.frames.gather(info.enabled) if self.frames is not None else None
        return EpochStats(ce, objective, correct, n, wait_s, loop_s, weights, p_label, seen, t_start, frames)


def _epoch_bar(cfg: TrainConfig, job: Job, epoch: int, total: int) -> Any:
    """A progress bar on the main process (none with quiet); its text shows the running loss and accuracy."""
    if not job.info.is_main or cfg.quiet:
        return None
    from training.ui import progress_bar

    bar = progress_bar("{task.description}")
    bar.start()
    bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=total)
    return bar


def _read_back(running: _RunningSums, bar: Any, steps_done: int, epoch: int, cfg: TrainConfig, job: Job) -> None:
    """The log-interval sync: stop a diverged run with a clear error, else refresh the progress bar."""
    ce, acc, finite, bad_step, bad_loss = running.read()
    if not finite:
        last = job.last_path if job.last_path.exists() else "(none yet)"
        raise TrainingDiverged(
            f"the loss became {bad_loss} at epoch {epoch + 1}, step {bad_step}; the last good "
            f"checkpoint is {last}; try a lower --lr or --precision fp32"
        )
    if bar is not None:
        bar.update(
            bar.task_ids[0],
            completed=steps_done,
            description=f"epoch {epoch + 1}/{cfg.epochs} ce {ce:.3f} acc {acc:.3f}",
        )


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def _epoch_row(
    cfg: TrainConfig, epoch: int, stats: EpochStats, optim: Optimisation, num_skipped: int, data: Data
) -> dict[str, float]:
    """The epoch's metrics.csv row (validation columns left NaN for ``evaluate``)."""
    n = max(1.0, stats.n)
    w, has, known, flipped = stats.weights, stats.seen > 0, data.known, data.flipped
    total_w = w[has].sum()
    return {
        "epoch": epoch + 1,
        "loss": stats.ce / n,
        "objective": float("nan") if cfg.loss == "imae" else stats.objective / n,
        "train_acc": stats.correct / n,
        "val_mAP": float("nan"),
        "val_cmc1": float("nan"),
        "val_cmc5": float("nan"),
        "lr": optim.opt.param_groups[0]["lr"],
        "clips_per_s": n / stats.loop_s,
        "data_wait_share": stats.wait_s / stats.loop_s,
        "weight_mean": _masked_mean(w, has),
        "weight_mean_clean": _masked_mean(w, has & known & ~flipped),
        "weight_mean_noisy": _masked_mean(w, has & known & flipped),
        "weight_share_noisy": float(w[has & flipped].sum() / total_w) if total_w > 0 else float("nan"),
        "p_y_clean": _masked_mean(stats.p_label, has & known & ~flipped),
        "p_y_noisy": _masked_mean(stats.p_label, has & known & flipped),
        **FrameSums.columns(stats.frames),
        "epoch_seconds": time.perf_counter() - stats.t_start,
        "skipped_videos": num_skipped,
    }


# ---- validation and logging ------------------------------------------------------------------------------------------
def evaluate(
    model: nn.Module, cfg: TrainConfig, device: torch.device, val: tuple[VideoDataset, VideoDataset]
) -> dict[str, float]:
    """Validation mAP and CMC-1/5 of the query split against the gallery split (indexing/metrics.py)."""
    from indexing.metrics import evaluate_retrieval
    from training.embed import run_inference

    out = []
    for ds in val:
        loader = DataLoader(
            ds,
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=0 if cfg.cache else cfg.workers,
            collate_fn=collate,
            worker_init_fn=worker_init if cfg.workers and not cfg.cache else None,
        )
        emb, _, kept, _ = run_inference(model, loader, device)
        out.append((emb, [ds.rows[i] for i in kept]))
    (qe, qr), (ge, gr) = out
    res = evaluate_retrieval(
        qe,
        [r.id for r in qr],
        [r.label for r in qr],
        [r.camera for r in qr],
        ge,
        [r.id for r in gr],
        [r.label for r in gr],
        [r.camera for r in gr],
        ks=(1, 5, 10),
    )
    return {"val_mAP": res.mAP, "val_cmc1": res.cmc[1], "val_cmc5": res.cmc[5]}


def _write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for h in history:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in h.items()})
    atomic_write_text(path, buf.getvalue())


def _log_epoch(cfg: TrainConfig, job: Job, writer: Any, history: list[dict[str, float]], validated: bool) -> None:
    """metrics.csv (every epoch so far), TensorBoard scalars and a console line for the last epoch."""
    row = history[-1]
    _write_metrics_csv(job.run_dir / "metrics.csv", history)
    for k, v in row.items():
        if k != "epoch" and not (isinstance(v, float) and math.isnan(v)):
            writer.add_scalar(k, v, row["epoch"])
    writer.flush()
    val_txt = f" val mAP {row['val_mAP']:.3f} CMC-1 {row['val_cmc1']:.3f}" if validated else ""
    job.say(
        f"epoch {row['epoch']}/{cfg.epochs}: loss(ce) {row['loss']:.4f} acc {row['train_acc']:.3f}{val_txt} "
        f"{row['clips_per_s']:.1f} clips/s, data wait {row['data_wait_share']:.0%}"
    )


def _wrap_up(
    cfg: TrainConfig,
    job: Job,
    data: Data,
    history: list[dict[str, float]],
    stats: EpochStats | None,
    skipped: dict[str, str],
    writer: Any,
) -> None:
    """The last epoch's per-sample weights, the skipped videos and the figures; then leave the process group."""
    if job.info.is_main:
        zeros = np.zeros(len(data.rows))  # no epoch trained in this call (a resumed, finished run)
        weights, p_label = (stats.weights, stats.p_label) if stats is not None else (zeros, zeros)
        arrays = {"ids": np.array([r.id for r in data.rows]), "weights": weights, "p_label": p_label}
        arrays.update(flipped=data.flipped, known=data.known)
        atomic_write(job.run_dir / "sample_weights.npz", lambda fh: np.savez(fh, **arrays))
        if skipped:
            atomic_write_text(job.run_dir / "skipped.txt", "".join(f"{p}\t{r}\n" for p, r in sorted(skipped.items())))
            job.say(f"skipped {len(skipped)} unreadable video(s), listed in {job.run_dir / 'skipped.txt'}")
        if history:
            from training.plots import plot_training

            plot_training(history, weights, data.flipped, data.known, cfg.loss, job.run_dir / "plots")
        writer.close()
    if job.info.enabled:
        dist.barrier()
        dist.destroy_process_group()

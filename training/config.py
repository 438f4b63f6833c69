"""``TrainConfig``: every ``vidret train`` option, its default and its help text, in one place.

``training/cli.py`` builds the ``vidret train`` command from these fields (``train_options()``), so a field added
here is a flag there with the same default and help. Each field's ``metadata`` holds ``help`` (the flag's help
text) and optionally ``envvar`` (a variable the flag reads when it is not given), ``cli_type`` (the type the flag
parses, e.g. ``Path``; the field keeps a ``str``) or ``cli: False`` (no flag: set by library callers only).
The loss options (``--imae-t``, ``--gce-q``, ...) are the options each loss declares where it is registered
(training/loss_registry.py), added as fields here. Kept free of torch so that ``vidret --help`` stays instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from indexing.errors import UserError
from training.loss_registry import (
    IMAE_T_FINETUNE,
    IMAE_T_FRAME_FINETUNE,
    IMAE_T_SCRATCH,
    loss_options,
    registered_losses,
)
from training.loss_registry import loss_kwargs as registry_loss_kwargs

OPTIMIZERS = ("adamw", "sgd")
REQUIRED = object()  # opt() without a default: a required flag


def opt(default: Any = REQUIRED, help: str = "", **meta: Any) -> Any:
    """A ``TrainConfig`` field with its flag's help text (``default_factory`` when ``default`` is callable)."""
    metadata = {"help": help, **meta}
    if default is REQUIRED:
        return field(metadata=metadata)
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass
class _TrainOptions:
    """The options of every run; the loss options are added from the registry (``TrainConfig`` below)."""

    train: str = opt(help="Training manifest (CSV/JSONL with path, label; labels may be noisy).", cli_type=Path)
    out: str = opt(help="Run directory: config.json, metrics.csv, checkpoints/, plots/, tb/.", cli_type=Path)
    val_query: str | None = opt(None, "Validation query manifest (mAP/CMC every epoch).", cli_type=Path)
    val_gallery: str | None = opt(None, "Validation gallery manifest.", cli_type=Path)
    loss: str = opt(
        "imae",
        " | ".join(loss.title for loss in registered_losses())
        + " (docs/losses.md). Default imae: on the noise benchmark's frame-level grid (100 identities x 8 clips, "
        "pretrained, 3 seeds, T 16 chosen on validation) IMAE was 11.3 mAP points ahead of CCE at 40% wrong labels "
        "and 5.0 at 40% outlier frames, not behind on clean data; GCE was level at wrong labels and 1.3 ahead at "
        "outlier frames; one --clean-rounds round added 2.6 more to IMAE at wrong labels (docs/noise-benchmark.md).",
    )
    model: str = opt(
        "r2plus1d_18",
        "Backbone: r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s, swin3d_t, resnet18-tap, resnet50-tap, tiny3d, "
        "tiny2d-tap (frame models: -tap).",
    )
    embedding_dim: int = opt(256, "Embedding size D.")
    scale: float = opt(16.0, "Cosine classifier scale s (logits bounded in [-s, s]).")
    weights: str | None = opt(
        None,
        "Local backbone weights: a state dict, or a vidret checkpoint (its backbone; same --model). Nothing is "
        "downloaded.",
        cli_type=Path,
    )
    frames: int = opt(16, "Frames per clip.")
    size: int = opt(112, "Crop size in pixels.")
    loss_level: str = opt(
        "clip",
        "clip | frame. frame (frame models, -tap): the classifier and the loss apply to every frame's embedding "
        "with its clip's label, so the loss weights each frame (the IMAE paper's video protocol); a clip's "
        "embedding stays the mean of its frames'. docs/losses.md, Frame-level training. The default stays clip: "
        "the noise benchmark measured frame-level training only, not the two side by side.",
    )
    sampling: str = opt("segments", "segments | uniform | random.")
    stride: int = opt(2, "Frame stride of --sampling random.")
    epochs: int = opt(30, "Training epochs (the learning-rate schedule spans them all).")
    batch_size: int = opt(16, "Global batch size (split across DDP processes); --sampler pk: P x K instead.")
    sampler: str = opt("random", "random (shuffled clips) | pk (P identities x K clips per batch, re-ID style).")
    pk_identities: int = opt(8, "--sampler pk: identities per batch (P).")
    pk_clips: int = opt(4, "--sampler pk: clips per identity in a batch (K).")
    optimizer: str = opt("adamw", "adamw | sgd.")
    lr: float = opt(1e-3, "Peak learning rate (linear warm-up, then cosine decay).")
    weight_decay: float = opt(1e-2, "Weight decay of the weight matrices and kernels (not of biases or norms).")
    momentum: float = opt(0.9, "Nesterov momentum of --optimizer sgd.")
    warmup_epochs: float = opt(1.0, "Linear learning-rate warm-up, in epochs (fractions allowed).")
    grad_clip: float = opt(5.0, "Gradient norm clipping (0: off).")
    workers: int = opt(default_workers, "DataLoader worker processes.")
    device: str = opt("auto", "auto | cpu | cuda (auto: the GPU when present).")
    precision: str = opt("auto", "auto | fp32 | bf16 | fp16 (auto: bf16/fp16 on GPUs, fp32 on CPU).")
    compile: bool = opt(False, "torch.compile the model.")
    resume: bool = opt(False, "Continue the run in --out from checkpoints/last.pt.")
    seed: int = opt(0, "Random seed: weights, data order and augmentation (runs with one seed repeat exactly).")
    on_bad_video: str = opt("fail", "fail | skip: what to do with a video that does not decode.")
    cache: bool = opt(False, "Keep decoded videos in memory (small datasets).")
    stop_after_epoch: int | None = opt(None, "Stop after this epoch (time-boxed jobs); continue later with --resume.")
    clean_rounds: int = opt(
        0,
        "Clean, then retrain, N times: audit the training manifest with the final model, drop every clip whose "
        "label is not its top-1 prediction, train again from the same --weights into OUT/clean1/ (clean2/ ...); "
        "OUT/clean_report.md says what was dropped. On the noise benchmark one round added mAP to IMAE at 40% "
        "wrong labels and none to CCE, and cost mAP at outlier frames (it drops rightly labelled clips there): "
        "use it with a robust loss against wrong labels (docs/training.md).",
    )
    log_interval: int = opt(
        20,
        "Steps between reading the running loss and accuracy back from the device (the "
        "progress bar) and checking that the loss is finite.",
    )
    quiet: bool = opt(False, "No console output (library callers).", cli=False)

    def __post_init__(self) -> None:
        if self.imae_t is None:  # measured per regime: docs/losses.md, Choosing T
            finetune = IMAE_T_FRAME_FINETUNE if self.loss_level == "frame" else IMAE_T_FINETUNE
            self.imae_t = finetune if self.weights else IMAE_T_SCRATCH

    def loss_kwargs(self) -> dict[str, Any]:
        """The arguments of ``--loss``'s constructor: its options' fields that are set (training/loss_registry.py)."""
        return registry_loss_kwargs(self.loss, vars(self))

    def validate(self) -> None:
        from training.loss_registry import build_loss, list_losses

        if self.loss not in list_losses():
            raise UserError(f"--loss must be one of {', '.join(list_losses())}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for flag, value, ok in [
            ("--epochs", self.epochs, self.epochs >= 1),
            ("--batch-size", self.batch_size, self.batch_size >= 2),
            ("--lr", self.lr, self.lr > 0),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0),
            ("--workers", self.workers, self.workers >= 0),
            ("--embedding-dim", self.embedding_dim, self.embedding_dim >= 2),
            ("--warmup-epochs", self.warmup_epochs, self.warmup_epochs >= 0),
            ("--grad-clip", self.grad_clip, self.grad_clip >= 0),
            ("--log-interval", self.log_interval, self.log_interval >= 1),
            ("--clean-rounds", self.clean_rounds, self.clean_rounds >= 0),
        ]:
            if not ok:
                raise UserError(f"{flag}: invalid value {value}")
        from training.frame_level import check_loss_level
        from training.sampler import SAMPLERS

        check_loss_level(self.loss_level, self.model)
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "pk" and (self.pk_identities < 2 or self.pk_clips < 1):
            raise UserError(
                f"--pk-identities must be >= 2 and --pk-clips >= 1, got {self.pk_identities}, {self.pk_clips}"
            )
        if (self.val_query is None) != (self.val_gallery is None):
            raise UserError("--val-query and --val-gallery go together")
        try:
            build_loss(self.loss, **self.loss_kwargs())
        except ValueError as exc:
            raise UserError(f"--loss {self.loss}: {exc}") from None


TrainConfig = make_dataclass(
    "TrainConfig",
    [
        (o.field, o.type | None, field(default=o.default, metadata={"help": o.help, "envvar": o.env}))
        for o in loss_options()
    ],
    bases=(_TrainOptions,),
)
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = "Every ``vidret train`` option: the run's (``_TrainOptions``) and every registered loss's."


def cli_fields() -> list:
    """The ``TrainConfig`` fields that are ``vidret train`` flags, in the dataclass's order."""
    return [f for f in fields(TrainConfig) if f.metadata.get("cli", True)]

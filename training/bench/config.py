"""The noise benchmark's configuration: ``NoiseBenchConfig`` (its fields marked ``flag(...)`` are the
``vidret bench noise`` flags, built by training/cli.py), the default, headline and quick grids, and the noise
settings' syntax (docs/noise-benchmark.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from indexing.errors import UserError
from training.bench.frames import FRAME_NOISE
from training.data.noise import ALL_NOISE_TYPES

BENCH_NOISE_TYPES = (*ALL_NOISE_TYPES, FRAME_NOISE)
DEFAULT_NOISE = ["symmetric:0,0.2,0.4,0.6", "pairflip:0.2,0.4", "identity:0.4", "frames:0.2,0.4"]
HEADLINE_NOISE = ["symmetric:0,0.4", "frames:0.4"]
DEFAULT_LOSSES = ["cce", "ls", "mae", "gce", "sce", "nce_rce", "imae"]
HEADLINE_LOSSES = ["cce", "ls", "gce", "imae"]


def parse_noise(specs: list[str]) -> list[tuple[str, float]]:
    """``["symmetric:0,0.4", "pairflip:0.2"]`` -> ``[("clean", 0.0), ("symmetric", 0.4), ("pairflip", 0.2)]``.

    A rate of 0 is the clean setting whatever the type, listed once."""
    out: list[tuple[str, float]] = []
    for spec in specs:
        kind, sep, rates = spec.partition(":")
        if not sep or kind not in BENCH_NOISE_TYPES or not rates:
            raise UserError(
                f"--noise {spec!r}: expected TYPE:RATE[,RATE...] with TYPE one of {', '.join(BENCH_NOISE_TYPES)}"
            )
        for text in rates.split(","):
            try:
                rate = float(text)
            except ValueError:
                raise UserError(f"--noise {spec!r}: {text!r} is not a number") from None
            if not 0 <= rate < 1:
                raise UserError(f"--noise {spec!r}: rates must be in [0, 1), got {rate:g}")
            setting = ("clean", 0.0) if rate == 0 else (kind, rate)
            if setting not in out:
                out.append(setting)
    if not out:
        raise UserError("--noise needs at least one TYPE:RATE")
    return out


def setting_name(kind: str, rate: float) -> str:
    return "clean" if kind == "clean" else f"{kind}{rate:g}"


def flag(help: str) -> dict[str, str]:
    """A ``NoiseBenchConfig`` field that is a ``vidret bench noise`` flag, with its help (training/cli.py builds the
    flag; its help gains the field's defaults, full and ``--quick``)."""
    return {"help": help}


@dataclass
class NoiseBenchConfig:
    """The default is the full grid (every loss and setting, 5 seeds, 56-pixel frames: a GPU's work); ``headline()``
    is the grid that fits 90 minutes of this project's 2-core CPU machine, on the same data."""

    out_dir: str
    losses: list[str] = field(
        default_factory=lambda: list(DEFAULT_LOSSES), metadata=flag("Losses to compare (--headline: cce ls gce imae).")
    )
    noise: list[str] = field(
        default_factory=lambda: list(DEFAULT_NOISE),
        metadata=flag(
            "Noise settings TYPE:RATE[,RATE...], TYPE symmetric | pairflip | identity | frames (outlier frames "
            "inside rightly labelled clips); several after one flag (--noise symmetric:0.6 frames:0.4) or one per "
            "flag (a rate of 0 is the clean setting); --headline: symmetric:0,0.4 frames:0.4."
        ),
    )
    seeds: int = field(default=5, metadata=flag("Seeds per (loss, noise setting) (--headline: 3)."))
    # data: three disjoint groups of identities, 4 cameras x 2 clips = 8 clips per identity
    pretrain_identities: int = 200
    train_identities: int = field(default=100, metadata=flag("Fine-tuning identities."))
    test_identities: int = 100
    cameras: int = 4
    clips_per_camera: int = 2
    video_frames: int = 10  # frames:0.4 makes exactly 4 of them outliers
    video_size: int = 64
    data_seed: int = 0
    # pretraining (clean labels, once per benchmark)
    pretrain_epochs: int = field(default=20, metadata=flag("Pretraining epochs, run once."))
    pretrain_batch_size: int = 32
    pretrain_lr: float = 2e-3
    # fine-tuning (every cell): frame-level training of a frame model, the paper's video protocol
    model: str = "tiny2d-tap"
    loss_level: str = field(default="frame", metadata=flag("clip | frame (frame: the paper's video protocol)."))
    frames: int = 4
    size: int = 56
    epochs: int = field(default=40, metadata=flag("Fine-tuning epochs per cell."))
    batch_size: int = 16
    lr: float = field(default=1e-3, metadata=flag("Fine-tuning learning rate."))
    optimizer: str = "adamw"
    sampler: str = "random"
    workers: int = 0
    jobs: int | None = field(
        default=None,
        metadata=flag(
            "Cells trained at once, each in its own process with its share of the CPU threads. Default: 1 on a "
            "GPU, else one per CPU core (at most 4)."
        ),
    )
    report_only: bool = field(
        default=False,
        metadata=flag(
            "Train nothing: write results.csv, results.md and plots/ from the cells of this grid that have "
            "finished in OUT_DIR (a grid run in pieces), and list the rest."
        ),
    )
    imae_t: float | None = field(
        default=None, metadata=flag("IMAE T; default: chosen on a validation split of the fine-tuning identities.")
    )
    t_candidates: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])
    select_rate: float = 0.4
    val_fraction: float = 0.2
    # the frames settings' own schedule (outlier frames take longer to memorise than wrong labels); None: the same
    # as every other cell (--epochs, --lr, TrainConfig's weight decay)
    frames_epochs: int | None = field(
        default=None, metadata=flag("Fine-tuning epochs of the frames settings' cells (default: --epochs).")
    )
    frames_lr: float | None = field(
        default=None, metadata=flag("Learning rate of the frames settings' cells (default: --lr).")
    )
    frames_weight_decay: float | None = field(
        default=None,
        metadata=flag("Weight decay of the frames settings' cells (default: vidret train's, 0.01, as every cell)."),
    )
    headline: bool = False
    clean_rounds: int = field(  # training/bench/clean.py
        default=0,
        metadata=flag(
            "1: clean, then retrain: every cell once more on the clips that vidret audit of its final model keeps "
            "(rule: drop a clip whose label is not the model's top-1 prediction); reported as <loss>+clean."
        ),
    )
    clean_losses: list[str] = field(
        default_factory=list,
        metadata=flag("--clean-rounds 1 for these losses' cells only (none given: every loss's)."),
    )

    @classmethod
    def headline_grid(cls, out_dir: str) -> NoiseBenchConfig:
        """CCE, label smoothing, GCE and IMAE x {clean, frames:0.4, symmetric:0.4} x 3 seeds, 24-pixel frames."""
        return cls(
            out_dir=out_dir, losses=list(HEADLINE_LOSSES), noise=list(HEADLINE_NOISE), seeds=3, size=24, headline=True
        )

    @classmethod
    def quick(cls, out_dir: str) -> NoiseBenchConfig:
        """Tiny: checks the plumbing (every stage, identity switch and outlier frames included) in a minute or two."""
        return cls(
            out_dir=out_dir,
            losses=["cce", "imae"],
            noise=["symmetric:0,0.4", "identity:0.4", "frames:0.4"],
            seeds=1,
            pretrain_identities=8,
            train_identities=6,
            test_identities=6,
            cameras=2,
            clips_per_camera=2,
            video_frames=10,
            video_size=32,
            pretrain_epochs=2,
            pretrain_batch_size=8,
            frames=4,
            size=24,
            epochs=2,
            batch_size=8,
            t_candidates=[2.0, 4.0],
        )

    def settings(self) -> list[tuple[str, float]]:
        return parse_noise(self.noise)

    def validate(self) -> None:
        from training.losses import list_losses

        bad = [loss for loss in self.losses if loss not in list_losses()]
        if bad:
            raise UserError(f"--losses: unknown loss {bad[0]!r}; choose from {', '.join(list_losses())}")
        if not self.losses:
            raise UserError("--losses needs at least one value")
        self.settings()
        for flag, value, ok in [
            ("--seeds", self.seeds, self.seeds >= 1),
            ("--epochs", self.epochs, self.epochs >= 1),
            ("--pretrain-epochs", self.pretrain_epochs, self.pretrain_epochs >= 1),
            ("--train-identities", self.train_identities, self.train_identities >= 4),
            ("--pretrain-identities", self.pretrain_identities, self.pretrain_identities >= 4),
            ("--test-identities", self.test_identities, self.test_identities >= 2),
        ]:
            if not ok:
                raise UserError(f"{flag}: invalid value {value}")
        from training.frame_level import check_loss_level

        check_loss_level(self.loss_level, self.model)
        if self.clean_rounds not in (0, 1):
            raise UserError(f"--clean-rounds: 0 or 1, got {self.clean_rounds}")
        stray = [loss for loss in self.clean_losses if loss not in self.losses]
        if stray:
            raise UserError(f"--clean-losses: {stray[0]!r} is not one of --losses ({', '.join(self.losses)})")
        for flag_name, value in [("--frames-epochs", self.frames_epochs), ("--frames-lr", self.frames_lr)]:
            if value is not None and not value > 0:
                raise UserError(f"{flag_name}: invalid value {value}")
        if self.frames_weight_decay is not None and not self.frames_weight_decay >= 0:
            raise UserError(f"--frames-weight-decay: invalid value {self.frames_weight_decay}")
        if self.jobs is not None and self.jobs < 1:
            raise UserError(f"--jobs: invalid value {self.jobs} (>= 1)")
        if self.imae_t is not None and not 0 <= self.imae_t < float("inf"):
            raise UserError(f"--imae-t must be a finite number >= 0, got {self.imae_t}")

    def frames_schedule(self) -> dict:
        """The training options in which a frames setting's cells differ from the others' (empty: none)."""
        out: dict = {}
        if self.frames_epochs is not None:
            out.update(epochs=self.frames_epochs, warmup_epochs=min(1.0, self.frames_epochs / 4))
        if self.frames_lr is not None:
            out["lr"] = self.frames_lr
        if self.frames_weight_decay is not None:
            out["weight_decay"] = self.frames_weight_decay
        return out

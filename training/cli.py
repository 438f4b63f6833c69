"""``vidret data|train|embed|plot|bench|audit`` sub-commands."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from indexing.errors import UserError

plot_app = typer.Typer(help="Figures.", no_args_is_help=True)


def train_cmd(
    train: Path = typer.Option(..., help="Training manifest (CSV/JSONL with path, label; labels may be noisy)."),
    out: Path = typer.Option(..., help="Run directory: config.json, metrics.csv, checkpoints/, plots/, tb/."),
    val_query: Path | None = typer.Option(None, help="Validation query manifest (mAP/CMC every epoch)."),
    val_gallery: Path | None = typer.Option(None, help="Validation gallery manifest."),
    loss: str = typer.Option("imae", help="cce | mae | gce | sce | imae."),
    imae_t: float = typer.Option(8.0, help="IMAE temperature T: weight exp(T p_y (1 - p_y)); choose it on a "
                                       "validation split (2-4 did best from scratch; README, Does IMAE help?)."),
    imae_normalize: str = typer.Option("weight", help="IMAE batch reduction: weight (divide by total weight) | mean."),
    gce_q: float = typer.Option(0.7, help="GCE q."),
    sce_alpha: float = typer.Option(0.1, help="SCE alpha (CE term)."),
    sce_beta: float = typer.Option(1.0, help="SCE beta (reverse CE term)."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the cce loss."),
    model: str = typer.Option("r2plus1d_18", help="Backbone: r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s, "
                                                  "swin3d_t, resnet18-tap, resnet50-tap, tiny3d."),
    embedding_dim: int = typer.Option(256, help="Embedding size D."),
    scale: float = typer.Option(16.0, help="Cosine classifier scale s (logits bounded in [-s, s])."),
    weights: Path | None = typer.Option(None, help="Local backbone weights file (state dict); nothing is downloaded."),
    frames: int = typer.Option(16, help="Frames per clip."),
    size: int = typer.Option(112, help="Crop size in pixels."),
    sampling: str = typer.Option("segments", help="segments | uniform | random."),
    stride: int = typer.Option(2, help="Frame stride of --sampling random."),
    epochs: int = typer.Option(30),
    batch_size: int = typer.Option(16, help="Global batch size (split across DDP processes)."),
    optimizer: str = typer.Option("adamw", help="adamw | sgd."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (linear warm-up, then cosine decay)."),
    weight_decay: float = typer.Option(1e-2),
    warmup_epochs: float = typer.Option(1.0),
    grad_clip: float = typer.Option(5.0, help="Gradient norm clipping (0: off)."),
    workers: int = typer.Option(min(4, os.cpu_count() or 1), help="DataLoader worker processes."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (auto: the GPU when present)."),
    precision: str = typer.Option("auto", help="auto | fp32 | bf16 | fp16 (auto: bf16/fp16 on GPUs, fp32 on CPU)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt."),
    seed: int = typer.Option(0),
    on_bad_video: str = typer.Option("fail", help="fail | skip: what to do with a video that does not decode."),
    cache: bool = typer.Option(False, "--cache", help="Keep decoded videos in memory (small datasets)."),
    stop_after_epoch: int | None = typer.Option(None, help="Stop after this epoch (time-boxed jobs); continue "
                                                           "later with --resume."),
) -> None:
    """Train a video embedding model on noisy labels (IMAE by default). DDP: torchrun --no-python vidret train ..."""
    from training.trainer import TrainConfig, fit

    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items() if k not in ("fit", "TrainConfig")}
    res = fit(TrainConfig(**opts))
    if res.history:
        last = res.history[-1]
        typer.echo(f"done: {res.run_dir} (last epoch: loss {last['loss']:.4f}, train acc {last['train_acc']:.3f})")


def embed_cmd(
    checkpoint: Path = typer.Option(..., help="A vidret checkpoint (best.pt / last.pt)."),
    manifest: Path = typer.Option(..., help="Videos to embed."),
    out: Path = typer.Option(..., help="Embeddings .npz to write."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(2),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    on_bad_video: str = typer.Option("fail", help="fail | skip."),
) -> None:
    """Embed a manifest's videos with a checkpoint (its eval transform) into an .npz."""
    from training.embed import embed_manifest

    emb = embed_manifest(checkpoint, manifest, out, batch_size=batch_size, workers=workers, device=device,
                         on_bad_video=on_bad_video)
    typer.echo(f"wrote {len(emb)} embeddings of dimension {emb.dim} to {out}")


@plot_app.command("weights")
def plot_weights_cmd(
    out: Path = typer.Argument(..., help="PNG file to write."),
    t: list[float] = typer.Option([1.0, 2.0, 4.0, 8.0, 16.0], "--t", help="IMAE temperatures (repeat the flag)."),
) -> None:
    """Sample weight vs p_y for CCE, MAE and IMAE at several T (the IMAE paper's Figure 1)."""
    if any(v < 0 for v in t):
        raise UserError(f"--t values must be >= 0, got {t}")
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"{out}: the output must end in .png, .pdf or .svg")
    from training.plots import plot_weights

    path = plot_weights(out, list(t))
    typer.echo(f"wrote {path}")


bench_app = typer.Typer(help="Benchmarks of the method.", no_args_is_help=True)


@bench_app.command("noise")
def bench_noise_cmd(
    out_dir: Path = typer.Argument(..., help="Folder for data/, runs/, results.csv, results.md, plots/."),
    losses: list[str] = typer.Option(["cce", "mae", "gce", "imae"], "--losses", help="Losses to compare."),
    rates: list[float] = typer.Option([0.0, 0.2, 0.4, 0.6], "--rates", help="Training label-noise rates."),
    noise_type: str = typer.Option("symmetric", help="symmetric | pairflip."),
    seeds: int = typer.Option(2, help="Seeds per (loss, rate)."),
    epochs: int | None = typer.Option(None, help="Epochs per run (default 20; --quick 2)."),
    identities: int | None = typer.Option(None, help="Identities in the synthetic data (default 200)."),
    imae_t: float | None = typer.Option(None, help="IMAE T; default: chosen on a validation split of the training "
                                                   "identities."),
    quick: bool = typer.Option(False, "--quick", help="A tiny grid that checks the plumbing in a minute or two."),
) -> None:
    """Train every loss at every noise rate; mAP on the clean test split; results.csv/.md and plots."""
    from dataclasses import replace

    from training.bench import NoiseBenchConfig, run_noise_bench

    cfg = NoiseBenchConfig.quick(str(out_dir)) if quick else NoiseBenchConfig(out_dir=str(out_dir))
    given = {"losses": list(losses), "rates": list(rates)} if not quick else {}
    cfg = replace(cfg, noise_type=noise_type, imae_t=imae_t, **given,
                  **({"seeds": seeds} if not quick else {}),
                  **({"epochs": epochs} if epochs is not None else {}),
                  **({"identities": identities} if identities is not None else {}))
    run_noise_bench(cfg, log=lambda msg: typer.echo(msg, err=True))
    typer.echo((out_dir / "results.md").read_text())


def audit_cmd(
    checkpoint: Path = typer.Option(..., help="Checkpoint trained on the manifest."),
    manifest: Path = typer.Option(..., help="Training manifest (with the labels to audit)."),
    out: Path = typer.Option(..., help="CSV to write, most suspect first."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(2),
    device: str = typer.Option("auto"),
) -> None:
    """Rank training videos by how likely their label is wrong (id,label,p_label,predicted,p_predicted,suspicion)."""
    from training.audit import audit

    res = audit(checkpoint, manifest, out, batch_size=batch_size, workers=workers, device=device)
    typer.echo(f"wrote {len(res.rows)} rows to {out}, most suspect first")
    if res.auroc is not None:
        typer.echo(f"mislabelled rows (label != clean_label): {res.num_mislabelled} of {len(res.rows)}; "
                   f"AUROC of the suspicion score {res.auroc:.3f}")
        for k, v in res.precision_at.items():
            typer.echo(f"precision@{k}: {v:.3f}")


def register(app: typer.Typer) -> None:
    """Mount the training sub-commands on the root app."""
    from training.data_cli import data_app

    app.add_typer(data_app, name="data")
    app.command("train")(train_cmd)
    app.command("embed")(embed_cmd)
    app.add_typer(plot_app, name="plot")
    app.add_typer(bench_app, name="bench")
    app.command("audit")(audit_cmd)

"""``vidret data|train|embed|plot|bench|audit`` sub-commands."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import typer

from indexing.errors import UserError

plot_app = typer.Typer(help="Figures.", no_args_is_help=True)


def train_cmd(ctx: typer.Context, **options: Any) -> None:
    """Train a video embedding model on noisy labels (IMAE by default). DDP: torchrun --no-python vidret train ...
    --config recipe.yaml|json takes the options from a file (docs/training.md); flags given here override it."""
    from training.cleaning import fit_clean_rounds
    from training.recipe import merged_options
    from training.trainer import TrainConfig, fit

    config = options.pop("config")
    sources = {k: ctx.get_parameter_source(k) for k in options}  # flags given: COMMANDLINE (or ENVIRONMENT)
    given = {k for k, src in sources.items() if src is not None and src.name != "DEFAULT"}
    options = merged_options(config, options, given)
    cfg = TrainConfig(**{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})
    if cfg.clean_rounds:
        res, report = fit_clean_rounds(cfg)
        typer.echo(f"clean, then retrain: {report}")
    else:
        res = fit(cfg)
    if res.history:
        last = res.history[-1]
        typer.echo(f"done: {res.run_dir} (last epoch: loss {last['loss']:.4f}, train acc {last['train_acc']:.3f})")


def train_options() -> list[inspect.Parameter]:
    """One typer option per ``TrainConfig`` flag field: its type, default and help text come from the field.

    Bools are plain switches (``--compile``, no ``--no-compile``); a field without a default is a required flag;
    ``cli_type`` (``Path``) is the type the flag parses, handed to ``TrainConfig`` as a ``str``."""
    from training.config import TrainConfig, cli_fields

    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in cli_fields():
        annotation = hints[f.name]
        if "cli_type" in f.metadata:
            optional = type(None) in typing.get_args(annotation)
            annotation = f.metadata["cli_type"] | None if optional else f.metadata["cli_type"]
        if f.default is not MISSING:
            default = f.default
        else:  # a required field may come from --config instead: checked once merged (training/recipe.py)
            default = f.default_factory() if f.default_factory is not MISSING else None
        decls = [f"--{f.name.replace('_', '-')}"] if annotation is bool else []
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=typer.Option(default, *decls, help=f.metadata["help"] or None, envvar=f.metadata.get("envvar")),
            )
        )
    config = typer.Option(None, "--config", help="A recipe (YAML or JSON) of these options; flags given override it.")
    return [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None, default=config),
        *params,
    ]


train_cmd.__signature__ = inspect.Signature(train_options(), return_annotation=None)  # what typer reads
train_cmd.__annotations__ = {p.name: p.annotation for p in train_cmd.__signature__.parameters.values()}


def embed_cmd(
    checkpoint: Path = typer.Option(..., help="A vidret checkpoint (best.pt / last.pt)."),
    manifest: Path = typer.Option(..., help="Videos to embed."),
    out: Path = typer.Option(..., help="Embeddings .npz to write (with --shards: a folder of shards)."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(2),
    device: str = typer.Option("auto", help="auto | cpu | cuda (auto: the GPU of this process's LOCAL_RANK)."),
    on_bad_video: str = typer.Option("fail", help="fail | skip."),
    shards: bool = typer.Option(
        False, "--shards", help="Write OUT as a folder of .npz shards and a shards.json that vidret index build reads."
    ),
    shard_size: int = typer.Option(1024, help="Manifest rows per shard (torchrun or --shards)."),
) -> None:
    """Embed a manifest's videos with a checkpoint (its eval transform) into an .npz. Under torchrun
    (torchrun --nproc-per-node N --no-python vidret embed ...) the manifest is split across the processes in shards,
    and a rerun resumes from the shards already written."""
    import os

    from training.embed import embed_manifest, embed_manifest_sharded

    if shards or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        res = embed_manifest_sharded(
            checkpoint, manifest, out, batch_size, workers, device, on_bad_video, shards=shards, shard_size=shard_size
        )
        if res is not None:  # rank 0
            where = f"{res.shards} shards in {res.out} (shards.json)" if shards else f"{res.out}"
            typer.echo(f"wrote {res.count} embeddings of dimension {res.dim} to {where}; {res.reused} shards reused")
        return
    emb = embed_manifest(
        checkpoint, manifest, out, batch_size=batch_size, workers=workers, device=device, on_bad_video=on_bad_video
    )
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


def bench_noise_cmd(out_dir: Path, quick: bool = False, headline: bool = False, **options: Any) -> None:
    """Pretrain once, then fine-tune every loss at every noise setting; mAP on the clean test split; reports."""
    from dataclasses import replace

    from training.bench.grid import NoiseBenchConfig, run_noise_bench

    if quick and headline:
        raise UserError("--quick and --headline are two different grids: pass one of them")
    if quick:
        cfg = NoiseBenchConfig.quick(str(out_dir))
    else:
        cfg = NoiseBenchConfig.headline_grid(str(out_dir)) if headline else NoiseBenchConfig(out_dir=str(out_dir))
    given = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in options.items() if v not in (None, [], ())}
    cfg = replace(cfg, **given)
    run_noise_bench(cfg, log=lambda msg: typer.echo(msg, err=True))
    typer.echo((out_dir / "results.md").read_text())


def bench_options() -> list[inspect.Parameter]:
    """``vidret bench noise``'s arguments: OUT_DIR, one option per ``NoiseBenchConfig`` field marked ``flag(...)``
    (its help, then the field's default and its ``--quick`` value), and ``--quick``. A flag that is not given keeps
    the value of the grid it starts from, the full one or ``--quick``'s; a bool field is a switch."""
    from dataclasses import fields

    from training.bench.grid import NoiseBenchConfig

    hints = typing.get_type_hints(NoiseBenchConfig)
    full, small = NoiseBenchConfig(out_dir=""), NoiseBenchConfig.quick("")
    params = [
        inspect.Parameter(
            "out_dir",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Path,
            default=typer.Argument(..., help="Folder for data/, pretrain/, runs/, results.csv, results.md, plots/."),
        )
    ]
    for f in fields(NoiseBenchConfig):
        if "help" not in f.metadata:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if typing.get_origin(kind) is not list and len(args) == 1 else kind
        decls = [f"--{f.name.replace('_', '-')}"]
        if kind is bool:
            help_text = f.metadata["help"]
        else:
            shown = [_shown(getattr(cfg, f.name)) for cfg in (full, small)]
            help_text = f"{f.metadata['help']} (grid default: {shown[0]}; --quick: {shown[1]})"
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=kind if kind is bool or typing.get_origin(kind) is list else kind | None,
                default=typer.Option(False if kind is bool else None, *decls, help=help_text, show_default=False),
            )
        )
    quick = typer.Option(False, "--quick", help="A tiny grid: checks every stage.")
    params.append(inspect.Parameter("quick", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=quick))
    headline = typer.Option(
        False,
        "--headline",
        help="The grid sized for 90 minutes of a 2-core CPU: cce ls gce imae x {clean, symmetric:0.4, frames:0.4} "
        "x 3 seeds at 24-pixel frames, on the default grid's data (docs/noise-benchmark.md).",
    )
    params.append(inspect.Parameter("headline", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=headline))
    return params


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else "auto" if value is None else str(value)


bench_noise_cmd.__signature__ = inspect.Signature(bench_options(), return_annotation=None)  # what typer reads
bench_noise_cmd.__annotations__ = {p.name: p.annotation for p in bench_noise_cmd.__signature__.parameters.values()}
bench_app.command("noise")(bench_noise_cmd)


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
        typer.echo(
            f"mislabelled rows (label != clean_label): {res.num_mislabelled} of {len(res.rows)}; "
            f"AUROC of the suspicion score {res.auroc:.3f}"
        )
        for k, v in res.precision_at.items():
            typer.echo(f"precision@{k}: {v:.3f}")


def register(app: typer.Typer) -> None:
    """Mount the training sub-commands on the root app."""
    from training.data.cli import data_app

    app.add_typer(data_app, name="data")
    app.command("train")(train_cmd)
    app.command("embed")(embed_cmd)
    app.add_typer(plot_app, name="plot")
    app.add_typer(bench_app, name="bench")
    app.command("audit")(audit_cmd)
    from training.export_cli import export_cmd

    app.command("export")(export_cmd)

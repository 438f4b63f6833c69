"""``vidret data synth|manifest|import-mars|noise|check``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from indexing.errors import UserError
from training.ui import progress_bar

data_app = typer.Typer(help="Datasets: synthesise, import, add label noise, check.", no_args_is_help=True)


@data_app.command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write videos/ and train.csv, query.csv, gallery.csv into."),
    identities: int = typer.Option(200, help="Identities in all: half train, half query/gallery (disjoint)."),
    cameras: int = typer.Option(4, help="Cameras (each its own background, lighting, scale and viewpoint)."),
    clips_per_camera: int = typer.Option(2, help="Clips of each identity per camera."),
    frames: int = typer.Option(16, help="Frames per video."),
    size: int = typer.Option(64, help="Frame width and height in pixels (even)."),
    noise: float = typer.Option(0.0, help="Share of training labels to corrupt."),
    noise_type: str = typer.Option("symmetric", help="symmetric | pairflip."),
    frame_noise: float = typer.Option(
        0.0,
        help="Share of each training clip's frames that show background only or another identity (outlier "
        "frames, chosen per clip; listed in train.csv's outlier_frames). Query and gallery clips stay clean.",
    ),
    seed: int = typer.Option(0, help="Seed: the same seed writes the same dataset."),
    occluders: bool = typer.Option(True, help="Occasional occluders in front of the identity."),
    workers: int = typer.Option(2, help="Encoding processes."),
) -> None:
    """Write a synthetic open-set re-ID video dataset with noisy training labels (real H.264 mp4 files)."""
    from training.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        identities=identities,
        cameras=cameras,
        clips_per_camera=clips_per_camera,
        frames=frames,
        size=size,
        noise=noise,
        noise_type=noise_type,
        frame_noise=frame_noise,
        seed=seed,
        occluders=occluders,
    )
    cfg.validate()
    with progress_bar("encoding videos") as bar:
        task = bar.add_task("synth", total=None)
        summary = generate(out_dir, cfg, workers=workers, progress=lambda d, n: bar.update(task, completed=d, total=n))
    typer.echo(
        f"wrote {summary['train_videos']} train videos ({summary['train_identities']} identities, "
        f"label noise {summary['realised_noise_rate']:.3f}, {summary['outlier_frames_per_clip']} outlier frames "
        f"per clip), {summary['query_videos']} query and "
        f"{summary['gallery_videos']} gallery videos ({summary['test_identities']} identities) to {out_dir}"
    )


@data_app.command("manifest")
def manifest_cmd(root: Path = typer.Argument(..., help="ROOT/<label>/<video file or frame folder>")) -> None:
    """Print a CSV manifest of a folder-per-label tree on stdout (paths relative to ROOT)."""
    import csv

    from training.data.manifest import escape_cell, scan_folder

    rows = scan_folder(root)
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["path", "id", "label"])
    for r in rows:  # formula-escaped as every manifest vidret writes (docs/formats.md)
        w.writerow([escape_cell(v) for v in (r.raw_path, r.id, r.label)])


@data_app.command("import-mars")
def import_mars_cmd(
    root: Path = typer.Argument(..., help="MARS root: bbox_train/, bbox_test/, info/"),
    out_dir: Path = typer.Argument(..., help="Where to write train.csv, query.csv, gallery.csv and tracklets/"),
) -> None:
    """Convert the MARS layout to manifests, one row per tracklet (a .frames list of its images)."""
    from training.data.mars import import_mars

    counts = import_mars(root, out_dir)
    typer.echo(", ".join(f"{k}: {v}" for k, v in counts.items()) + f" -> {out_dir}")


@data_app.command("noise")
def noise_cmd(
    inp: Path = typer.Argument(..., metavar="IN", help="Manifest with a label column."),
    out: Path = typer.Argument(..., help="Manifest to write (label = noisy, clean_label = the original)."),
    rate: float = typer.Option(..., help="Share of labels to change, in [0, 1]."),
    type_: str = typer.Option("symmetric", "--type", help="symmetric | pairflip."),
    seed: int = typer.Option(0, help="Seed of the choice of samples and of their new labels."),
) -> None:
    """Corrupt a manifest's labels; prints the realised noise rate."""
    from dataclasses import replace

    from training.data.manifest import class_map, read_manifest, write_manifest
    from training.data.noise import inject_noise

    rows = read_manifest(inp, require_label=True)
    cmap = class_map(r.label for r in rows)
    names = sorted(cmap, key=cmap.get)
    try:
        res = inject_noise([cmap[r.label] for r in rows], len(cmap), rate, type_, seed)
    except ValueError as exc:
        raise UserError(f"{exc} (--rate / --type)") from None
    noisy = [
        replace(r, label=names[y], clean_label=r.clean_label or r.label) for r, y in zip(rows, res.labels, strict=True)
    ]
    write_manifest(out, noisy)
    typer.echo(f"realised noise rate {res.rate:.4f} ({int(res.flipped.sum())} of {len(rows)} labels changed)")


@data_app.command("check")
def check_cmd(manifest: Path = typer.Argument(..., help="Manifest to check.")) -> None:
    """Decode every row; exit 1 with the list of bad rows if any."""
    from training.data.manifest import read_manifest
    from training.data.video import ClipSpec, VideoDecodeError, read_clip

    rows = read_manifest(manifest)
    spec = ClipSpec(frames=8, size=16, sampling="uniform")  # frames across the whole video, the last included
    bad: list[str] = []
    with progress_bar("decoding") as bar:
        for r in bar.track(rows, description="check"):
            try:
                read_clip(r.path, spec, train=False, decode_short_side=16)
            except VideoDecodeError as exc:
                bad.append(f"{manifest}, row {r.row} ({r.raw_path}): {exc.reason}")
    if bad:
        for line in bad:
            typer.echo(line, err=True)
        raise UserError(f"{len(bad)} of {len(rows)} rows cannot be decoded")
    typer.echo(f"all {len(rows)} rows decode")


from training.data.import_cli import register as _register_importers  # noqa: E402

_register_importers(data_app)

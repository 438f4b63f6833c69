"""``vidret data import-ilidsvid|import-prid2011|import-duke-video|import-lsvid`` (training/data/video_reid.py)."""

from __future__ import annotations

from pathlib import Path

import typer

OUT_HELP = "Where to write train.csv, query.csv, gallery.csv, tracklets/ (and split.json)."
SEED_HELP = "Seed of the identity split when the dataset defines none (written to OUT/split.json)."
SPLIT_FILE_HELP = "A split.json (from an earlier import) to reuse instead of a seeded split."


def _done(counts: dict[str, int], out_dir: Path) -> None:
    typer.echo(", ".join(f"{k}: {v}" for k, v in counts.items()) + f" -> {out_dir}")


def import_ilidsvid_cmd(
    root: Path = typer.Argument(
        ..., help="iLIDS-VID root: i-LIDS-VID/sequences/cam1|cam2, 'train-test people splits'/"
    ),
    out_dir: Path = typer.Argument(..., help=OUT_HELP),
    split: int = typer.Option(0, help="Which of the dataset's 10 splits (train_test_splits_ilidsvid.mat)."),
    seed: int = typer.Option(0, help=SEED_HELP + " Used only without the dataset's split file."),
    split_file: Path | None = typer.Option(None, help=SPLIT_FILE_HELP),
) -> None:
    """iLIDS-VID: one row per tracklet; query cam1, gallery cam2 of the test persons."""
    from training.data.video_reid import import_ilidsvid

    _done(import_ilidsvid(root, out_dir, split=split, seed=seed, split_file=split_file), out_dir)


def import_prid2011_cmd(
    root: Path = typer.Argument(..., help="PRID-2011 root: prid_2011/multi_shot/cam_a|cam_b/person_NNNN/"),
    out_dir: Path = typer.Argument(..., help=OUT_HELP),
    seed: int = typer.Option(0, help=SEED_HELP),
    split_file: Path | None = typer.Option(None, help=SPLIT_FILE_HELP),
    min_frames: int = typer.Option(0, help="Only persons with at least this many frames in each camera."),
) -> None:
    """PRID-2011: the persons seen by both cameras, split in half with a seed; query cam_a, gallery cam_b."""
    from training.data.video_reid import import_prid2011

    _done(import_prid2011(root, out_dir, seed=seed, split_file=split_file, min_frames=min_frames), out_dir)


def import_duke_video_cmd(
    root: Path = typer.Argument(..., help="DukeMTMC-VideoReID root: train/, query/, gallery/ (<pid>/<tracklet>/)"),
    out_dir: Path = typer.Argument(..., help=OUT_HELP),
) -> None:
    """DukeMTMC-VideoReID: its train/query/gallery folders, one row per tracklet."""
    from training.data.video_reid import import_duke_video

    _done(import_duke_video(root, out_dir), out_dir)


def import_lsvid_cmd(
    root: Path = typer.Argument(..., help="LS-VID root: list_sequence/, test/data/info_test.mat, tracklet_*/"),
    out_dir: Path = typer.Argument(..., help=OUT_HELP),
) -> None:
    """LS-VID: its train list and its test list split by info_test.mat into query and gallery."""
    from training.data.video_reid import import_lsvid

    _done(import_lsvid(root, out_dir), out_dir)


def register(app: typer.Typer) -> None:
    app.command("import-ilidsvid")(import_ilidsvid_cmd)
    app.command("import-prid2011")(import_prid2011_cmd)
    app.command("import-duke-video")(import_duke_video_cmd)
    app.command("import-lsvid")(import_lsvid_cmd)

"""The CLI end to end on real files: embed -> index -> evaluate; the label audit; the noise benchmark (--quick)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from indexing.embeddings import load_embeddings
from tests.conftest import TRAIN_ARGS, run_cli
from training.data.synth import SynthConfig, generate


def test_embed_index_evaluate(embeddings: dict[str, Path], synth_dir: Path, tmp_path: Path) -> None:
    g = load_embeddings(embeddings["gallery"])
    assert len(g) == 18 and np.allclose(np.linalg.norm(g.embeddings, axis=1), 1, atol=1e-5)
    assert set(g.cameras) == {"c1", "c2"} and g.checkpoint_sha256
    res = run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", tmp_path / "ix")
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert info["count"] == 18 and info["checkpoint_sha256"] == g.checkpoint_sha256
    res = run_cli(
        "evaluate", "--index", tmp_path / "ix", "--queries", embeddings["query"], "--json", tmp_path / "a.json"
    )
    assert res.returncode == 0 and "mAP" in res.stdout and "CMC@10" in res.stdout
    res = run_cli(
        "evaluate", "--gallery", embeddings["gallery"], "--queries", embeddings["query"], "--json", tmp_path / "b.json"
    )
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b and set(a) == {"mAP", "cmc", "num_queries", "skipped"} and 0 <= a["mAP"] <= 1
    assert a["num_queries"] == 6 and set(a["cmc"]) == {"1", "5", "10"}
    res = run_cli(
        "evaluate", "--index", tmp_path / "ix", "--gallery", embeddings["gallery"], "--queries", embeddings["query"]
    )
    assert res.returncode == 1 and "exactly one of --index and --gallery" in res.stderr


def test_same_video_twice_gives_the_same_vector(checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    video = synth_dir / "videos" / "id0006" / "c1_s0.mp4"
    (tmp_path / "m.csv").write_text(f"path,id\n{video},a\n{video},b\n")
    res = run_cli("embed", "--checkpoint", checkpoint, "--manifest", tmp_path / "m.csv", "--out", tmp_path / "e.npz")
    assert res.returncode == 0, res.stderr
    e = load_embeddings(tmp_path / "e.npz")
    assert np.array_equal(e.embeddings[0], e.embeddings[1])
    res = run_cli(
        "embed", "--checkpoint", tmp_path / "m.csv", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "x"
    )
    assert res.returncode == 1 and "not a readable vidret checkpoint" in res.stderr


def test_audit_ranks_planted_wrong_labels_first(tmp_path: Path) -> None:
    # 4 training identities x 64 clips: with 32 clips an identity, runs that differed only in a few encoded pixels
    # gave AUROC 0.46-0.96; with 64, training seeds 0-5 gave 0.96-0.99
    generate(
        tmp_path / "d",
        SynthConfig(identities=8, cameras=4, clips_per_camera=16, frames=8, size=32, noise=0.25, seed=3),
        workers=1,
    )
    res = run_cli(
        "train",
        "--train",
        tmp_path / "d" / "train.csv",
        "--out",
        tmp_path / "run",
        *TRAIN_ARGS,
        "--epochs",
        "16",
        "--batch-size",
        "16",
        "--loss",
        "imae",
        "--cache",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(
        "audit",
        "--checkpoint",
        tmp_path / "run" / "checkpoints" / "last.pt",
        "--manifest",
        tmp_path / "d" / "train.csv",
        "--out",
        tmp_path / "audit.csv",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with open(tmp_path / "audit.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "label", "p_label", "predicted", "p_predicted", "suspicion"] and len(rows) == 256
    assert [float(r["suspicion"]) for r in rows] == sorted((float(r["suspicion"]) for r in rows), reverse=True)
    auroc = float(res.stdout.split("AUROC of the suspicion score ")[1].split()[0])
    assert auroc > 0.8, res.stdout  # chance is 0.5


def test_bench_noise_quick_writes_every_file(tmp_path: Path) -> None:
    """The real CLI, --quick: pretraining once, T chosen on a validation split, every cell fine-tuned from the
    pretrained checkpoint at the frame level, outlier frames among the settings, and every report file, with the
    memorisation measure (per frame for outlier frames), the best epoch and the p_y curves."""
    res = run_cli("bench", "noise", tmp_path / "b", "--quick")
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "b"
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "loss", "noise_type", "noise_rate", "seed", "final_mAP", "best_mAP", "best_epoch", "epochs", "final_cmc1",
        "best_cmc1", "train_acc_clean", "train_acc_noisy", "seconds", "cpu_seconds", "loss_level",
    ]  # fmt: skip
    cells = {(r["loss"], r["noise_type"], float(r["noise_rate"])) for r in rows}
    assert cells == {
        (a, t, r)
        for a in ("cce", "imae")
        for t, r in (("clean", 0), ("symmetric", 0.4), ("identity", 0.4), ("frames", 0.4))
    }
    assert {r["loss_level"] for r in rows} == {"frame"}
    assert all(float(r["best_mAP"]) >= float(r["final_mAP"]) for r in rows)
    assert all(1 <= int(r["best_epoch"]) <= int(r["epochs"]) for r in rows)
    noisy = [r for r in rows if r["noise_type"] != "clean"]
    assert all(0.0 <= float(r["train_acc_noisy"]) <= 1.0 for r in noisy)  # the memorisation measure
    md = (out / "results.md").read_text()
    assert "best-epoch mAP" in md and "memorisation" in md and "paired by seed" in md
    plots = ["map_vs_noise.png", "curves_symmetric0.4.png", "weights_symmetric0.4.png", "curves_identity0.4.png"]
    for plot in (*plots, "weights_frames0.4.png", "p_y_frames0.4.png", "p_y_symmetric0.4.png"):
        assert (out / "plots" / plot).stat().st_size > 5000, plot
    # the outlier-frame training manifests: right labels, 4 of the 10 frames of every clip listed as outliers
    frames = list(csv.DictReader(open(out / "labels" / "train_frames0.4_seed0.csv", newline="")))
    assert all(r["label"] == r["clean_label"] and len(r["outlier_frames"].split(";")) == 4 for r in frames)
    metrics = list(csv.DictReader(open(out / "runs" / "cce_frames0.4_seed0" / "metrics.csv", newline="")))
    assert all(float(m["p_y_outlier_frames"]) >= 0 and float(m["p_y_clean_frames"]) >= 0 for m in metrics)
    pretrained = out / "pretrain" / "run" / "checkpoints" / "last.pt"
    assert pretrained.is_file()
    for run in (out / "runs").iterdir():  # every cell fine-tunes from the one pretrained checkpoint
        assert Path(json.loads((run / "config.json").read_text())["weights"]) == pretrained, run.name
    selection = json.loads((out / "t_selection" / "selection.json").read_text())
    assert selection["chosen"] in (2.0, 4.0) and set(selection["candidates"]) == {"2.0", "4.0"}
    # the default --jobs trains cells in parallel processes here (CPU: one per core); a rerun in one process
    # reuses every finished cell, so the parallel cells were recorded with exactly the settings of a serial run
    jobs = min(4, os.cpu_count() or 1)
    assert f"{len(rows)} cells, {jobs} at a time" in res.stderr
    again = run_cli("bench", "noise", out, "--quick", "--jobs", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(rows)} cells, 1 at a time" in again.stderr
    assert f"{len(rows)} cells: {len(rows)} finished earlier (reused), 0 to train" in again.stderr
    with open(out / "results.csv", newline="") as fh:
        assert [(r["loss"], r["final_mAP"], r["seconds"]) for r in csv.DictReader(fh)] == [
            (r["loss"], r["final_mAP"], r["seconds"]) for r in rows
        ]
    # a grid run in pieces: --report-only trains nothing, reports the finished cells and names the others
    (out / "runs" / "imae_identity0.4_seed0" / "done.json").unlink()
    inputs = [out / "bench_config.json", *(out / "labels").iterdir(), *(out / "pretrain").glob("*.*")]
    before = {p: p.stat().st_mtime_ns for p in inputs}
    report = run_cli("bench", "noise", out, "--quick", "--report-only")
    assert report.returncode == 0, report.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in inputs} == before  # it writes reports only, not the grid's inputs
    assert "1 of 8 cells have not finished: identity0.4: seed 0 (imae)" in report.stderr
    assert not (out / "runs" / "imae_identity0.4_seed0" / "done.json").exists()  # nothing was trained
    with open(out / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 7
    assert "Not run (--report-only reports the 7 finished cells): identity0.4: seed 0 (imae)." in report.stdout
    empty = run_cli("bench", "noise", tmp_path / "empty", "--quick", "--report-only")
    assert empty.returncode == 1 and "--report-only" in empty.stderr and "Traceback" not in empty.stderr

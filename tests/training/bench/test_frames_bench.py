"""The noise benchmark's outlier-frame setting, its p_y separation report, the headline grid, and run reuse when a
training option is added later."""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from indexing.errors import UserError
from training.bench.grid import NoiseBenchConfig, parse_noise, same_settings
from training.bench.separation import separation_lines
from training.config import TrainConfig


def test_frames_is_a_noise_type_of_the_benchmark() -> None:
    assert parse_noise(["frames:0.2,0.4", "symmetric:0"]) == [("frames", 0.2), ("frames", 0.4), ("clean", 0.0)]
    with pytest.raises(UserError, match="frames"):
        parse_noise(["frame:0.4"])


def test_the_headline_grid_and_the_full_grid_share_their_data() -> None:
    full, head = NoiseBenchConfig("x"), NoiseBenchConfig.headline_grid("x")
    assert head.losses == ["cce", "ls", "gce", "imae"] and head.seeds == 3
    assert sorted(head.settings()) == [("clean", 0.0), ("frames", 0.4), ("symmetric", 0.4)]
    assert full.seeds == 5 and set(head.settings()) < set(full.settings()) and head.size < full.size
    data = ("pretrain_identities", "train_identities", "test_identities", "cameras", "clips_per_camera",
            "video_frames", "video_size", "data_seed")  # fmt: skip
    assert all(getattr(full, k) == getattr(head, k) for k in data)
    assert head.train_identities >= 100 and head.cameras * head.clips_per_camera >= 8
    assert head.test_identities >= 100 and head.pretrain_identities >= 200
    with pytest.raises(UserError, match="--loss-level frame needs a frame backbone"):
        NoiseBenchConfig("x", model="tiny3d").validate()


def test_a_run_recorded_before_an_option_existed_is_reused_when_the_option_has_its_default() -> None:
    now = asdict(TrainConfig(train="t.csv", out="o"))
    old = {k: v for k, v in now.items() if k != "pk_clips"}
    assert same_settings(old, now)
    assert not same_settings(old, {**now, "pk_clips": 7})  # the new option is not at its default
    assert not same_settings({**now, "lr": 1.0}, now) and not same_settings({**now, "gone": 1}, now)


def _hist(clean: list[float], noisy: list[float], frames: bool = False) -> list[dict]:
    keys = ("p_y_clean_frames", "p_y_outlier_frames") if frames else ("p_y_clean", "p_y_noisy")
    return [{"epoch": i + 1, keys[0]: c, keys[1]: n} for i, (c, n) in enumerate(zip(clean, noisy, strict=True))]


def test_the_report_says_when_the_clean_samples_never_pull_ahead() -> None:
    curves = {
        ("symmetric0.4", 0): {"cce": _hist([0.1, 0.5, 0.9], [0.1, 0.2, 0.85]), "imae": _hist([0.1, 0.4], [0.1, 0.1])},
        ("frames0.4", 0): {"cce": _hist([0.1, 0.3, 0.6], [0.1, 0.29, 0.58], frames=True)},
    }
    text = "\n".join(separation_lines(curves, {"symmetric0.4": "symmetric", "frames0.4": "frames", "clean": "clean"}))
    assert "| cce | +30.0 (epoch 2; +5.0) | +2.0 (epoch 3; +2.0) |" in text
    assert "| imae | +30.0 (epoch 2; +30.0) | – |" in text
    assert "symmetric0.4: under CCE the clean samples pull ahead by up to 30.0 points" in text
    assert "frames0.4: under CCE the clean samples never pull ahead" in text and "no T can help" in text


def test_clean_then_retrain_drops_what_the_audit_disputes_and_reports_the_gain(
    trained_run: Path, synth_dir: Path, tmp_path: Path
) -> None:
    from training.bench.clean import audit_and_drop, clean_gain_lines
    from training.bench.report import RunResult
    from training.data.manifest import read_manifest

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    rows = read_manifest(synth_dir / "train.csv", require_label=True)
    cleaned, stats = audit_and_drop(run, synth_dir / "train.csv", rows, batch_size=8)
    audit = list(csv.DictReader(open(run / "audit.csv")))
    disputed = {r["id"] for r in audit if r["predicted"] != r["label"]}
    kept = read_manifest(cleaned, require_label=True)
    assert {r.id for r in kept} == {r.id for r in rows} - disputed and stats["dropped"] == len(disputed)
    assert stats["mislabelled"] == sum(r.label != r.clean_label for r in rows)

    def cell(loss, seed, final):
        return RunResult(loss, "symmetric", 0.4, seed, final, final, 1, 2, 0, 0, 0, 0, 1, 1, "frame")

    results = [cell("cce", 0, 0.30), cell("cce", 1, 0.20), cell("cce+clean", 0, 0.35), cell("cce+clean", 1, 0.18)]
    text = "\n".join(clean_gain_lines(results))
    assert "| cce | +1.5 ± 4.9 (1/2) |" in text and "top-1 prediction" in text


def test_the_frames_settings_can_have_their_own_schedule_and_clean_rounds_their_own_losses() -> None:
    from dataclasses import replace

    from training.bench.grid import Prepared, _cell_config

    prep = Prepared(Path("d"), Path("pre.pt"), Path("ft.csv"), 0.0, 0.0, 0.0)
    base = NoiseBenchConfig.headline_grid("x")
    cfg = replace(base, frames_epochs=300, frames_lr=3e-3, frames_weight_decay=0.0)
    cell = lambda c, kind: _cell_config(c, prep, "cce", 8.0, kind, 0.4, 0, Path("t.csv"))  # noqa: E731
    frames, sym = cell(cfg, "frames"), cell(cfg, "symmetric")
    assert (frames.epochs, frames.lr, frames.weight_decay, frames.warmup_epochs) == (300, 3e-3, 0.0, 1.0)
    assert (sym.epochs, sym.lr, sym.weight_decay) == (40, 1e-3, 0.01)
    assert replace(cell(base, "frames"), out="") == replace(cell(base, "symmetric"), out="")  # none given: the same
    with pytest.raises(UserError, match="--clean-losses: 'mae' is not one of --losses"):
        replace(base, clean_rounds=1, clean_losses=["mae"]).validate()
    with pytest.raises(UserError, match="--frames-epochs: invalid value 0"):
        replace(base, frames_epochs=0).validate()

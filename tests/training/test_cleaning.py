"""``vidret train --clean-rounds N`` (training/cleaning.py): train, audit, drop by the stated rule, retrain."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from indexing.errors import UserError
from tests.conftest import TRAIN_ARGS, run_cli
from training.cleaning import fit_clean_rounds
from training.config import TrainConfig
from training.data.manifest import read_manifest


def _audit(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_clean_rounds_drops_what_the_audit_flags_and_retrains(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = run_cli(
        "train", "--train", synth_dir / "train.csv", "--out", run, "--epochs", "2", "--clean-rounds", "1",
        "--val-query", synth_dir / "query.csv", "--val-gallery", synth_dir / "gallery.csv", *TRAIN_ARGS,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "clean_report.md" in res.stdout
    audited = _audit(run / "clean1" / "audit.csv")
    flagged = {r["id"] for r in audited if r["predicted"] != r["label"]}
    train = read_manifest(synth_dir / "train.csv", require_label=True)
    kept = read_manifest(run / "clean1" / "cleaned.csv", require_label=True)
    assert len(audited) == len(train) and flagged  # the two-epoch model disagrees with some labels
    assert {r.id for r in kept} == {r.id for r in train} - flagged
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "clean1" / "checkpoints" / "last.pt").is_file()
    retrained = json.loads((run / "clean1" / "config.json").read_text())
    assert retrained["train"] == str(run / "clean1" / "cleaned.csv") and retrained["clean_rounds"] == 0
    report = json.loads((run / "clean_report.json").read_text())
    first, second = report["rounds"]
    assert "top-1 prediction" in report["rule"]
    assert (second["dropped"], second["kept"], second["clips"]) == (len(flagged), len(kept), len(train))
    assert second["dropped_mislabelled"] <= second["mislabelled"]  # the synthetic labels know their clean label
    assert 0 <= first["val_mAP"] <= 1 and 0 <= second["val_mAP"] <= 1
    assert f"| 1 | {run / 'clean1'} | {len(flagged)} (" in (run / "clean_report.md").read_text()


def test_clean_rounds_from_a_recipe_and_its_errors(synth_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"train": str(synth_dir / "train.csv"), "epochs": 1, "clean_rounds": 1}))
    res = run_cli("train", "--config", recipe, "--out", tmp_path / "run", *TRAIN_ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "clean_report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1] and report["rounds"][0]["val_mAP"] is None
    for flags, message in [
        ({"clean_rounds": -1}, "--clean-rounds: invalid value -1"),
        ({"clean_rounds": 1, "stop_after_epoch": 1}, "--clean-rounds needs whole runs"),
    ]:  # one-line errors before any training
        with pytest.raises(UserError, match=message):
            fit_clean_rounds(TrainConfig(train=str(synth_dir / "train.csv"), out=str(tmp_path / "bad"), **flags))
    assert not (tmp_path / "bad").exists()

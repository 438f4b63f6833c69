"""The noise benchmark's resume rule: a finished run is reused only when it was trained with the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import training.trainer
from training.bench.grid import NoiseBenchConfig, _train, carve_validation
from training.data.manifest import VideoRow


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch) -> list:
    calls = []

    def fit(cfg):
        calls.append(cfg)
        Path(cfg.out).mkdir(parents=True)
        return training.trainer.FitResult(
            Path(cfg.out),
            Path(cfg.out),
            Path(cfg.out),
            [{"epoch": e + 1, "val_mAP": 0.1 * e} for e in range(cfg.epochs)],
            [],
        )

    monkeypatch.setattr(training.trainer, "fit", fit)
    return calls


def test_finished_runs_are_reused_only_with_the_same_settings(tmp_path: Path, fake_fit: list) -> None:
    args = ("imae", 4.0, tmp_path / "t.csv", tmp_path / "q.csv", tmp_path / "g.csv", tmp_path / "run")
    first = _train(NoiseBenchConfig(out_dir=str(tmp_path), epochs=3), *args, seed=0)
    again = _train(NoiseBenchConfig(out_dir=str(tmp_path), epochs=3), *args, seed=0)
    assert len(fake_fit) == 1 and again == first and len(first) == 3
    record = json.loads((tmp_path / "run" / "done.json").read_text())
    assert record["config"]["epochs"] == 3 and record["config"]["imae_t"] == 4.0
    longer = _train(NoiseBenchConfig(out_dir=str(tmp_path), epochs=5), *args, seed=0)
    assert len(fake_fit) == 2 and len(longer) == 5  # stale 3-epoch result not reused
    _train(NoiseBenchConfig(out_dir=str(tmp_path), epochs=5), "imae", 8.0, *args[2:], seed=0)
    assert len(fake_fit) == 3 and fake_fit[-1].imae_t == 8.0


def test_validation_split_uses_training_identities_only() -> None:
    rows = [
        VideoRow(
            row=i,
            path=f"v{i}.mp4",
            id=f"id{p}_c{c}_s{s}",
            label=f"p{(p + 1) % 10 if i % 3 == 0 else p}",
            camera=f"c{c}",
            clean_label=f"p{p}",
        )
        for i, (p, c, s) in enumerate((p, c, s) for p in range(10) for c in range(4) for s in range(2))
    ]
    fit, query, gallery = carve_validation(rows, 0.2, seed=0)
    val_ids = {r.label for r in query + gallery}
    assert len(val_ids) == 2 and not val_ids & {r.clean_label for r in fit}
    assert all(r.label == r.clean_label for r in query + gallery)  # validation is scored on the true identities
    assert len(query) == 2 * 2 and len(query) + len(gallery) + len(fit) == len(rows)

"""The checkpoint format has one home (training/checkpoint.py) with a version: version-1 checkpoints still load
(and --resume says so), unknown versions are refused by every reader with the file and the version named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from indexing.errors import UserError
from tests.conftest import run_cli
from training.checkpoint import VERSION, load_checkpoint_file, read_from_version


def _as_version_1(ck: dict) -> dict:
    """What version 1 wrote: one random state, ``rng``."""
    old = {k: v for k, v in ck.items() if k != "rng_ranks"}
    old.update(version=1, rng=ck["rng_ranks"][0])
    return old


def test_the_trainer_writes_the_current_version(checkpoint: Path) -> None:
    ck = torch.load(checkpoint, weights_only=True)
    assert ck["format"] == "vidret-checkpoint" and ck["version"] == VERSION == 2
    assert len(ck["rng_ranks"]) == 1 and "rng" not in ck
    assert read_from_version(load_checkpoint_file(checkpoint)) == 2


def test_a_version_1_checkpoint_resumes_and_says_so(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.plots as plots
    import training.trainer as trainer

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.save(_as_version_1(ck), run / "checkpoints" / "last.pt")
    loaded = load_checkpoint_file(run / "checkpoints" / "last.pt")
    assert read_from_version(loaded) == 1 and torch.equal(loaded["rng_ranks"][0]["torch"], ck["rng_ranks"][0]["torch"])
    monkeypatch.setattr(plots, "plot_training", lambda *a, **k: None)
    cfg = trainer.TrainConfig(**{**ck["config"], "out": str(run), "resume": True, "quiet": False})
    trainer.fit(cfg)  # every epoch is done: it restores and wraps up
    out = capsys.readouterr().out
    assert "resuming" in out and "checkpoint format version 1 (read compatibly)" in out


def test_an_unknown_version_is_refused_by_every_reader(checkpoint: Path, synth_dir: Path, tmp_path: Path) -> None:
    ck = torch.load(checkpoint, weights_only=True)
    future = tmp_path / "future.pt"
    torch.save({**ck, "version": 99}, future)
    with pytest.raises(UserError, match=r"future.pt: vidret checkpoint format version 99, which this vidret does"):
        load_checkpoint_file(future)
    res = run_cli("embed", "--checkpoint", future, "--manifest", synth_dir / "query.csv", "--out", tmp_path / "e.npz")
    assert res.returncode == 1 and "format version 99" in res.stderr and "Traceback" not in res.stderr
    from training.models import build_model

    with pytest.raises(UserError, match=r"--weights .*future.pt: vidret checkpoint format version 99"):
        build_model("tiny3d", num_classes=3, weights=future)
    v1 = tmp_path / "v1.pt"
    torch.save(_as_version_1(ck), v1)
    assert build_model("tiny3d", num_classes=3, weights=v1, embedding_dim=32).weights_loaded.startswith(
        "the checkpoint's backbone"
    )

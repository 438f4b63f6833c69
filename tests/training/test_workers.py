"""DataLoader workers (--workers 2): every epoch's augmentation reaches them, runs repeat, resume is exact.

``fit()`` runs in this process with two fork()ed workers; a recording DataLoader keeps, per epoch, the clip the model
was given for each video index, and the model draws random numbers while training (input dropout, as the dropout of
s3d or mvit does), so any difference in the main process's random stream shows in the weights too. The figures are
not drawn (tests/training/test_trainer.py checks them): they cost seconds and change nothing here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import training.plots as plots
import training.trainer as trainer
from training.data.dataset import VideoDataset
from training.data.manifest import class_map, read_manifest
from training.data.video import ClipSpec

SEED = 3
# columns that measure time, not what was learnt
TIMING = {"clips_per_s", "data_wait_share", "epoch_seconds"}


class InputDropout(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(F.dropout(x, 0.2, self.training))


def _recording_loader(epochs: list[dict[int, torch.Tensor]]) -> type:
    class RecordingLoader(trainer.DataLoader):
        def __iter__(self):
            seen: dict[int, torch.Tensor] = {}
            epochs.append(seen)
            for batch in super().__iter__():
                for i, clip in zip(batch["index"].tolist(), batch["clip"], strict=True):
                    seen[i] = clip.clone()
                yield batch

    return RecordingLoader


def _fit(
    train: Path, out: Path, monkeypatch: pytest.MonkeyPatch, epochs: list | None = None, **kw
) -> trainer.FitResult:
    real_build = trainer.build_model
    with monkeypatch.context() as m:
        m.setattr(trainer, "build_model", lambda *a, **k: InputDropout(real_build(*a, **k)))
        m.setattr(plots, "plot_training", lambda *a, **k: None)
        if epochs is not None:
            m.setattr(trainer, "DataLoader", _recording_loader(epochs))
        cfg = trainer.TrainConfig(
            train=str(train),
            out=str(out),
            model="tiny3d",
            frames=4,
            size=24,
            batch_size=8,
            lr=3e-3,
            embedding_dim=32,
            seed=SEED,
            epochs=2,
            quiet=True,
            **{"workers": 2, **kw},
        )
        return trainer.fit(cfg)


def _learnt(history: list[dict[str, float]]) -> list[dict[str, str]]:
    return [{k: repr(v) for k, v in h.items() if k not in TIMING} for h in history]  # repr: nan == nan


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]


def _same_clips(a: list[dict[int, torch.Tensor]], b: list[dict[int, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[i], y[i]) for i in x) for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def workers_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[trainer.FitResult, list]:
    """Two epochs with --workers 2 and --cache (each worker decodes into its own cache), recording the clips."""
    epochs: list[dict[int, torch.Tensor]] = []
    with pytest.MonkeyPatch.context() as mp:
        res = _fit(synth_dir / "train.csv", tmp_path_factory.mktemp("workers") / "run", mp, epochs, cache=True)
    return res, epochs


def test_each_epoch_reaches_the_workers(synth_dir: Path, workers_run: tuple) -> None:
    _, epochs = workers_run
    rows = read_manifest(synth_dir / "train.csv", require_label=True)
    ds = VideoDataset(
        rows, ClipSpec(frames=4, size=24), train=True, class_to_idx=class_map(r.label for r in rows), seed=SEED
    )
    assert len(epochs) == 2 and all(sorted(e) == list(range(len(rows))) for e in epochs)
    first, second = epochs
    assert not torch.equal(first[0], second[0])  # index 0: other frames, crop or flip in epoch 2 than in epoch 1
    for epoch, seen in enumerate(epochs):
        ds.set_epoch(epoch)
        wrong = [i for i in seen if not torch.equal(seen[i], ds[i]["clip"])]
        assert not wrong, f"epoch {epoch + 1}: the workers gave other clips than (seed, epoch, index) for {wrong}"


def test_runs_with_the_same_seed_are_identical_whatever_workers_and_cache(
    synth_dir: Path, workers_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, first_epochs = workers_run
    # --workers and --log-interval (how often sums are read back from the device) are speed settings, not result ones
    for name, workers, log_interval in (("again", 2, 20), ("in-process", 0, 1)):
        epochs: list[dict[int, torch.Tensor]] = []
        again = _fit(
            synth_dir / "train.csv", tmp_path / name, monkeypatch, epochs, workers=workers, log_interval=log_interval
        )
        assert _same_clips(epochs, first_epochs), f"--workers {workers}: other clips"
        assert _learnt(again.history) == _learnt(first.history), f"--workers {workers}: other metrics"
        _assert_same_weights(again.run_dir, first.run_dir)


def test_resume_with_workers_is_exact(
    synth_dir: Path, workers_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, _ = workers_run
    first = _fit(synth_dir / "train.csv", tmp_path / "run", monkeypatch, stop_after_epoch=1)
    assert len(first.history) == 1
    resumed = _fit(synth_dir / "train.csv", tmp_path / "run", monkeypatch, resume=True)
    assert _learnt(resumed.history) == _learnt(straight.history)
    _assert_same_weights(resumed.run_dir, straight.run_dir)

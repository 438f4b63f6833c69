"""A training step reads nothing back from the device in the loss: the label check is folded into the trainer's
device-side non-finite flag (read once per --log-interval), and a bad step is still reported exactly."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from training.losses import build_loss, list_losses

READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _refusing_reads():
    """Any read of a tensor's value back to the host (what costs a device sync on a GPU) raises, meanwhile."""

    def refuse(name: str):
        def read(self, *a, **k):
            raise AssertionError(f"Tensor.{name} read a value back to the host")

        return read

    saved = {name: getattr(torch.Tensor, name) for name in READS}
    try:
        for name in READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.fixture()
def no_reads():
    with _refusing_reads():
        yield


@pytest.mark.parametrize("name", list_losses())
def test_the_trainers_loss_reads_nothing_back(name: str, no_reads) -> None:
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss = build_loss(name)
    loss.check_labels_on_host = False  # as the trainer builds it
    loss(z, y).backward()
    loss.sample_weights(z, y)


@pytest.mark.parametrize("name", list_losses())
def test_without_the_host_check_a_bad_label_is_a_nan_loss(name: str) -> None:
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    loss = build_loss(name)
    loss.check_labels_on_host = False
    assert torch.isnan(loss(z, torch.tensor([0, 5, 1, 2])))
    weights = loss.sample_weights(z, torch.tensor([0, -1, 1, 2]))
    assert torch.isnan(weights[1]) and torch.isfinite(weights[[0, 2, 3]]).all()
    assert torch.isfinite(loss(z, torch.tensor([0, 4, 1, 2])))  # good labels: untouched
    with pytest.raises(ValueError, match="label 5 is outside"):  # the default still names the label at once
        build_loss(name)(z, torch.tensor([0, 5, 1, 2]))


@pytest.mark.parametrize("log_interval", [1, 20])
def test_a_nan_at_a_known_step_is_reported_at_that_step_and_the_loss_never_syncs(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_interval: int
) -> None:
    """The trainer's own loss, guarded so that any host read inside it fails, and a NaN clip faked into the second
    batch: the run stops with the report of epoch 1, step 2, whether the flag is read after every step or only at
    the epoch's end."""
    import training.plots as plots
    import training.trainer as trainer

    real_build, real_collate = trainer.build_loss, trainer.collate
    calls = {"batches": 0, "guarded": 0}

    def guarded(fn):
        def call(*args):
            calls["guarded"] += 1
            with _refusing_reads():
                return fn(*args)

        return call

    def build_loss(*a, **k):
        loss = real_build(*a, **k)
        loss.forward, loss.sample_weights = guarded(loss.forward), guarded(loss.sample_weights)
        return loss

    def collate(items):
        batch = real_collate(items)
        calls["batches"] += 1
        if calls["batches"] == 2:
            batch["clip"][0] = float("nan")
        return batch

    monkeypatch.setattr(trainer, "build_loss", build_loss)
    monkeypatch.setattr(trainer, "collate", collate)
    monkeypatch.setattr(plots, "plot_training", lambda *a, **k: None)
    cfg = trainer.TrainConfig(
        train=str(synth_dir / "train.csv"), out=str(tmp_path / "run"), model="tiny3d", frames=4, size=24,
        batch_size=8, workers=0, epochs=1, quiet=True, loss="imae", log_interval=log_interval, device="cpu",
    )  # fmt: skip
    with pytest.raises(trainer.TrainingDiverged, match=r"became nan at epoch 1, step 2; the last good checkpoint"):
        trainer.fit(cfg)
    steps = 2 if log_interval == 1 else 3  # read back after step 2, or at the epoch's end
    assert calls["batches"] == steps and calls["guarded"] == 2 * steps  # forward and sample weights, every step

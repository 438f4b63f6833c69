"""A loss is one decorated function (training/loss_registry.py): its options become ``TrainConfig`` fields and
``vidret train`` flags, and its name a ``--loss`` choice, with no other edit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from training.loss_registry import IMAE_T_SCRATCH, LABEL_SMOOTHING, LossOption, register_loss

THROWAWAY = textwrap.dedent(
    """
    import sys
    from training.loss_registry import LossOption, register_loss

    @register_loss("toy", "toy (a test loss)", gamma=LossOption("toy_gamma", 2.5, "Toy gamma."))
    def _toy(gamma: float = 2.5):
        from training.losses import CCE
        return CCE(label_smoothing=gamma / 10)

    from training.config import TrainConfig
    cfg = TrainConfig(train="t.csv", out="o", loss="toy", toy_gamma=3.0)
    cfg.validate()
    print("kwargs", cfg.loss_kwargs())
    from service.cli import app
    sys.argv = ["vidret", "train", "--help"]
    app(prog_name="vidret")
    """
)


def test_a_registered_loss_is_a_flag_and_a_choice() -> None:
    res = subprocess.run(
        [sys.executable, "-c", THROWAWAY],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "kwargs {'gamma': 3.0}" in res.stdout
    assert "--toy-gamma" in res.stdout and "Toy gamma. [default: 2.5]" in res.stdout
    assert "| toy (a test loss) (docs/losses.md)" in res.stdout


def test_an_option_field_means_one_thing() -> None:
    with pytest.raises(KeyError, match="declared differently"):
        register_loss("clash", label_smoothing=LossOption(LABEL_SMOOTHING.field, 0.3, "another"))(lambda: None)
    with pytest.raises(KeyError, match="twice"):
        register_loss("imae")(lambda: None)


@pytest.mark.parametrize(("env", "t"), [("3", 3.0), ("", IMAE_T_SCRATCH), (None, IMAE_T_SCRATCH)])
def test_imae_t_reads_vidret_imae_t_when_not_given(monkeypatch: pytest.MonkeyPatch, env: str | None, t: float) -> None:
    """compose passes T as VIDRET_IMAE_T (empty: the default, here from random weights) instead of restating it."""
    from typer.testing import CliRunner

    import training.trainer
    from service.cli import app

    seen = []
    monkeypatch.setattr(training.trainer, "fit", lambda cfg: seen.append(cfg) or SimpleNamespace(history=[]))
    if env is None:
        monkeypatch.delenv("VIDRET_IMAE_T", raising=False)
    else:
        monkeypatch.setenv("VIDRET_IMAE_T", env)
    res = CliRunner().invoke(app, ["train", "--train", "a.csv", "--out", "o"])
    assert res.exit_code == 0, res.output
    assert seen[0].imae_t == t
    res = CliRunner().invoke(app, ["train", "--train", "a.csv", "--out", "o", "--imae-t", "2"])
    assert seen[1].imae_t == 2.0  # the flag wins


def test_imae_t_defaults_to_what_the_benchmark_chose_for_the_regime(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.config import TrainConfig
    from training.loss_registry import IMAE_T_FINETUNE, IMAE_T_FRAME_FINETUNE

    monkeypatch.delenv("VIDRET_IMAE_T", raising=False)
    t = lambda **kw: TrainConfig(train="t.csv", out="o", **kw).imae_t  # noqa: E731
    assert (t(), t(weights="w.pt"), t(weights="w.pt", loss_level="frame")) == (IMAE_T_SCRATCH, IMAE_T_FINETUNE, 16.0)
    assert IMAE_T_FRAME_FINETUNE == 16.0 and t(loss_level="frame") == IMAE_T_SCRATCH  # from scratch: small T
    assert t(weights="w.pt", loss_level="frame", imae_t=2.0) == 2.0

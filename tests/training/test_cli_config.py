"""``vidret train`` is built from ``TrainConfig``: one flag per field, with the field's default and help text."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from training.cli import train_cmd
from training.config import TrainConfig, cli_fields

INTERNAL = {"quiet"}  # set by library callers, no flag


def _train_command() -> click.Command:
    app = typer.Typer()
    app.command("train")(train_cmd)
    app.command("other")(lambda: None)  # two commands: "train" stays a sub-command, as under `vidret`
    return typer.main.get_command(app).commands["train"]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def test_every_field_is_a_flag_with_the_fields_default_and_help() -> None:
    fields = dataclasses.fields(TrainConfig)
    assert {f.name for f in fields} - {f.name for f in cli_fields()} == INTERNAL
    params = {p.name: p for p in _train_command().params}
    assert set(params) == ({f.name for f in fields} - INTERNAL) | {"config"}
    for f in cli_fields():
        p = params[f.name]
        assert p.opts == [f"--{f.name.replace('_', '-')}"], f.name
        assert p.help == f.metadata["help"] and len(p.help) > 5, f.name
        if f.name in ("train", "out"):  # required, but may come from --config: checked once merged
            assert not p.required and p.default is None, f.name
            continue
        default = p.default() if callable(p.default) else p.default
        assert not p.required and default == _default(f), f.name
    assert params["workers"].default == min(4, os.cpu_count() or 1)
    for switch in ("compile", "resume", "cache"):  # plain switches: no --no-compile
        assert params[switch].is_flag and params[switch].secondary_opts == [], switch


def test_the_command_hands_the_config_to_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.trainer as trainer

    got: list[TrainConfig] = []
    monkeypatch.setattr(
        trainer, "fit", lambda cfg: got.append(cfg) or trainer.FitResult(Path(), Path(), Path(), [], [])
    )
    _train_command().main(
        ["--train", "a/train.csv", "--out", "runs//x/", "--compile", "--lr", "0.5", "--stop-after-epoch", "3"],
        standalone_mode=False,
    )
    expected = TrainConfig(train="a/train.csv", out="runs/x", compile=True, lr=0.5, stop_after_epoch=3)
    assert got == [expected]  # paths parsed as paths, handed on as str; every other field its default
    assert isinstance(got[0].out, str) and got[0].val_query is None


def test_train_help_lists_every_flag() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert res.returncode == 0, res.stderr
    for f in cli_fields():
        flag = f"--{f.name.replace('_', '-')}"
        assert flag in res.stdout, flag
        default = _default(f)
        if default not in (None, False) and f.name not in ("train", "out"):
            assert f"[default: {default}]" in res.stdout, flag
    assert "--quiet" not in res.stdout and "--no-compile" not in res.stdout and "--config" in res.stdout


def test_imae_t_defaults_per_regime_and_a_given_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.trainer as trainer

    got: list[TrainConfig] = []
    monkeypatch.setattr(
        trainer, "fit", lambda cfg: got.append(cfg) or trainer.FitResult(Path(), Path(), Path(), [], [])
    )
    base = ["--train", "t.csv", "--out", "o"]
    for extra in ([], ["--weights", "pre.pt"], ["--weights", "pre.pt", "--imae-t", "2"], ["--imae-t", "0"]):
        _train_command().main(base + extra, standalone_mode=False)
    # from random weights 4; fine-tuning from --weights 8 (docs/losses.md, Choosing T); a given T is kept, 0 too
    assert [c.imae_t for c in got] == [4.0, 8.0, 2.0, 0.0]
    assert [c.loss_kwargs()["t"] for c in got] == [4.0, 8.0, 2.0, 0.0]

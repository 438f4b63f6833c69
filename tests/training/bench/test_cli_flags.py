"""``vidret bench noise``'s flags are generated from ``NoiseBenchConfig`` (training/bench/grid.py): every field
marked ``flag(...)`` is an option whose help gives the full grid's default and ``--quick``'s; a flag that is given
overrides the grid it starts from (full or ``--quick``), one that is not keeps it; a new marked field is a flag."""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

import training.bench.grid as grid
import training.cli as tcli
from service.cli import app
from training.bench.grid import NoiseBenchConfig, flag


def _command() -> click.Command:
    return typer.main.get_command(app).commands["bench"].commands["noise"]


def test_every_marked_field_is_a_flag_with_both_defaults() -> None:
    marked = [f for f in fields(NoiseBenchConfig) if "help" in f.metadata]
    assert {f.name for f in marked} >= {"losses", "noise", "seeds", "epochs", "jobs", "imae_t", "report_only"}
    options = {p.name: p for p in _command().params}
    assert set(options) == {"out_dir", "quick", "headline", *(f.name for f in marked)}
    full, quick = NoiseBenchConfig(out_dir=""), NoiseBenchConfig.quick("")
    for f in marked:
        opt = options[f.name]
        assert opt.opts == [f"--{f.name.replace('_', '-')}"] and opt.help.startswith(f.metadata["help"]), f.name
        if not opt.is_flag:
            assert f"(grid default: {tcli._shown(getattr(full, f.name))}; " in opt.help, f.name
            assert f"--quick: {tcli._shown(getattr(quick, f.name))})" in opt.help, f.name


@pytest.fixture()
def ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[NoiseBenchConfig]:
    seen: list[NoiseBenchConfig] = []

    def fake_run(cfg: NoiseBenchConfig, log) -> None:
        seen.append(cfg)
        (Path(cfg.out_dir) / "results.md").parent.mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "results.md").write_text("report\n")

    monkeypatch.setattr(grid, "run_noise_bench", fake_run)
    return seen


def test_given_flags_override_the_grid_they_start_from(ran: list[NoiseBenchConfig], tmp_path: Path) -> None:
    args = ["bench", "noise", str(tmp_path / "a"), "--seeds", "2", "--losses", "cce", "--losses", "imae"]
    res = CliRunner().invoke(app, [*args, "--imae-t", "4", "--report-only"])
    assert res.exit_code == 0, res.output
    cfg = ran[-1]
    assert (cfg.seeds, cfg.losses, cfg.imae_t, cfg.report_only) == (2, ["cce", "imae"], 4.0, True)
    assert (
        cfg.epochs == grid.NoiseBenchConfig(out_dir="").epochs and cfg.noise == grid.DEFAULT_NOISE
    )  # not given: the full grid's
    res = CliRunner().invoke(app, ["bench", "noise", str(tmp_path / "b"), "--quick", "--epochs", "3"])
    assert res.exit_code == 0, res.output
    cfg = ran[-1]
    assert (cfg.epochs, cfg.seeds, cfg.losses, cfg.train_identities) == (3, 1, ["cce", "imae"], 6)


def test_a_new_marked_field_becomes_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    more = make_dataclass(
        "More", [("warmup", int, field(default=5, metadata=flag("Warm-up epochs.")))], bases=(NoiseBenchConfig,)
    )
    more.quick = classmethod(lambda cls, out_dir: cls(out_dir=out_dir, warmup=1))
    monkeypatch.setattr(grid, "NoiseBenchConfig", more)
    params = {p.name: p.default for p in tcli.bench_options()}
    assert params["warmup"].help == "Warm-up epochs. (grid default: 5; --quick: 1)"

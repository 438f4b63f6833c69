"""``vidret train --config``: recipes (YAML/JSON) of TrainConfig fields, flags override, errors name the key, a run's
config.json is a recipe, and the shipped recipes in configs/ parse (the CPU one starts a real run)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from indexing.errors import UserError
from tests.conftest import run_cli
from tests.training.test_cli_config import _train_command
from training.config import TrainConfig
from training.recipe import read_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    import training.trainer as trainer

    got: list[TrainConfig] = []
    monkeypatch.setattr(
        trainer, "fit", lambda cfg: got.append(cfg) or trainer.FitResult(Path(), Path(), Path(), [], [])
    )
    return got


def test_recipe_values_and_flags_override(tmp_path: Path, captured: list[TrainConfig]) -> None:
    (tmp_path / "r.yaml").write_text("train: t.csv\nout: o\nmodel: tiny3d\nlr: 1\nepochs: 3\ncache: true\n")
    _train_command().main(["--config", str(tmp_path / "r.yaml"), "--epochs", "5"], standalone_mode=False)
    want = TrainConfig(train="t.csv", out="o", model="tiny3d", lr=1.0, epochs=5, cache=True)
    assert captured == [want] and isinstance(captured[0].lr, float)
    # a flag given with its default value still wins over the recipe
    _train_command().main(["--config", str(tmp_path / "r.yaml"), "--model", "r2plus1d_18"], standalone_mode=False)
    assert captured[-1].model == "r2plus1d_18" and captured[-1].epochs == 3
    (tmp_path / "r.json").write_text(json.dumps({"train": "t.csv", "loss": "cce"}))
    _train_command().main(["--config", str(tmp_path / "r.json"), "--out", "x"], standalone_mode=False)
    assert captured[-1].loss == "cce" and captured[-1].out == "x"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("train: t\nout: o\nlearning_rate: 0.1\n", ["'learning_rate'", "unknown key"]),
        ("train: t\nout: o\nbatch-size: 4\n", ["'batch-size'", "batch_size"]),
        ("train: t\nout: o\nepochs: ten\n", ["'epochs'", "int"]),
        ("train: t\nout: o\ncache: 1\n", ["'cache'", "bool"]),
        ("train: t\nout: o\nlr: true\n", ["'lr'", "float"]),
        ("train: t\nout: [o]\n", ["'out'", "str"]),
        ("train: [unclosed\n", ["not valid YAML"]),
        ("- a\n- b\n", ["mapping"]),
        ("out: o\n", ["--train is required"]),
    ],
)
def test_bad_recipes_name_the_key(tmp_path: Path, text: str, words: list[str], captured: list) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        _train_command().main(["--config", str(path)], standalone_mode=False)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value) and not captured


def test_shipped_recipes_parse() -> None:
    for name in ("cpu-quickstart.yaml", "gpu-r2plus1d18-finetune.yaml"):
        values = read_recipe(ROOT / "configs" / name)
        TrainConfig(**values).validate()
    assert read_recipe(ROOT / "configs" / "gpu-r2plus1d18-finetune.yaml")["model"] == "r2plus1d_18"


def test_cpu_recipe_starts_a_run_whose_config_json_repeats_it(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "train", "--config", ROOT / "configs" / "cpu-quickstart.yaml", "--train", synth_dir / "train.csv",
        "--val-query", synth_dir / "query.csv", "--val-gallery", synth_dir / "gallery.csv", "--out", out,
        "--frames", "4", "--size", "24", "--batch-size", "8", "--epochs", "1", "--workers", "0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["model"] == "tiny3d" and recorded["loss"] == "imae" and recorded["imae_t"] == 2.0  # the recipe
    assert recorded["epochs"] == 1 and recorded["frames"] == 4  # the flags
    assert (out / "checkpoints" / "last.pt").is_file()
    again = TrainConfig(**read_recipe(out / "config.json"))  # config.json is a valid --config, the same run
    assert asdict(again) == {k: recorded[k] for k in asdict(again)}

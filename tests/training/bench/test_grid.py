"""The noise benchmark: resume rule, noise settings, identity groups, memorisation, and the paired report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import training.trainer
from indexing.errors import UserError
from training.bench.grid import (
    NoiseBenchConfig,
    _train,
    carve_validation,
    cell_config,
    describe_cells,
    parse_noise,
    split_groups,
)
from training.bench.report import RunResult, read_results_csv, results_markdown, write_results_csv
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
    def cfg(epochs: int, t: float = 4.0, weights: str = "pre.pt"):
        bench = NoiseBenchConfig(out_dir=str(tmp_path), epochs=epochs)
        return cell_config(bench, "imae", t, tmp_path / "t.csv", tmp_path / "run", seed=0, weights=weights)

    first, seconds, cpu = _train(cfg(3))
    again = _train(cfg(3))
    assert len(fake_fit) == 1 and again == (first, seconds, cpu) and len(first) == 3 and seconds >= 0
    record = json.loads((tmp_path / "run" / "done.json").read_text())
    assert record["config"]["epochs"] == 3 and record["config"]["weights"] == "pre.pt"
    longer, _, _ = _train(cfg(5))
    assert len(fake_fit) == 2 and len(longer) == 5  # stale 3-epoch result not reused
    _train(cfg(5, t=8.0))
    _train(cfg(5, t=8.0, weights="other.pt"))  # another pretrained start is another run
    assert len(fake_fit) == 4 and fake_fit[-1].imae_t == 8.0


def test_noise_settings_parse_and_name_the_bad_flag() -> None:
    assert parse_noise(["symmetric:0,0.2", "pairflip:0,0.4", "identity:0.4"]) == [
        ("clean", 0.0),
        ("symmetric", 0.2),
        ("pairflip", 0.4),
        ("identity", 0.4),
    ]
    for bad, match in [("sym:0.4", "TYPE one of"), ("symmetric:x", "'x' is not a number"), ("pairflip:1", r"\[0, 1\)")]:
        with pytest.raises(UserError, match=match):
            parse_noise([bad])
    with pytest.raises(UserError, match="--losses: unknown loss 'ce'"):
        NoiseBenchConfig(out_dir="x", losses=["ce"]).validate()


def _rows(ids: int = 10, noisy: bool = True) -> list[VideoRow]:
    return [
        VideoRow(
            row=i,
            path=f"v{i}.mp4",
            id=f"id{p}_c{c}_s{s}",
            label=f"p{(p + 1) % ids if noisy and i % 3 == 0 else p}",
            camera=f"c{c}",
            clean_label=f"p{p}",
        )
        for i, (p, c, s) in enumerate((p, c, s) for p in range(ids) for c in range(4) for s in range(2))
    ]


def test_pretraining_and_fine_tuning_identities_are_disjoint() -> None:
    pre, ft = split_groups(_rows(noisy=False), 6)
    assert {r.clean_label for r in pre} == {f"p{p}" for p in range(6)}
    assert {r.clean_label for r in ft} == {"p6", "p7", "p8", "p9"} and len(pre) + len(ft) == 80


def test_validation_split_uses_training_identities_only() -> None:
    rows = _rows()
    fit, query, gallery = carve_validation(rows, 0.2, seed=0)
    val_ids = {r.label for r in query + gallery}
    assert len(val_ids) == 2 and not val_ids & {r.clean_label for r in fit}
    assert all(r.label == r.clean_label for r in query + gallery)  # validation is scored on the true identities
    assert len(query) == 2 * 2 and len(query) + len(gallery) + len(fit) == len(rows)


def _result(loss: str, seed: int, final: float, kind: str = "symmetric", noisy: float = 0.9) -> RunResult:
    return RunResult(loss, kind, 0.4, seed, final, final + 0.05, 7, 20, 0.5, 0.6, 0.95, noisy, 12.0, 20.0)


def test_report_pairs_seeds_and_says_where_imae_loses(tmp_path: Path) -> None:
    results = [_result("cce", s, 0.30 + 0.01 * s) for s in range(3)]
    results += [_result("imae", s, 0.45 + 0.01 * s, noisy=0.2) for s in range(3)]
    results += [_result("nce_rce", s, [0.50, 0.40, 0.60][s]) for s in range(3)]
    results += [_result("cce", 0, 0.2, kind="identity"), _result("imae", 0, 0.1, kind="identity")]
    write_results_csv(tmp_path / "r.csv", results)
    back = read_results_csv(tmp_path / "r.csv")
    assert [(r.loss, r.noise_type, r.seed, r.best_epoch) for r in back] == [
        (r.loss, r.noise_type, r.seed, r.best_epoch) for r in results
    ]
    assert np.allclose([r.final_mAP for r in back], [r.final_mAP for r in results])
    md = results_markdown(results)
    assert "| cce | +15.0 ± 0.0 (3/3, apart) | -10.0 ± 0.0 (0/1) |" in md  # identity: IMAE behind, one seed
    assert "| nce_rce | -4.0 ± 9.5 (1/3) | – |" in md  # seed ranges overlap: not `apart`
    assert "| imae | 46.0 ± 1.0 | 10.0 ± 0.0 (1 seed) |" in md  # fewer seeds than the table's header says
    assert "| imae | 20.0 ± 0.0 | 90.0 ± 0.0 (1 seed) |" in md


def test_verdict_answers_the_benchmarks_questions_and_says_what_it_cannot() -> None:
    results = [_result("cce", s, 0.30 + 0.01 * s, noisy=0.95) for s in range(3)]
    results += [_result("imae", s, 0.45 + 0.01 * s) for s in range(3)]
    results += [_result("nce_rce", s, [0.50, 0.40, 0.60][s]) for s in range(3)]
    md = results_markdown(results)
    assert "- Regime: cce fits 95.0% of the wrong labels at symmetric 0.4 (mean of 3 seeds): at or above the 80%" in md
    assert "- imae >= cce + 10 at symmetric 0.4, seed ranges apart: met (imae 46.0 [45.0, 47.0] vs cce 31.0" in md
    assert "- imae >= every loss at symmetric 0.4 (at least 3 seeds each): NOT met: nce_rce 50.0 (imae 46.0)." in md
    close = [_result("cce", s, 0.40, noisy=0.5) for s in range(2)] + [_result("imae", s, 0.45) for s in range(2)]
    md = results_markdown(close)
    assert "NOT above the 80% of the memorising regime" in md
    assert "seed ranges apart: NOT met (imae 45.0 [45.0, 45.0] vs cce 40.0 [40.0, 40.0]: +5.0 points)" in md
    assert "- imae >= every loss at symmetric 0.4 (at least 2 seeds each): met (imae 45.0)." in md
    frames = [_result("cce", 0, 0.3, kind="frames", noisy=0.85), _result("imae", 0, 0.4, kind="frames")]
    md = results_markdown(frames)
    assert "cce fits 85.0% of the outlier frames at frames 0.4 (mean of 1 seeds): at or above the 80%" in md
    assert "- imae >= every loss at frames 0.4 (at least 1 seed each): met (imae 40.0)." in md
    one = results_markdown([_result("imae", 0, 0.3, kind="pairflip")])
    assert "no cce cell at symmetric 0.4" in one and "not answerable" in one


@pytest.mark.parametrize(
    ("cuda", "cores", "given", "expected"),
    [
        (True, 16, None, (1, 16)),  # one model at a time keeps a GPU busy
        (False, 2, None, (2, 1)),  # this machine: two one-thread cells
        (False, 1, None, (1, 1)),
        (False, 16, None, (4, 4)),
        (False, 16, 2, (2, 8)),  # --jobs wins
        (True, 16, 3, (3, 5)),
    ],
)
def test_jobs_follow_the_device_and_the_cores(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, cores: int, given: int | None, expected: tuple[int, int]
) -> None:
    import os

    import torch

    from training.bench.grid import resolve_jobs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert resolve_jobs(NoiseBenchConfig(out_dir="x", jobs=given)) == expected
    assert resolve_jobs(NoiseBenchConfig(out_dir="x", jobs=given, report_only=True))[0] == 1  # inference only
    with pytest.raises(UserError, match="--jobs: invalid value 0"):
        NoiseBenchConfig(out_dir="x", jobs=0).validate()


def test_cells_not_run_are_named_compactly() -> None:
    missing = [("symmetric", 0.6, 1, loss) for loss in ("cce", "imae", "ls")]
    missing += [("symmetric", 0.6, 2, "cce"), ("symmetric", 0.6, 2, "imae"), ("clean", 0.0, 2, "cce")]
    assert describe_cells(missing, n_losses=3) == "symmetric0.6: seed 1, seed 2 (cce, imae); clean: seed 2 (cce)"


def test_a_cell_process_ends_when_the_benchmark_process_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from training.bench.grid import watch_parent

    ppid = iter([10, 10, 1])  # the benchmark (10) dies; the cell process is re-parented to init
    monkeypatch.setattr(os, "getppid", lambda: next(ppid))
    exits: list[int] = []
    watch_parent(10, interval=0.01, exit=exits.append).join(timeout=5)
    assert exits == [1]

"""The side-by-side benchmarks against torchcodec, torchreid, autofaiss and cleanlab (benchmarks/decode.py,
evaluate.py, search.py, audit_peers.py), each at a tiny size: they run, write their --json figures, and the checks
that must hold at any size do (the same frames, the same mAP). A peer that is not installed skips its test, saying
how to install it (`pip install -e '.[bench]'`; autofaiss' own venv: `python benchmarks/peers.py setup`)."""

from __future__ import annotations

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))  # the scripts import their shared helpers as `peers`

import peers  # noqa: E402


def _script(name: str, *args: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run a benchmark script as `python benchmarks/NAME.py ARGS --json ...` does, in this process (no second start
    of Python and torch); its figures."""
    out = tmp_path / f"{name}.json"
    monkeypatch.setattr(sys, "argv", [str(BENCH / f"{name}.py"), *args, "--json", str(out)])
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
    figures = json.loads(out.read_text())
    assert figures["command"].startswith(f"python benchmarks/{name}.py")
    return figures


def _torchcodec_missing() -> str | None:
    try:
        import torchcodec  # noqa: F401 - fails without FFmpeg's shared libraries too
    except Exception as exc:
        return (
            f"torchcodec is not usable here ({type(exc).__name__}): pip install -e '.[bench]' and Debian's FFmpeg libs"
        )
    return None


def test_peak_memory_is_measured() -> None:
    _, mem = peers.measure_peak(lambda: np.ones(40 * 2**20 // 8).sum())
    assert mem["extra_mib"] >= 35 and mem["peak_rss_mib"] >= mem["extra_mib"] and mem["seconds"] >= 0


def test_decode_against_torchcodec_and_pyav(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if reason := _torchcodec_missing():
        pytest.skip(reason)
    figures = _script(
        "decode",
        "--quick",
        "--videos",
        "1",
        "--seconds",
        "1",
        "--resolution",
        "160x96",
        "--rounds",
        "1",
        "--no-loader",
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
    )
    got = figures["peers"]
    assert got["max_abs_diff_from_ours"]["torchcodec_full"] == 0  # the same frames, bit for bit
    assert got["max_abs_diff_from_ours"]["pyav_seek_full"] == 0
    assert got["ms_per_clip"]["ours"] > 0 and got["ratio_torchcodec_over_ours"] > 0


def test_evaluate_against_torchreid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("torchreid") is None:
        pytest.skip("torchreid is not installed: pip install -e '.[bench]'")
    figures = _script(
        "evaluate",
        "--size",
        "200",
        "2000",
        "--memory-size",
        "200",
        "4000",
        "--peer-mem-queries",
        "100",
        "--no-naive",
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
    )
    tr = figures["torchreid"]
    assert tr["identical_1e-6"] and tr["max_abs_diff"] < 1e-6, tr
    assert tr["path"] in ("python", "cython")
    assert figures["memory_torchreid"]["scaled_extra_mib"] > 0 and figures["memory_ours"]["extra_mib"] > 0


def test_rerank_against_torchreid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "torchreid" not in sys.modules and importlib.util.find_spec("torchreid") is None:
        pytest.skip("torchreid is not installed: pip install -e '.[bench]'")
    figures = _script("rerank", "--queries", "60", "--gallery", "300", tmp_path=tmp_path, monkeypatch=monkeypatch)
    ours, theirs = figures["ours"], figures["torchreid"]
    assert ours["seconds"] > 0 and theirs["seconds"] > 0 and ours["extra_mib"] >= 0
    # the same method up to the distance scaling: re-ranking helps both, and by about as much
    assert ours["mAP"] > figures["plain"]["mAP"] and theirs["mAP"] > figures["plain"]["mAP"]
    assert abs(ours["mAP"] - theirs["mAP"]) < 0.02


def test_search_against_autofaiss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not peers.venv_ready("autofaiss", peers.peers_dir()):
        pytest.skip(f"no autofaiss venv under {peers.peers_dir()}: python benchmarks/peers.py setup autofaiss")
    figures = _script(
        "search", "--n", "2000", "--qps-seconds", "0.1", "--no-peer-install", tmp_path=tmp_path, monkeypatch=monkeypatch
    )
    af = figures["autofaiss"]
    assert af["index_key"] and af["runs"][0]["recall_at_10"] > 0.5
    assert all(r["qps_batch1"] > 0 and r["ratio_batch256"] > 0 for r in af["runs"])


def test_audit_against_cleanlab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("cleanlab") is None:
        pytest.skip("cleanlab is not installed: pip install -e '.[bench]'")
    figures = _script(
        "audit_peers",
        "--quick",
        "--identities",
        "8",
        "--epochs",
        "1",
        "--folds",
        "2",
        tmp_path=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert figures["rows"] == 16 and figures["folds"] == 2
    for key in ("ours", "cleanlab_in_sample", "cleanlab_cv", "ours_on_cv_probs"):
        assert 0 <= figures[key]["auroc"] <= 1, key


def test_cleanlab_ranking_and_folds() -> None:
    if importlib.util.find_spec("cleanlab") is None:
        pytest.skip("cleanlab is not installed: pip install -e '.[bench]'")
    spec = importlib.util.spec_from_file_location("vidret_audit_peers", BENCH / "audit_peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    given = np.repeat(np.arange(4), 10)
    wrong = rng.random(40) < 0.3
    probs = np.full((40, 4), 0.02)
    probs[np.arange(40), np.where(wrong, (given + 1) % 4, given)] = 0.94  # confident in the true class
    res = mod.cleanlab_scores(given, probs, wrong, [5, int(wrong.sum())])
    assert res["auroc"] == pytest.approx(1.0) and res["flagged_precision"] == 1.0
    assert mod.ours_scores(given, probs, wrong, [5])["auroc"] == pytest.approx(1.0)
    folds = mod.folds_of(given, 4, seed=0)
    assert sorted(np.bincount(folds)) == [10, 10, 10, 10]
    assert all(len(set(folds[given == c])) == 4 for c in range(4))  # every class in every fold

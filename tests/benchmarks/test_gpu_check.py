"""benchmarks/gpu_check.sh on this machine (no GPU: the GPU parts skip, saying so) and its pieces: picking and
installing carried wheels, reading pytest's report, the benchmark's figures and verdicts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = _load("vidret_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
bench = _load("vidret_bench_train", ROOT / "benchmarks" / "train.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run of the script: this machine has a GPU")
def test_the_script_runs_on_a_cpu_machine_and_skips_the_gpu_parts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable, "VIDRET_GPU_DATA": "", "VIDRET_WHEELS": ""},
    )
    text = res.stdout
    assert res.returncode == 0, text[-4000:] + res.stderr[-3000:]
    assert "vidret GPU check: summary" in text and "gpu_check: " in text and " 0 failed" in text, text[-3000:]
    assert "no CUDA GPU" in text  # said, not silent
    summary = json.loads((out / "summary.json").read_text())
    checks = {c["name"]: c for c in summary["checks"]}
    assert summary["exit_code"] == 0
    assert checks["CUDA"]["status"] == "skip" and "torch.cuda.is_available() is False" in checks["CUDA"]["detail"]
    assert checks["environment"]["status"] == "pass" and checks["data"]["status"] == "pass"
    gpu_tests = [c for name, c in checks.items() if name.startswith("test test_")]
    assert len(gpu_tests) >= 8, sorted(checks)
    assert all(c["status"] == "skip" and "needs a CUDA GPU" in c["detail"] for c in gpu_tests), gpu_tests
    assert checks["benchmark (GPU)"]["status"] == "skip"
    assert checks["benchmark (CPU smoke)"]["status"] == "pass", checks["benchmark (CPU smoke)"]
    runs = summary["bench"]["results"]
    assert {(r["mode"], r["workers"]) for r in runs} == {("compute-only", 0), ("pipeline", 1)}
    assert all(r["clips_per_s"] > 0 and r["gpu_util"] is None and r["gpu_util_source"] == "n/a" for r in runs)
    assert summary["goals"] == []  # no verdicts off a GPU
    assert sorted(p.name for p in out.iterdir()) == [
        "bench.json",
        "bench.log",
        "summary.json",
        "summary.txt",
        "tests.log",
        "tests.xml",
    ]


def test_a_missing_dataset_and_missing_wheels_fail_clearly(tmp_path: Path) -> None:
    st = gpu_check.State(out=tmp_path, scratch=tmp_path, deadline=1e18, env=dict(os.environ))
    gpu_check.step_data(st, sys.executable, tmp_path / "nowhere", "quick")
    assert st.checks[-1].status == "fail" and "lacks train.csv" in st.checks[-1].detail
    st.probe = {"modules": {"av": None}}
    gpu_check.step_data(st, sys.executable, None, "quick")
    assert st.checks[-1].status == "fail" and "--data" in st.checks[-1].detail


def _wheel(folder: Path, dist: str, version: str, module: str) -> Path:
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_carried_wheels_are_picked_by_name_and_installed_without_the_network(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    old = _wheel(wheels, "vidret_fake_dep", "1.2", "vidret_fake_dep")
    new = _wheel(wheels, "vidret_fake_dep", "1.10", "vidret_fake_dep")
    _wheel(wheels, "other", "1.0", "other")
    found, missing = gpu_check.wheels_for(["vidret-fake-dep", "decord"], wheels)
    assert found == [new] and old not in found and missing == ["decord"]  # 1.10 is newer than 1.2
    site = tmp_path / "site"
    res = gpu_check.install(sys.executable, found, site)
    assert res.returncode == 0, res.stderr
    check = subprocess.run(
        [sys.executable, "-c", "import vidret_fake_dep; print(vidret_fake_dep.VERSION)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert check.stdout.strip() == "1.10"


def test_the_environment_step_installs_what_is_missing_from_the_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "vidret_fake_dep", "0.1", "vidret_fake_dep")
    # a small set to look for (the real one imports every heavy module twice): one present, one to install
    monkeypatch.setattr(gpu_check, "REQUIRED", {"numpy": "numpy"})
    monkeypatch.setattr(gpu_check, "OPTIONAL", {"vidret_fake_dep": "vidret-fake-dep"})
    st = gpu_check.State(
        out=tmp_path, scratch=tmp_path / "scratch", deadline=1e18, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert gpu_check.step_environment(st, sys.executable, wheels)
    names = {c.name: c for c in st.checks}
    assert names["install wheels"].status == "pass" and "vidret_fake_dep-0.1" in names["install wheels"].detail
    assert st.probe["modules"]["vidret_fake_dep"] == "0.1"
    assert names["environment"].status == "pass"


def test_junit_results_become_rows(tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite>
        <testcase classname="tests.gpu.test_a" name="test_ok" time="1.5"/>
        <testcase classname="tests.gpu.test_a" name="test_bad[x]" time="0.1"><failure message="assert 1 == 2">
            long traceback</failure></testcase>
        <testcase classname="tests.gpu.test_b" name="test_skip" time="0"><skipped type="pytest.skip"
            message="needs a CUDA GPU: no"/></testcase>
        <testcase classname="tests.gpu.test_b" name="test_err" time="0"><error message="">boom
            more</error></testcase>
        </testsuite></testsuites>""")
    rows = gpu_check.parse_junit(xml)
    assert [(r.name, r.status, r.detail) for r in rows] == [
        ("test test_a.py::test_ok", "pass", ""),
        ("test test_a.py::test_bad[x]", "fail", "assert 1 == 2"),
        ("test test_b.py::test_skip", "skip", "needs a CUDA GPU: no"),
        ("test test_b.py::test_err", "fail", "boom"),
    ]
    assert rows[0].seconds == 1.5


def _m(mode: str, workers: int, clips: float, wait: float, device: str = "cuda:0") -> object:
    return bench.Measurement(
        "r2plus1d_18",
        16,
        112,
        16,
        mode,
        workers,
        device,
        "bf16",
        768,
        1,
        clips,
        wait,
        clips,
        wait,
        90.0 if device != "cpu" else None,
        "torch.cuda.utilization",
        10.0,
    )


def test_verdicts_judge_the_steady_figures_against_compute_only() -> None:
    results = [
        _m("compute-only", 0, 1000.0, 0.0),
        _m("pipeline", 8, 600.0, 0.05),
        _m("pipeline", 0, 100.0, 0.9),
        _m("pipeline", 4, 400.0, 0.08),
    ]
    vs = {v["workers"]: v for v in bench.verdicts(results)}
    assert vs[8]["steady_ratio_to_compute_only"] == pytest.approx(0.6)
    assert vs[8]["wait_goal_met"] and vs[8]["ratio_goal_met"]
    assert not vs[0]["wait_goal_met"] and not vs[0]["ratio_goal_met"]
    assert vs[4]["wait_goal_met"] and not vs[4]["ratio_goal_met"]  # 0.4x
    rows = gpu_check.goal_rows({"verdicts": list(vs.values())})
    assert [r.status for r in rows] == ["pass", "pass"] and "--workers 8" in rows[0].detail
    text = bench.report(results)
    assert "MISSED" in text and "0.60x" in text
    cpu = bench.verdicts([_m("compute-only", 0, 10.0, 0.0, "cpu"), _m("pipeline", 2, 8.0, 0.1, "cpu")])
    assert cpu[0]["wait_goal_met"] is None and cpu[0]["ratio_goal_met"] is None  # no goals off a GPU
    assert gpu_check.goal_rows({"verdicts": cpu}) == []


def test_summarise_skips_the_warm_up_epoch_and_reads_the_steady_half() -> None:
    def epoch(waits: list[float], step: float) -> object:
        t, timing = 0.0, bench.EpochTiming()
        for w in waits:
            timing.asked.append(t)
            timing.got.append(t + w)
            timing.sizes.append(4)
            t += w + step
        timing.end = t
        return timing

    timings = [epoch([5.0, 5.0], 1.0), epoch([1.0, 1.0, 0.0, 0.0], 1.0)]
    history = [{"clips_per_s": 8 / 12, "data_wait_share": 10 / 12}, {"clips_per_s": 16 / 6, "data_wait_share": 2 / 6}]
    fig = bench.summarise(history, timings)
    assert fig["epochs_measured"] == 1 and fig["clips_measured"] == 16
    assert fig["clips_per_s"] == pytest.approx(16 / 6) and fig["data_wait_share"] == pytest.approx(1 / 3)
    assert fig["steady_wait_share"] == 0.0 and fig["steady_clips_per_s"] == pytest.approx(8 / 2)
    one = bench.summarise(history[:1], timings[:1])  # a single epoch is measured as it is
    assert one["epochs_measured"] == 1 and one["data_wait_share"] == pytest.approx(10 / 12)


def test_gpu_utilisation_is_not_available_off_a_gpu() -> None:
    sampler = bench.UtilSampler(torch.device("cpu")).start()
    sampler.stop()
    assert sampler.source == "n/a" and sampler.mean([(0.0, 1e18)]) is None


def test_repeated_manifest_lists_every_video_again_under_new_ids(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("path,id,label,camera\nvideos/a.mp4,a,x,c1\n/abs/b.mp4,b,y,c2\n")
    out = bench.repeated_manifest(tmp_path / "train.csv", tmp_path / "r" / "train.csv", 3)
    lines = out.read_text().splitlines()
    assert (
        len(lines) == 1 + 6 and lines[1] == f"{tmp_path}/videos/a.mp4,a#0,x,c1" and lines[-1] == "/abs/b.mp4,b#2,y,c2"
    )
    assert bench.repeated_manifest(tmp_path / "train.csv", tmp_path / "x.csv", 1) == tmp_path / "train.csv"


def test_the_benchmark_keeps_its_plain_defaults() -> None:
    args = bench.parse_args([])
    assert args.device == "auto" and args.epochs == 2 and args.batch_size == 8 and len(args.workers) == 1
    assert bench.cases(args) == [("tiny3d", 16, 112), ("r2plus1d_18", 8, 112)]
    assert bench.cases(bench.parse_args(["--quick"])) == [("tiny3d", 8, 64)]
    gpu = bench.parse_args(
        ["--device", "cuda", "--model", "r2plus1d_18", "--frames", "16", "--size", "112", "--workers", "0", "4", "8"]
    )
    assert gpu.workers == [0, 4, 8] and bench.cases(gpu) == [("r2plus1d_18", 16, 112)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--frames", "8"])  # --frames goes with --model


def test_the_gpu_run_asks_the_benchmark_for_the_issue_s_case(tmp_path: Path) -> None:
    cmd = gpu_check.bench_command("python", tmp_path / "b.json", tmp_path / "data", True, "full", [8, 4, 0])
    assert cmd[:2] == ["python", "benchmarks/train.py"]
    args = bench.parse_args(cmd[2:])
    assert (args.device, args.model, args.frames, args.size, args.workers) == (
        "cuda",
        "r2plus1d_18",
        16,
        112,
        [8, 4, 0],
    )
    assert args.data == tmp_path / "data" and args.json == tmp_path / "b.json" and args.epochs >= 2

"""The GPU path, checked on a GPU in one go: the tests marked ``gpu`` and the training benchmark, one summary.

    bash benchmarks/gpu_check.sh --wheels .whl --out "$OUT"      # on a CUDA machine; nothing from the network
    bash benchmarks/gpu_check.sh --quick                         # anywhere: without a GPU the GPU parts are skipped
    bash benchmarks/gpu_check.sh --prepare-wheels .whl           # on a machine with a package registry
    bash benchmarks/gpu_check.sh --prepare-data .gpudata         # a dataset to carry (for a device without PyAV)

Steps, each a row of the summary (pass / fail / skip, with the reason):

1. environment: the Python modules vidret's training path imports. A missing one is installed from ``--wheels DIR``
   (``pip install --no-index --no-deps --target``, into a scratch folder put on PYTHONPATH; the environment itself
   is left alone), never from the network;
2. data: ``--data DIR`` (a carried dataset with train/query/gallery.csv), else one synthesised here (needs PyAV);
3. tests: ``pytest -m gpu tests/gpu`` (each test a row; without CUDA they skip, saying why);
4. benchmark: on a GPU, benchmarks/train.py with r2plus1d_18 at 16x112 for --workers 8 4 0 (clips/s, data wait,
   GPU utilisation, and the same steps on clips already on the GPU); without one, a small CPU run that checks the
   benchmark itself (no verdicts);
5. the goals on a GPU: data wait <= 10% of step time and >= 0.5x the compute-only speed (steady state).

It exits 1 when any check that ran failed (a missed goal only with --require-goals), else 0. Everything stays
inside ``--budget`` seconds (480 by default, the tests and the benchmark get what is left); ``--out`` receives
summary.txt, summary.json, bench.json, tests.xml and the two logs (at most 8 files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What the training path imports (module -> distribution): missing ones come from --wheels.
REQUIRED = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "PIL": "pillow",
    "typer": "typer",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
    "decord": "decord",
    "pytest": "pytest",
}
# Useful, not required: PyAV writes the synthetic data (and decodes what decord cannot), pytest-timeout reads
# pyproject's timeout, pynvml gives torch.cuda.utilization, faiss the GPU index test.
OPTIONAL = {"av": "av", "pytest_timeout": "pytest-timeout", "pynvml": "nvidia-ml-py", "faiss": "faiss-gpu-cu12"}
# What --prepare-wheels fetches by default: what the device image lacks (torch, numpy & co. are there).
DEVICE_WHEELS = ("decord==0.6.0", "av")
CARRY_LIMIT_MIB = 64

# Sizes: the dataset, the benchmark. "full" fits the 8 minutes on one H100; "quick" is the CPU smoke size.
SIZES = {
    "full": {
        "data": {"identities": 48, "cameras": 2, "clips_per_camera": 2, "frames": 32, "size": 128},
        "bench": [
            "--model",
            "r2plus1d_18",
            "--frames",
            "16",
            "--size",
            "112",
            "--batch-size",
            "16",
            "--epochs",
            "2",
            "--repeat",
            "12",
        ],
    },
    "quick": {
        "data": {"identities": 4, "cameras": 2, "clips_per_camera": 2, "frames": 8, "size": 48},
        "bench": ["--model", "tiny3d", "--frames", "4", "--size", "32", "--batch-size", "2", "--epochs", "1"],
    },
}


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip
    detail: str = ""
    seconds: float = 0.0


@dataclass
class State:
    out: Path
    scratch: Path
    deadline: float
    env: dict[str, str]
    checks: list[Check] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] | None = None
    data: Path | None = None
    tails: list[str] = field(default_factory=list)  # log tails of failed steps, printed before the summary

    def add(self, name: str, status: str, detail: str = "", seconds: float = 0.0) -> Check:
        c = Check(name, status, detail, seconds)
        self.checks.append(c)
        print(f"[{status}] {name}: {detail}" + (f" ({seconds:.0f} s)" if seconds else ""), flush=True)
        return c

    def left(self) -> float:
        return self.deadline - time.monotonic()


# ---- the environment -------------------------------------------------------------------------------------------------
PROBE = r"""
import importlib, importlib.metadata as md, json, sys
mods = json.loads(sys.argv[1])
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}}
for mod, dist in mods.items():
    try:
        m = importlib.import_module(mod)
        try:
            out["modules"][mod] = md.version(dist)
        except md.PackageNotFoundError:
            out["modules"][mod] = str(getattr(m, "__version__", "?"))
    except Exception as exc:
        out["modules"][mod] = None
        out.setdefault("errors", {})[mod] = f"{type(exc).__name__}: {exc}"[:200]
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda"] = bool(torch.cuda.is_available())
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        out["bf16"] = bool(torch.cuda.is_bf16_supported())
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
except Exception as exc:
    out["cuda"] = False
    out["torch_error"] = f"{type(exc).__name__}: {exc}"[:200]
if out["modules"].get("faiss"):
    import faiss
    out["faiss_gpu"] = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
print("PROBE " + json.dumps(out))
"""


def probe(python: str, env: dict[str, str]) -> dict[str, Any]:
    mods = {**REQUIRED, **OPTIONAL}
    res = subprocess.run([python, "-c", PROBE, json.dumps(mods)], capture_output=True, text=True, env=env, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")), None)
    if line is None:
        raise RuntimeError(f"the environment probe failed: {(res.stderr or res.stdout)[-1500:]}")
    return json.loads(line[len("PROBE ") :])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheels_for(dists: list[str], folder: Path) -> tuple[list[Path], list[str]]:
    """The wheel files in ``folder`` for these distributions (the newest version of each), and those without one."""
    found: list[Path] = []
    missing: list[str] = []
    for dist in dists:
        cands = sorted(
            (w for w in folder.glob("*.whl") if _norm(w.name.split("-")[0]) == _norm(dist)),
            key=lambda w: [int(x) if x.isdigit() else x for x in re.split(r"[.+]", w.name.split("-")[1])],
        )
        if cands:
            found.append(cands[-1])
        else:
            missing.append(dist)
    return found, missing


def install(python: str, wheels: list[Path], target: Path) -> subprocess.CompletedProcess[str]:
    """pip install exactly these wheel files into ``target`` (no index, no dependencies, no network)."""
    target.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
            str(target),
            *map(str, wheels),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def step_environment(st: State, python: str, wheel_dir: Path | None) -> bool:
    t0 = time.monotonic()
    st.probe = probe(python, st.env)
    mods = st.probe["modules"]
    missing = [m for m in {**REQUIRED, **OPTIONAL} if mods.get(m) is None and m not in ("faiss", "pynvml")]
    if missing and wheel_dir is not None:
        dists = [{**REQUIRED, **OPTIONAL}[m] for m in missing]
        found, absent = wheels_for(dists, wheel_dir)
        if found:
            site = st.scratch / "site"
            res = install(python, found, site)
            if res.returncode != 0:
                st.add(
                    "install wheels",
                    "fail",
                    f"pip install from {wheel_dir} failed: {res.stderr.strip()[-400:]}",
                    time.monotonic() - t0,
                )
                return False
            st.env["PYTHONPATH"] = os.pathsep.join([str(site), st.env["PYTHONPATH"]])
            st.probe = probe(python, st.env)
            mods = st.probe["modules"]
            st.add(
                "install wheels",
                "pass",
                f"{', '.join(w.name for w in found)} from {wheel_dir}"
                + (f"; no wheel for {', '.join(absent)}" if absent else ""),
                time.monotonic() - t0,
            )
        else:
            st.add("install wheels", "skip", f"{wheel_dir} has no wheel for {', '.join(absent)}")
    elif missing:
        st.add("install wheels", "skip", "no --wheels DIR given")
    else:
        st.add("install wheels", "skip", "nothing missing")
    lacking = [m for m in REQUIRED if mods.get(m) is None]
    versions = ", ".join(f"{m} {v}" for m, v in mods.items() if v)
    absent_opt = [m for m in OPTIONAL if mods.get(m) is None]
    detail = f"Python {st.probe['python']}, {versions}" + (
        f"; not installed: {', '.join(absent_opt)}" if absent_opt else ""
    )
    if lacking:
        errs = st.probe.get("errors", {})
        st.add(
            "environment",
            "fail",
            f"missing {', '.join(f'{m} ({errs.get(m, REQUIRED[m])})' for m in lacking)}"
            f" (pass --wheels DIR; make it with --prepare-wheels DIR); {detail}",
            time.monotonic() - t0,
        )
        return False
    st.add("environment", "pass", detail, time.monotonic() - t0)
    if st.probe.get("cuda"):
        p = st.probe
        st.add(
            "CUDA",
            "pass",
            f"{p['gpu']} (sm {p['capability']}, {p['gpu_memory_gib']} GiB, bf16 "
            f"{'yes' if p['bf16'] else 'no'}), torch {p['torch']} CUDA {p['torch_cuda']}",
        )
    else:
        built = st.probe.get("torch_cuda")
        st.add(
            "CUDA",
            "skip",
            f"no CUDA GPU: torch.cuda.is_available() is False (torch {st.probe.get('torch')}, "
            + (f"built for CUDA {built})" if built else "a CPU-only build)")
            + ": the GPU tests and the GPU benchmark are skipped",
        )
    return True


# ---- data ------------------------------------------------------------------------------------------------------------
def synth_command(python: str, out: Path, sizes: dict[str, int], workers: int) -> list[str]:
    cmd = [
        python,
        "-m",
        "service.cli",
        "data",
        "synth",
        str(out),
        "--noise",
        "0.2",
        "--seed",
        "0",
        "--workers",
        str(workers),
    ]
    for k, v in sizes.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def dataset_problem(folder: Path) -> str | None:
    lacking = [f for f in ("train.csv", "query.csv", "gallery.csv") if not (folder / f).is_file()]
    return f"{folder} lacks {', '.join(lacking)}" if lacking else None


def step_data(st: State, python: str, data: Path | None, size: str) -> None:
    t0 = time.monotonic()
    if data is not None:
        problem = dataset_problem(data)
        if problem:
            st.add("data", "fail", problem)
            return
        st.data = data.resolve()
        n = len((data / "train.csv").read_text().splitlines()) - 1
        st.add("data", "pass", f"carried: {data} ({n} training videos)")
        return
    if st.probe["modules"].get("av") is None:
        st.add(
            "data",
            "fail",
            "no dataset: PyAV (av) is not installed to write one; carry its wheel in --wheels, "
            "or a dataset made elsewhere with --prepare-data DIR and pass --data DIR",
        )
        return
    out = st.scratch / "data"
    res = subprocess.run(
        synth_command(python, out, SIZES[size]["data"], min(16, os.cpu_count() or 1)),
        capture_output=True,
        text=True,
        env=st.env,
        cwd=ROOT,
        timeout=max(30, int(st.left())),
    )
    if res.returncode != 0:
        st.tails.append(f"--- data synth\n{(res.stderr or res.stdout)[-2000:]}")
        st.add("data", "fail", f"vidret data synth failed (exit {res.returncode})", time.monotonic() - t0)
        return
    st.data = out
    st.add("data", "pass", f"synthesised: {res.stdout.strip().splitlines()[-1]}", time.monotonic() - t0)


# ---- tests -----------------------------------------------------------------------------------------------------------
def parse_junit(path: Path) -> list[Check]:
    """Every test case of a JUnit XML report: pass, fail (failure or error) or skip, with the message."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        name = re.sub(r"^tests/gpu/", "", name)
        status, detail = "pass", ""
        for tag, mapped in (("failure", "fail"), ("error", "fail"), ("skipped", "skip")):
            el = case.find(tag)
            if el is not None:
                text = (el.get("message") or el.text or tag).strip() or tag
                status, detail = mapped, text.splitlines()[0][:300]
                break
        rows.append(Check(f"test {name}", status, detail, float(case.get("time") or 0)))
    return rows


def pytest_command(python: str, junit: Path, per_test_timeout: int, has_timeout_plugin: bool) -> list[str]:
    cmd = [
        python,
        "-m",
        "pytest",
        "tests/gpu",
        "-m",
        "gpu",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "--junitxml",
        str(junit),
        "-o",
        "junit_family=xunit1",
    ]
    if has_timeout_plugin:
        cmd.append(f"--timeout={per_test_timeout}")
    return cmd


def step_tests(st: State, python: str, limit: float) -> None:
    t0 = time.monotonic()
    junit, log = st.out / "tests.xml", st.out / "tests.log"
    junit.unlink(missing_ok=True)
    env = dict(st.env)
    if st.data is not None:
        env["VIDRET_GPU_DATA"] = str(st.data)
    if st.probe.get("cuda"):
        env["VIDRET_REQUIRE_GPU"] = "1"  # on a GPU machine a test that cannot reach the GPU fails, not skips
    cmd = pytest_command(
        python, junit, int(max(60, min(limit, 240))), st.probe["modules"].get("pytest_timeout") is not None
    )
    timed_out = False
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=max(10, limit)
            ).returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = -1, True
    secs = time.monotonic() - t0
    rows = parse_junit(junit) if junit.is_file() else []
    for r in rows:
        st.add(r.name, r.status, r.detail, r.seconds)
    text = log.read_text(errors="replace")
    if timed_out:
        st.add("tests", "fail", f"timed out after {limit:.0f} s ({len(rows)} results before that)", secs)
    elif rc not in (0, 5) or any(r.status == "fail" for r in rows) or (rc != 0 and not rows):
        st.add("tests", "fail", f"pytest exit {rc}" + ("" if rows else ": no results (see tests.log)"), secs)
    else:
        counts = {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "skip")}
        st.add(
            "tests",
            "skip" if rows and counts["pass"] == 0 else "pass",
            f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped",
            secs,
        )
    if st.checks[-1].status == "fail":
        st.tails.append("--- tests.log (end)\n" + "\n".join(text.splitlines()[-60:]))


# ---- benchmark -------------------------------------------------------------------------------------------------------
def bench_command(
    python: str, json_path: Path, data: Path | None, on_gpu: bool, size: str, workers: list[int]
) -> list[str]:
    cmd = [
        python,
        "benchmarks/train.py",
        "--device",
        "cuda" if on_gpu else "cpu",
        *SIZES[size]["bench"],
        "--workers",
        *map(str, workers),
        "--json",
        str(json_path),
    ]
    return cmd + (["--data", str(data)] if data is not None else [])


def step_bench(st: State, python: str, size: str, workers: list[int], limit: float, cpu_smoke: bool) -> None:
    on_gpu = bool(st.probe.get("cuda"))
    name = "benchmark (GPU)" if on_gpu else "benchmark (CPU smoke)"
    if not on_gpu:
        st.add("benchmark (GPU)", "skip", "no CUDA GPU")
        if not cpu_smoke:
            return
        size, workers = "quick", [1]  # checks the benchmark itself (both loaders, a worker), at the smallest size
    if st.data is None:
        st.add(name, "fail", "no dataset (see the data row)")
        return
    t0 = time.monotonic()
    json_path, log = st.out / "bench.json", st.out / "bench.log"
    json_path.unlink(missing_ok=True)
    timed_out = False
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(
                bench_command(python, json_path, st.data, on_gpu, size, workers),
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=st.env,
                cwd=ROOT,
                timeout=max(10, limit),
            ).returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = -1, True
    secs = time.monotonic() - t0
    st.bench = json.loads(json_path.read_text()) if json_path.is_file() else None
    runs = len(st.bench["results"]) if st.bench else 0
    if timed_out or rc != 0:
        why = f"timed out after {limit:.0f} s" if timed_out else f"exit {rc}"
        st.add(name, "fail", f"{why}; {runs} run(s) finished before (bench.log)", secs)
        st.tails.append("--- bench.log (end)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    else:
        st.add(name, "pass", f"{runs} run(s); figures below", secs)


def goal_rows(bench: dict[str, Any] | None) -> list[Check]:
    """The goals on a GPU, judged on the best --workers measured (steady state): one row each."""
    if not bench:
        return []
    vs = [v for v in bench.get("verdicts", []) if v.get("wait_goal_met") is not None]
    if not vs:
        return []
    best = max(
        vs,
        key=lambda v: (
            bool(v["wait_goal_met"]) + bool(v["ratio_goal_met"]),
            v.get("steady_ratio_to_compute_only") or 0,
        ),
    )
    ratio = best.get("steady_ratio_to_compute_only")
    return [
        Check(
            "goal: data wait <= 10% of step time",
            "pass" if best["wait_goal_met"] else "fail",
            f"{best['steady_wait_share']:.1%} with --workers {best['workers']} ({best['model']} "
            f"{best['frames']}x{best['size']}, steady state; {best['data_wait_share']:.1%} per epoch)",
        ),
        Check(
            "goal: step >= 0.5x compute-only",
            "pass" if best["ratio_goal_met"] else "fail",
            f"{ratio:.2f}x with --workers {best['workers']} (steady state; "
            f"{best['ratio_to_compute_only'] or 0:.2f}x per epoch)"
            if ratio is not None
            else "n/a",
        ),
    ]


def bench_table(bench: dict[str, Any] | None) -> list[str]:
    if not bench:
        return []
    res = bench["results"]
    lines = [f"benchmark: {bench['machine'].get('gpu', bench['machine']['device'])}, {bench['machine']['cpus']} CPUs"]
    lines.append(
        f"  {'model':<12} {'clips':>6} {'mode':<13} {'workers':>7} {'clips/s':>8} {'wait':>5} "
        f"{'steady c/s':>10} {'s.wait':>6} {'GPU util':>8} {'vs c-o (steady)':>15}"
    )
    base = {(r["model"], r["frames"], r["size"]): r for r in res if r["mode"] == "compute-only"}
    for r in sorted(res, key=lambda r: (r["model"], r["mode"] != "compute-only", r["workers"])):
        b = base.get((r["model"], r["frames"], r["size"]))
        ratio = (
            f"{r['steady_clips_per_s'] / b['steady_clips_per_s']:.2f}x"
            if b and r["mode"] == "pipeline" and b["steady_clips_per_s"]
            else ""
        )
        util = "n/a" if r["gpu_util"] is None else f"{r['gpu_util']:.0f}%"
        lines.append(
            f"  {r['model']:<12} {r['frames']:>2}x{r['size']:<3} {r['mode']:<13} "
            f"{r['workers'] if r['mode'] == 'pipeline' else '-':>7} {r['clips_per_s']:>8.1f} "
            f"{r['data_wait_share']:>5.0%} {r['steady_clips_per_s']:>10.1f} {r['steady_wait_share']:>6.0%} "
            f"{util:>8} {ratio:>15}"
        )
    return lines


# ---- summary ---------------------------------------------------------------------------------------------------------
def _shorten(name: str, width: int) -> str:
    """``name`` in ``width`` characters: its start and its end (a test's parameters) kept."""
    if len(name) <= width:
        return name
    tail = min(len(name) - name.find("[") if "[" in name else 12, width // 2)
    return name[: width - tail - 3] + "..." + name[-tail:]


def summary_text(st: State, require_goals: bool) -> tuple[str, int]:
    goals = goal_rows(st.bench)
    rows = st.checks + goals
    width = min(64, max(len(c.name) for c in rows))
    lines = ["", "=" * 100, "vidret GPU check: summary", "=" * 100]
    for c in rows:
        lines.append(f"{c.status.upper():<5} {_shorten(c.name, width):<{width}}  {c.detail}")
    lines += bench_table(st.bench)
    failed = [c for c in st.checks if c.status == "fail"] + (
        [g for g in goals if g.status == "fail"] if require_goals else []
    )
    counts = {s: sum(c.status == s for c in st.checks) for s in ("pass", "fail", "skip")}
    if not st.probe.get("cuda"):
        lines.append("no CUDA GPU here: the GPU tests and the GPU benchmark were skipped; run this on a GPU machine")
    lines.append(
        f"gpu_check: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
        + (f"; goals {sum(g.status == 'pass' for g in goals)}/{len(goals)} met" if goals else "")
    )
    return "\n".join(lines), 1 if failed else 0


# ---- preparing on a machine with a package registry ------------------------------------------------------------------
def prepare_wheels(folder: Path, python_version: str, specs: list[str]) -> int:
    """Download the wheels the device lacks (for its Python and manylinux x86-64), report the folder's size."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = []
    for spec in specs:
        if "=" not in spec and "<" not in spec and ">" not in spec:  # pin to the version tested here, if any
            try:
                from importlib.metadata import version

                spec = f"{spec}=={version(spec)}"
            except Exception:
                pass
        pins.append(spec)
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)] + [
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
    ]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *[a for p in platforms for a in ("--platform", p)],
        "-d",
        str(folder),
        *pins,
    ]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    total = 0
    for w in sorted(folder.glob("*.whl")):
        total += w.stat().st_size
        print(f"  {w.stat().st_size / 2**20:6.1f} MiB  {w.name}")
    print(
        f"  {total / 2**20:6.1f} MiB in all, of the {CARRY_LIMIT_MIB} MiB a device call carries (the working "
        "tree counts too)"
    )
    return rc


def prepare_data(folder: Path) -> int:
    rc = subprocess.run(
        synth_command(sys.executable, folder, SIZES["full"]["data"], min(4, os.cpu_count() or 1)), cwd=ROOT
    ).returncode
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB; carry it and pass --data {folder}")
    return rc


# ---- main ------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--wheels",
        type=Path,
        default=os.environ.get("VIDRET_WHEELS") or None,
        help="folder of wheels for what is missing (env VIDRET_WHEELS)",
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("VIDRET_GPU_DATA") or None,
        help="a dataset folder (train/query/gallery.csv); default: synthesise one (needs PyAV)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for summary.txt/.json, bench.json, tests.xml, logs (default: a new temporary folder)",
    )
    ap.add_argument("--quick", action="store_true", help="the smallest sizes (the CPU test of this script)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for everything (480)")
    ap.add_argument("--tests-budget", type=float, default=240.0, help="seconds for the tests at most (240)")
    ap.add_argument("--bench-workers", type=int, nargs="+", default=[8, 4, 0], help="--workers to measure (8 4 0)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--no-cpu-smoke", action="store_true", help="without a GPU, skip the small CPU benchmark run")
    ap.add_argument("--require-goals", action="store_true", help="exit 1 when a goal is missed on a GPU")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (data, installed wheels)")
    ap.add_argument("--prepare-wheels", type=Path, metavar="DIR", help="download the wheels to carry, then stop")
    ap.add_argument("--python-version", default="3.12", help="--prepare-wheels: the device's Python (3.12)")
    ap.add_argument(
        "--wheel",
        action="append",
        dest="wheel_specs",
        metavar="SPEC",
        help=f"--prepare-wheels: what to fetch (repeatable; default: {' '.join(DEVICE_WHEELS)})",
    )
    ap.add_argument("--prepare-data", type=Path, metavar="DIR", help="synthesise the full-size dataset, then stop")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_wheels:
        return prepare_wheels(args.prepare_wheels, args.python_version, args.wheel_specs or list(DEVICE_WHEELS))
    if args.prepare_data:
        return prepare_data(args.prepare_data)
    start = time.monotonic()
    out = (args.out or Path(tempfile.mkdtemp(prefix="vidret-gpu-check-out-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vidret-gpu-check-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p),
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
    }
    st = State(out=out, scratch=scratch, deadline=start + args.budget, env=env)
    python = sys.executable
    size = "quick" if args.quick else "full"
    print(f"vidret GPU check: {ROOT}, out {out}, budget {args.budget:.0f} s", flush=True)
    try:
        if step_environment(st, python, args.wheels):
            if not st.probe.get("cuda"):
                size = "quick"  # the data serves only the CPU smoke run (e.g. `make bench` on a CPU machine)
            step_data(st, python, args.data, size)
            if args.skip_tests:
                st.add("tests", "skip", "--skip-tests")
            else:
                reserve = 0.0 if args.skip_bench else (20.0 if args.quick or not st.probe.get("cuda") else 150.0)
                step_tests(st, python, min(args.tests_budget, st.left() - reserve))
            if args.skip_bench:
                st.add("benchmark", "skip", "--skip-bench")
            else:
                step_bench(st, python, size, args.bench_workers, st.left() - 5, not args.no_cpu_smoke)
    except Exception as exc:  # a broken step still gets its summary
        st.add("gpu_check", "fail", f"{type(exc).__name__}: {exc}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    for tail in st.tails:
        print(tail)
    text, rc = summary_text(st, args.require_goals)
    text += f"\n(total {time.monotonic() - start:.0f} s; files in {out})"
    print(text, flush=True)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "exit_code": rc,
                "seconds": round(time.monotonic() - start, 1),
                "probe": st.probe,
                "checks": [asdict(c) for c in st.checks],
                "goals": [asdict(g) for g in goal_rows(st.bench)],
                "bench": st.bench,
            },
            indent=2,
        )
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers of the side-by-side benchmarks against the tools users would pick instead (README, "Against the
tools users would pick instead"): torchcodec (benchmarks/decode.py), torchreid (benchmarks/evaluate.py), autofaiss
(benchmarks/search.py) and cleanlab (benchmarks/audit_peers.py).

Peers whose pins agree with ours are installed into our venv by the ``bench`` extra (``pip install -e '.[bench]'``).
A peer whose pins clash with ours (autofaiss pins ``numpy<2``) gets a venv of its own under the peers folder
(``--peers-dir``; default: ``peers/`` beside the repository, or ``$VIDRET_PEERS_DIR``), made by
``ensure_venv`` on first use, and runs there on the same files through this module's command line::

    <peer venv>/bin/python benchmarks/peers.py autofaiss --data DIR --out RESULT.json ...

So this module imports only the standard library at the top: the peer's venv has numpy and the peer, not vidret.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "peers"

# The venvs of peers whose pins clash with ours: name -> exact requirements (pyarrow 22+ needs numpy 2, which
# autofaiss' pins rule out).
PEER_VENVS: dict[str, list[str]] = {
    "autofaiss": ["autofaiss==2.18.0", "pyarrow<22"],
}


# ---- memory -----------------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure_peak(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn``; its result and {"seconds", "peak_rss_mib" (the process's peak resident memory while ``fn`` ran),
    "extra_mib" (that peak less the resident memory before it)}.

    Linux keeps the process's resident-memory high-water mark (VmHWM); writing 5 to /proc/self/clear_refs resets it,
    so the peak is exact, not sampled. Where that is refused the lifetime peak is reported (an upper bound)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return out, {"seconds": seconds, "peak_rss_mib": peak / 1024, "extra_mib": (peak - base) / 1024}


# ---- results ----------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_json(path: str | Path | None, figures: dict[str, Any]) -> None:
    """The figures of one run, with the command that produced them and the machine."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **figures,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    print(f"figures written to {path}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def version_of(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def add_peer_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--json", metavar="PATH", help="Write the figures (ours and the peer's) to this JSON file.")
    ap.add_argument("--no-peers", action="store_true", help="Measure ours against the naive baseline only.")


# ---- peers in their own venvs -----------------------------------------------------------------------------------
def peers_dir(given: str | Path | None = None) -> Path:
    return Path(given or os.environ.get("VIDRET_PEERS_DIR") or REPO.parent / "peers")


def venv_python(name: str, root: Path) -> Path:
    return root / name / "bin" / "python"


def _stamp(root: Path, name: str) -> Path:
    return root / name / ".vidret-requirements"


def venv_ready(name: str, root: Path) -> bool:
    stamp = _stamp(root, name)
    return venv_python(name, root).exists() and stamp.exists() and stamp.read_text().split("\n") == PEER_VENVS[name]


def ensure_venv(name: str, root: Path, install: bool = True) -> Path | None:
    """The python of peer ``name``'s own venv under ``root``, made and installed (PEER_VENVS' pins) when missing and
    ``install``; None when it is missing and may not be made, or when making it failed (the reason is printed)."""
    py = venv_python(name, root)
    if venv_ready(name, root):
        return py
    if not install:
        print(f"{name}: no venv at {root / name} (make it with `python benchmarks/peers.py setup {name}`)")
        return None
    print(f"{name}: making its own venv at {root / name} ({', '.join(PEER_VENVS[name])})")
    try:
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(root / name)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_VENVS[name]], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"{name}: could not make its venv ({exc})")
        return None
    _stamp(root, name).write_text("\n".join(PEER_VENVS[name]))
    return py


def run_peer(python: Path, command: str, args: list[str], out: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run this module's ``command`` with the peer venv's python; the JSON it writes to ``out``."""
    cmd = [str(python), str(Path(__file__).resolve()), command, *args, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": "", "TQDM_DISABLE": "1"}  # nothing of ours leaks into the peer's imports
    subprocess.run(cmd, check=True, timeout=timeout, env=env, cwd=str(out.parent))
    return json.loads(out.read_text())


# ---- torchreid ----------------------------------------------------------------------------------------------------
def load_torchreid_rank(root: str | Path | None = None) -> tuple[Any, Any, str, str] | None:
    """torchreid's ``evaluate_rank`` and ``compute_distance_matrix``, which path evaluate_rank takes ("cython" or
    "python") and where it was found; None when torchreid is not installed.

    ``root``: a ``torchreid`` package folder to load instead of the installed one, e.g. a checkout of the upstream
    repository (deep-person-reid) with its Cython extension built in place; the installed distribution and such a
    folder can both be loaded into one process. Only torchreid's metrics modules are loaded: importing the package
    itself imports its models and data sets (torchvision, gdown, ...), which its ranking does not use. Both layouts
    are found: ``torchreid/metrics`` (upstream) and ``torchreid/reid/metrics`` (the ``torchreid`` distribution)."""
    if root is None:
        spec = importlib.util.find_spec("torchreid")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = next(iter(spec.submodule_search_locations))
    root = Path(root).resolve()
    parts = next((p for p in (("reid", "metrics"), ("metrics",)) if (root.joinpath(*p) / "rank.py").is_file()), None)
    if parts is None:
        return None
    names = ["torchreid"] + [".".join(["torchreid", *parts[: i + 1]]) for i in range(len(parts))]
    for i, name in enumerate(names):  # bare packages: their __init__ files are not run
        folder = str(root.joinpath(*parts[:i]))
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
        if folder not in sys.modules[name].__path__:
            sys.modules[name].__path__.append(folder)
    loaded = {}
    for mod in ("rank", "distance"):
        full = f"{names[-1]}.{mod}"
        mspec = importlib.util.spec_from_file_location(full, root.joinpath(*parts) / f"{mod}.py")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[full] = module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cython evaluation ... is unavailable, now use python evaluation."
            mspec.loader.exec_module(module)
        loaded[mod] = module
    path = "cython" if getattr(loaded["rank"], "IS_CYTHON_AVAI", False) else "python"
    return loaded["rank"].evaluate_rank, loaded["distance"].compute_distance_matrix, path, str(root.joinpath(*parts))


# ---- the commands that run inside a peer's venv -------------------------------------------------------------------
def _qps(search: Callable[[Any], Any], q: Any, batch: int, seconds: float) -> float:
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in range(0, len(q), batch):
            search(q[s : s + batch])
            done += len(q[s : s + batch])
            if time.perf_counter() - t0 >= seconds:
                break
    return done / (time.perf_counter() - t0)


def recall_at_k(found: Any, truth: Any) -> float:
    import numpy as np

    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


def _search_knob(index: Any) -> tuple[str | None, list[int]]:
    """The search parameter that trades recall for speed in an autofaiss index, and the values to try."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return "nprobe", sorted({min(int(ivf.nlist), 2**i) for i in range(17)})
    if "HNSW" in type(faiss.downcast_index(index)).__name__:
        return "efSearch", [10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096]
    return None, []


def autofaiss_command(
    data: Path, out: Path, memory_mb: float, target_recall: float, qps_seconds: float, cores: int | None
) -> None:
    """Build an index of DATA/emb/*.npy with autofaiss' ``build_index`` (inner product, our memory budget); its
    recall@10 against DATA/truth.npy and queries/s at batch 1 and 256 with the search parameters autofaiss chose;
    then with the smallest nprobe / efSearch that reaches ``target_recall`` (ours) on the same queries."""
    import faiss
    import numpy as np
    from autofaiss import build_index

    q = np.load(data / "queries.npy")
    truth = np.load(data / "truth.npy")
    index_path = out.parent / "autofaiss.index"

    def build() -> tuple[Any, dict]:
        return build_index(
            embeddings=str(data / "emb"),
            index_path=str(index_path),
            index_infos_path=str(out.parent / "autofaiss_infos.json"),
            metric_type="ip",
            max_index_memory_usage=f"{int(memory_mb)}M",
            current_memory_available="8G",
            nb_cores=cores,
            verbose=30,
        )

    (index, infos), mem = measure_peak(build)
    index_bytes = index_path.stat().st_size if index_path.exists() else len(faiss.serialize_index(index))

    def measure(label: str) -> dict[str, Any]:
        _, found = index.search(q, truth.shape[1])
        return {
            "setting": label,
            "recall_at_10": recall_at_k(found, truth),
            "qps_batch1": _qps(lambda b: index.search(b, 10), q, 1, qps_seconds),
            "qps_batch256": _qps(lambda b: index.search(b, 10), q, 256, qps_seconds),
        }

    chosen = infos.get("index_param") or ""
    runs = [measure(f"autofaiss' choice ({chosen})")]
    name, grid = _search_knob(index)
    if name is not None:  # the smallest setting reaching the target on these queries (it favours autofaiss)
        space = faiss.ParameterSpace()
        value = grid[-1]
        for value in grid:
            space.set_index_parameter(index, name, value)
            _, found = index.search(q, truth.shape[1])
            if recall_at_k(found, truth) >= target_recall:
                break
        runs.append(measure(f"{name}={value}, the smallest reaching recall {target_recall:.4f} on these queries"))
    result = {
        "autofaiss": version_of("autofaiss"),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "index_key": infos.get("index_key"),
        "index_param": chosen,
        "build_seconds": mem["seconds"],
        "build_extra_mib": mem["extra_mib"],
        "build_peak_rss_mib": mem["peak_rss_mib"],
        "index_mib": index_bytes / 2**20,
        "runs": runs,
        "infos": infos,
    }
    out.write_text(json.dumps(result, indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    setup = sub.add_parser("setup", help="Make the own venv of the peers whose pins clash with ours.")
    setup.add_argument("names", nargs="*", help=f"Default: all of {', '.join(sorted(PEER_VENVS))}.")
    setup.add_argument("--peers-dir", default=None)
    af = sub.add_parser("autofaiss", help="(inside autofaiss' venv) build, score and time an autofaiss index.")
    af.add_argument("--data", type=Path, required=True)
    af.add_argument("--out", type=Path, required=True)
    af.add_argument("--memory-mb", type=float, required=True)
    af.add_argument("--target-recall", type=float, required=True)
    af.add_argument("--qps-seconds", type=float, default=3.0)
    af.add_argument("--cores", type=int, default=None)
    args = ap.parse_args(argv)
    if args.command is None:  # `make bench` runs every script in benchmarks/: this one measures nothing by itself
        ap.print_help()
        return
    if args.command == "setup":
        root = peers_dir(args.peers_dir)
        args.names = args.names or sorted(PEER_VENVS)
        unknown = [n for n in args.names if n not in PEER_VENVS]
        if unknown:
            ap.error(f"setup: unknown peer {unknown[0]!r}; choose from {', '.join(sorted(PEER_VENVS))}")
        failed = [n for n in args.names if ensure_venv(n, root) is None]
        for n in args.names:
            if n not in failed:
                print(f"{n}: ready ({venv_python(n, root)})")
        sys.exit(1 if failed else 0)
    autofaiss_command(args.data, args.out, args.memory_mb, args.target_recall, args.qps_seconds, args.cores)


if __name__ == "__main__":
    main()

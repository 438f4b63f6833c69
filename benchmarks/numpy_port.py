"""The numpy evaluation (indexing/metrics.py, indexing/rerank.py) against the torch version it replaced, side by
side in one run on the same problems: time, and whether the results are the same.

The torch version is read from a git revision (``--old-rev``, default 2b2dc32, the last commit with torch in
indexing/) into a temporary folder and imported from there, so this needs a git checkout and torch installed.
Each side runs ``--repeats`` times, alternating old and new, and the best time of each is compared. The problems are
those of benchmarks/evaluate.py (3000 queries x 40000 gallery, cameras; its memory problem, 10000 x 200000, each
side in a child process with its peak memory, as there) and benchmarks/rerank.py (2000 x 10000).

    python benchmarks/numpy_port.py                  # both problems, 3 repeats
    python benchmarks/numpy_port.py --quick          # 500 x 5000 (memory: 2000 x 40000) and 300 x 1500
    python benchmarks/numpy_port.py --json benchmarks/results/numpy_port.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from evaluate import problem
from peers import REPO, measure_peak, write_json

from indexing import metrics, rerank


def load_old(rev: str, folder: Path) -> tuple:
    """indexing/metrics.py and indexing/rerank.py as of ``rev``, imported as modules of their own."""
    mods = []
    for name in ("metrics", "rerank"):
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:indexing/{name}.py"], check=True, capture_output=True, text=True
        ).stdout
        text = text.replace("from indexing.metrics import", "from old_metrics import")
        path = folder / f"old_{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"old_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = module
        spec.loader.exec_module(module)
        mods.append(module)
    return tuple(mods)


def timed(fn, repeats: int, other) -> tuple[list[float], list[float], object, object]:
    """Best-of-``repeats`` times of ``fn`` and ``other``, alternating; their last results."""
    t_a, t_b, res_a, res_b = [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res_a = fn()
        t_a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res_b = other()
        t_b.append(time.perf_counter() - t0)
    return t_a, t_b, res_a, res_b


def ranks_of(module, data) -> list[list[float]]:
    """Every evaluated query's ranks of its relevant items, from ``module._block_ranks`` (one more run)."""
    seen: list[list[float]] = []
    inner = module._block_ranks

    def spy(*args, **kw):
        out = inner(*args, **kw)
        n_rel = args[4]
        arr = out.numpy() if hasattr(out, "numpy") else out
        seen.extend(arr[i, : int(n_rel[i])].tolist() for i in range(len(arr)))
        return out

    module._block_ranks = spy
    try:
        module.evaluate_retrieval(*data)
    finally:
        module._block_ranks = inner
    return seen


def compare(label: str, t_old: list[float], t_new: list[float], same: bool, extra: dict) -> dict:
    ratio = min(t_new) / min(t_old)
    print(
        f"{label}: torch {min(t_old):.2f} s, numpy {min(t_new):.2f} s (best of {len(t_old)}; all torch "
        f"{', '.join(f'{t:.2f}' for t in t_old)}; numpy {', '.join(f'{t:.2f}' for t in t_new)}) -> numpy/torch "
        f"{ratio:.2f}x; identical results: {same}"
    )
    return {"torch_seconds": t_old, "numpy_seconds": t_new, "numpy_over_torch": ratio, "identical": same, **extra}


def memory_side(side: str, rev: str, nq: int, ng: int) -> dict:
    """(In a child process.) One side's exact evaluation of the memory problem, its time and peak memory."""
    data = problem(nq, ng, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        module = load_old(rev, Path(tmp))[0] if side == "torch" else metrics
        res, mem = measure_peak(lambda: module.evaluate_retrieval(*data, memory_budget_mb=256))
    return {**mem, "mAP": res.mAP}


def memory(rev: str, nq: int, ng: int) -> dict:
    out = {}
    for side in ("torch", "numpy"):
        cmd = [sys.executable, __file__, "--memory-side", side, "--old-rev", rev, "--memory-size", str(nq), str(ng)]
        out[side] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    t, n = out["torch"], out["numpy"]
    print(
        f"evaluate_retrieval {nq} x {ng}, budget 256 MiB: peak extra memory torch {t['extra_mib']:.0f} MiB, "
        f"{t['seconds']:.1f} s, numpy {n['extra_mib']:.0f} MiB, {n['seconds']:.1f} s; mAP differs by "
        f"{abs(t['mAP'] - n['mAP']):.1e}"
    )
    return {"problem": [nq, ng], **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--old-rev", default="2b2dc32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", choices=("evaluate", "memory", "rerank"), action="append", default=[])
    ap.add_argument("--memory-size", nargs=2, type=int, metavar=("Q", "G"))
    ap.add_argument("--memory-side", choices=("torch", "numpy"), help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    mq, mg = args.memory_size or ((2_000, 40_000) if args.quick else (10_000, 200_000))
    if args.memory_side:
        print(json.dumps(memory_side(args.memory_side, args.old_rev, mq, mg)))
        return
    figures: dict = {"old_rev": args.old_rev}
    with tempfile.TemporaryDirectory() as tmp:
        old_metrics, old_rerank = load_old(args.old_rev, Path(tmp))
        if "evaluate" not in args.skip:
            nq, ng = (500, 5_000) if args.quick else (3_000, 40_000)
            data = problem(nq, ng)
            t_old, t_new, r_old, r_new = timed(
                lambda: old_metrics.evaluate_retrieval(*data), args.repeats, lambda: metrics.evaluate_retrieval(*data)
            )
            same_ranks = ranks_of(old_metrics, data) == ranks_of(metrics, data)
            gap = float(np.abs(r_old.ap - r_new.ap).max())
            figures["evaluate"] = compare(
                f"evaluate_retrieval {nq} x {ng}",
                t_old,
                t_new,
                same_ranks,
                {"problem": [nq, ng], "mAP": r_new.mAP, "mAP_torch": r_old.mAP, "max_ap_diff": gap},
            )
            print(f"  identical: every relevant item's rank; per-query AP differs by at most {gap:.1e} (sum order)")
        if "memory" not in args.skip:
            figures["memory"] = memory(args.old_rev, mq, mg)
        if "rerank" not in args.skip:
            nq, ng = (300, 1_500) if args.quick else (2_000, 10_000)
            data = problem(nq, ng, ids=max(50, ng // 10))
            t_old, t_new, (r_old, _), (r_new, _) = timed(
                lambda: old_rerank.rerank_evaluate(*data), args.repeats, lambda: rerank.rerank_evaluate(*data)
            )
            diff = float(np.abs(r_old.ap - r_new.ap).max()) if len(r_new.ap) == len(r_old.ap) else float("inf")
            figures["rerank"] = compare(
                f"rerank_evaluate {nq} x {ng}",
                t_old,
                t_new,
                diff == 0.0,
                {"problem": [nq, ng], "mAP": r_new.mAP, "mAP_torch": r_old.mAP, "max_ap_diff": diff},
            )
            print(f"  re-ranked mAP numpy {r_new.mAP:.6f}, torch {r_old.mAP:.6f}, largest per-query AP gap {diff:.1e}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

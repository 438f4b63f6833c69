"""Our exact blockwise mAP/CMC vs a straightforward per-query loop (argsort the gallery, walk it for AP),
measured side by side in one run; then peak memory of ours on a large problem.

    python benchmarks/evaluate.py            # 3k queries x 40k gallery with cameras; memory on 10k x 200k
    python benchmarks/evaluate.py --quick    # 500 x 5k; memory on 2k x 40k
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import psutil

from indexing.embeddings import l2_normalize
from indexing.metrics import evaluate_retrieval


def problem(nq: int, ng: int, dim: int = 128, ids: int = 1000, cams: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    gl = rng.integers(0, ids, ng)
    g = l2_normalize(centres[gl] + 1.5 * rng.normal(size=(ng, dim)))
    ql = rng.integers(0, ids, nq)
    q = l2_normalize(centres[ql] + 1.5 * rng.normal(size=(nq, dim)))
    return (
        q,
        [f"q{i}" for i in range(nq)],
        ql.astype(str),
        rng.integers(0, cams, nq).astype(str),
        g,
        [f"g{i}" for i in range(ng)],
        gl.astype(str),
        rng.integers(0, cams, ng).astype(str),
    )


def naive(q, qi, ql, qc, g, gi, gl, gc, ks=(1, 5, 10)):
    """The textbook loop: per query, argsort all scores, drop junk, walk the list."""
    gl, gc, gi = np.asarray(gl), np.asarray(gc), np.asarray(gi)
    aps, firsts = [], []
    for a in range(len(q)):
        order = np.argsort(-(g @ q[a]), kind="stable")
        keep = order[~((gi[order] == qi[a]) | ((gl[order] == ql[a]) & (gc[order] == qc[a])))]
        rel = gl[keep] == ql[a]
        if not rel.any():
            continue
        hits = np.cumsum(rel)
        ranks = np.nonzero(rel)[0] + 1
        aps.append(float(np.mean(hits[rel] / ranks)))
        firsts.append(ranks[0])
    f = np.asarray(firsts)
    return float(np.mean(aps)), {k: float(np.mean(f <= k)) for k in ks}


def peak_rss_during(fn) -> tuple[float, float]:
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    done.set()
    t.join()
    return (peak[0] - base) / 2**20, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    nq, ng, mq, mg = (500, 5_000, 2_000, 40_000) if args.quick else (3_000, 40_000, 10_000, 200_000)
    data = problem(nq, ng)
    t0 = time.perf_counter()
    ours = evaluate_retrieval(*data)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_map, ref_cmc = naive(*data)
    t_naive = time.perf_counter() - t0
    same = abs(ours.mAP - ref_map) < 1e-6 and all(abs(ours.cmc[k] - ref_cmc[k]) < 1e-6 for k in ref_cmc)
    print(
        f"{nq} queries x {ng} gallery, cameras: ours {t_ours:.2f} s, per-query loop {t_naive:.2f} s -> "
        f"{t_naive / t_ours:.1f}x faster (target >= 10x); mAP {ours.mAP:.6f} vs {ref_map:.6f}, "
        f"identical to 1e-6: {same}"
    )
    big = problem(mq, mg, seed=1)
    raw = (mq * mg * 4) / 2**20
    mem, secs = peak_rss_during(lambda: evaluate_retrieval(*big, memory_budget_mb=256))
    print(
        f"{mq} x {mg}: peak extra memory {mem:.0f} MiB in {secs:.1f} s (a full score matrix would be "
        f"{raw:.0f} MiB; block budget 256 MiB)"
    )


if __name__ == "__main__":
    main()

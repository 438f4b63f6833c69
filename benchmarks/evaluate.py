"""Our exact blockwise mAP/CMC vs a straightforward per-query loop (argsort the gallery, walk it for AP),
measured side by side in one run; then peak memory of ours on a large problem.

Then torchreid's ``evaluate_rank`` (unless --no-peers; ``pip install -e '.[bench]'``), the evaluation users of
torchreid run: on the same problem, from its cosine distance matrix (``compute_distance_matrix``), with its Cython
path where that is built and its Python path otherwise (the script says which). mAP and CMC must agree to 1e-6.
Peak memory: each side runs in a child process on the same .npy files and reports its peak resident memory over
what the loaded problem takes. torchreid needs the full distance matrix and its argsort (about 25 bytes per
query-gallery pair), so on the large problem it is measured with fewer queries (--peer-mem-queries) and scaled
to the full query count: memory grows linearly with it.

    python benchmarks/evaluate.py            # 3k queries x 40k gallery with cameras; memory on 10k x 200k
    python benchmarks/evaluate.py --quick    # 500 x 5k; memory on 2k x 40k
    python benchmarks/evaluate.py --json benchmarks/results/peers/evaluate.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from peers import add_peer_args, load_torchreid_rank, measure_peak, version_of, write_json

from indexing.embeddings import l2_normalize
from indexing.metrics import evaluate_retrieval

KS = (1, 5, 10)


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


def naive(q, qi, ql, qc, g, gi, gl, gc, ks=KS):
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


# ---- torchreid ----------------------------------------------------------------------------------------------------
def torchreid_eval(q, ql, qc, g, gl, gc, loaded, max_rank: int = 50):
    """torchreid's evaluation of float32 embeddings, as its engine runs it: the cosine distance matrix, then
    ``evaluate_rank`` (integer person and camera ids). mAP, {k: CMC@k}, seconds of evaluate_rank alone."""
    import torch

    evaluate_rank, distance, _, _ = loaded
    labels, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    q_pids, g_pids = codes[: len(ql)], codes[len(ql) :]
    cams, ccodes = np.unique(np.concatenate([qc, gc]), return_inverse=True)
    q_cams, g_cams = ccodes[: len(qc)], ccodes[len(qc) :]
    distmat = distance(
        torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32)),
        metric="cosine",
    ).numpy()
    t0 = time.perf_counter()
    cmc, mean_ap = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    return float(mean_ap), {k: float(cmc[k - 1]) for k in KS}, time.perf_counter() - t0


def save_problem(folder: Path, data: tuple) -> None:
    q, _, ql, qc, g, _, gl, gc = data
    for name, arr in (
        ("q", q.astype(np.float32)),
        ("g", g.astype(np.float32)),
        ("ql", ql.astype(np.int64)),
        ("qc", qc.astype(np.int64)),
        ("gl", gl.astype(np.int64)),
        ("gc", gc.astype(np.int64)),
    ):
        np.save(folder / f"{name}.npy", arr)


def memory_side(side: str, folder: Path, queries: int | None) -> dict:
    """(In a child process.) Load the problem, then one side's evaluation with its peak memory measured."""
    arr = {k: np.load(folder / f"{k}.npy") for k in ("q", "g", "ql", "qc", "gl", "gc")}
    if queries:
        for k in ("q", "ql", "qc"):
            arr[k] = arr[k][:queries]
    q, g = arr["q"], arr["g"]
    if side == "ours":
        args = (
            q,
            [f"q{i}" for i in range(len(q))],
            arr["ql"].astype(str),
            arr["qc"].astype(str),
            g,
            [f"g{i}" for i in range(len(g))],
            arr["gl"].astype(str),
            arr["gc"].astype(str),
        )
        res, mem = measure_peak(lambda: evaluate_retrieval(*args, memory_budget_mb=256))
        return {**mem, "queries": len(q), "gallery": len(g), "mAP": res.mAP}
    loaded = load_torchreid_rank()
    (m, _, _), mem = measure_peak(lambda: torchreid_eval(q, arr["ql"], arr["qc"], g, arr["gl"], arr["gc"], loaded))
    return {**mem, "queries": len(q), "gallery": len(g), "mAP": m, "path": loaded[2]}


def run_side(side: str, folder: Path, queries: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--memory-side", side, "--memory-data", str(folder)]
    if queries:
        cmd += ["--memory-queries", str(queries)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("Q", "G"),
        help="Queries and gallery of the speed test (default 3000 40000; --quick 500 5000).",
    )
    ap.add_argument(
        "--memory-size",
        nargs=2,
        type=int,
        metavar=("Q", "G"),
        help="Queries and gallery of the memory test (default 10000 200000; --quick 2000 40000).",
    )
    ap.add_argument(
        "--peer-mem-queries",
        type=int,
        default=None,
        help="Queries torchreid's memory is measured with on the memory problem, scaled to all of "
        "them (default 500). Its full 10k x 200k run would need about 46 GiB.",
    )
    ap.add_argument("--no-naive", action="store_true", help="Skip the per-query loop baseline.")
    ap.add_argument(
        "--torchreid-cython",
        type=Path,
        metavar="DIR",
        help="Also time torchreid's Cython path from this torchreid package folder (a checkout of the "
        "upstream repository with torchreid/metrics/rank_cylib built in place; the distribution on "
        "the package index ships no .pyx, so its Cython path cannot be built).",
    )
    ap.add_argument("--memory-side", choices=("ours", "torchreid"), help=argparse.SUPPRESS)
    ap.add_argument("--memory-data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--memory-queries", type=int, help=argparse.SUPPRESS)
    add_peer_args(ap)
    args = ap.parse_args()
    if args.memory_side:
        print(json.dumps(memory_side(args.memory_side, args.memory_data, args.memory_queries)))
        return
    nq, ng, mq, mg = (500, 5_000, 2_000, 40_000) if args.quick else (3_000, 40_000, 10_000, 200_000)
    nq, ng = args.size or (nq, ng)
    mq, mg = args.memory_size or (mq, mg)
    peer_mq = min(mq, args.peer_mem_queries or 500)
    loaded = None if args.no_peers else load_torchreid_rank()
    if not args.no_peers and loaded is None:
        print("torchreid: not installed (pip install -e '.[bench]'); its side is skipped")
    figures: dict = {"speed_problem": [nq, ng], "memory_problem": [mq, mg]}
    data = problem(nq, ng)
    t0 = time.perf_counter()
    ours = evaluate_retrieval(*data)
    t_ours = time.perf_counter() - t0
    figures["ours"] = {"seconds": t_ours, "mAP": ours.mAP, "cmc": ours.cmc}
    if not args.no_naive:
        t0 = time.perf_counter()
        ref_map, ref_cmc = naive(*data)
        t_naive = time.perf_counter() - t0
        same = abs(ours.mAP - ref_map) < 1e-6 and all(abs(ours.cmc[k] - ref_cmc[k]) < 1e-6 for k in ref_cmc)
        print(
            f"{nq} queries x {ng} gallery, cameras: ours {t_ours:.2f} s, per-query loop {t_naive:.2f} s -> "
            f"{t_naive / t_ours:.1f}x faster (target >= 10x); mAP {ours.mAP:.6f} vs {ref_map:.6f}, "
            f"identical to 1e-6: {same}"
        )
        figures["naive"] = {
            "seconds": t_naive,
            "mAP": ref_map,
            "cmc": ref_cmc,
            "ratio": t_naive / t_ours,
            "identical_1e-6": same,
        }
    if loaded is not None:
        q, _, ql, qc, g, _, gl, gc = data
        t0 = time.perf_counter()
        tr_map, tr_cmc, t_rank = torchreid_eval(q, ql, qc, g, gl, gc, loaded)
        t_tr = time.perf_counter() - t0
        diff = max([abs(ours.mAP - tr_map)] + [abs(ours.cmc[k] - tr_cmc[k]) for k in KS])
        print(
            f"torchreid {version_of('torchreid')} evaluate_rank, {loaded[2]} path: {t_tr:.2f} s (distance matrix + "
            f"evaluate_rank; evaluate_rank alone {t_rank:.2f} s) vs ours {t_ours:.2f} s -> {t_tr / t_ours:.1f}x "
            f"faster (target >= 3x); mAP {tr_map:.6f}, CMC@1/5/10 "
            f"{' / '.join(f'{tr_cmc[k]:.6f}' for k in KS)} vs ours {' / '.join(f'{ours.cmc[k]:.6f}' for k in KS)}; "
            f"max difference {diff:.1e} (identical to 1e-6: {diff < 1e-6})"
        )
        figures["torchreid"] = {
            "version": version_of("torchreid"),
            "path": loaded[2],
            "found_at": loaded[3],
            "seconds": t_tr,
            "evaluate_rank_seconds": t_rank,
            "mAP": tr_map,
            "cmc": tr_cmc,
            "ratio": t_tr / t_ours,
            "max_abs_diff": diff,
            "identical_1e-6": diff < 1e-6,
        }
    if loaded is not None and args.torchreid_cython:
        cy = load_torchreid_rank(args.torchreid_cython)
        if cy is None or cy[2] != "cython":
            print(f"torchreid at {args.torchreid_cython}: no built Cython path there; skipped")
        else:
            q, _, ql, qc, g, _, gl, gc = data
            t0 = time.perf_counter()
            cy_map, cy_cmc, cy_rank = torchreid_eval(q, ql, qc, g, gl, gc, cy)
            t_cy = time.perf_counter() - t0
            diff = max([abs(ours.mAP - cy_map)] + [abs(ours.cmc[k] - cy_cmc[k]) for k in KS])
            print(
                f"torchreid upstream, cython path: {t_cy:.2f} s (evaluate_rank alone {cy_rank:.2f} s) vs ours "
                f"{t_ours:.2f} s -> {t_cy / t_ours:.1f}x; mAP {cy_map:.6f} (max difference from ours {diff:.1e}; "
                f"it sums AP in float32)"
            )
            figures["torchreid_cython"] = {
                "found_at": cy[3],
                "seconds": t_cy,
                "evaluate_rank_seconds": cy_rank,
                "mAP": cy_map,
                "cmc": cy_cmc,
                "ratio": t_cy / t_ours,
                "max_abs_diff": diff,
            }
    del data
    raw = (mq * mg * 4) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        save_problem(Path(tmp), problem(mq, mg, seed=1))
        mine = run_side("ours", Path(tmp))
        print(
            f"{mq} x {mg}: peak extra memory {mine['extra_mib']:.0f} MiB in {mine['seconds']:.1f} s (a full score "
            f"matrix would be {raw:.0f} MiB; block budget 256 MiB); peak resident {mine['peak_rss_mib']:.0f} MiB"
        )
        figures["memory_ours"] = mine
        if loaded is not None:
            theirs = run_side("torchreid", Path(tmp), peer_mq)
            scale = mq / theirs["queries"]
            per_pair = theirs["extra_mib"] * 2**20 / (theirs["queries"] * mg)
            note = (
                ""
                if scale == 1
                else (
                    f"; measured with {theirs['queries']} queries ({per_pair:.1f} bytes per "
                    f"query-gallery pair), x{scale:g} for {mq}"
                )
            )
            print(
                f"torchreid on {mq} x {mg}: peak extra memory {theirs['extra_mib'] * scale:.0f} MiB "
                f"({theirs['extra_mib'] * scale / 1024:.1f} GiB){note} -> "
                f"{theirs['extra_mib'] * scale / max(mine['extra_mib'], 1):.0f}x ours"
            )
            figures["memory_torchreid"] = {
                **theirs,
                "scaled_to_queries": mq,
                "scaled_extra_mib": theirs["extra_mib"] * scale,
                "bytes_per_pair": per_pair,
            }
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

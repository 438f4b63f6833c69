"""`--type auto` vs exact flat search on clustered vectors: recall@10 and queries/s at batch 1 and batch 256,
measured side by side in one run.

Then autofaiss' ``build_index`` (unless --no-peers) on the same vectors, with the same memory budget (our
``memory_budget_mb``, 4096 MiB, as its ``max_index_memory_usage``), inner product as ours (cosine of normalised
vectors): build time, recall@10 on the same new queries against the same exact neighbours, queries/s at batch 1
and 256, index size and the build's peak memory. autofaiss pins numpy<2, so it runs in a venv of its own (made on
first use under --peers-dir; `python benchmarks/peers.py setup autofaiss`), on .npy files written here. autofaiss
takes no recall target (it tunes its search parameters to a query-time budget): where its choice falls short of
the recall ours reached, its nprobe is raised until it matches ours on these queries, and that is timed too.

    python benchmarks/search.py            # 200k x 128
    python benchmarks/search.py --quick    # 50k x 128
    python benchmarks/search.py --json benchmarks/results/peers/search.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from peers import add_peer_args, ensure_venv, measure_peak, peers_dir, run_peer, version_of, write_json

from indexing.embeddings import Embeddings, l2_normalize
from indexing.faiss_index import VideoIndex

MEMORY_BUDGET_MB = 4096  # VideoIndex.build's default


def qps(ix: VideoIndex, q: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in range(0, len(q), batch):
            ix.search(q[s : s + batch], 10)
            done += len(q[s : s + batch])
            if time.perf_counter() - t0 >= seconds:
                break
    return done / (time.perf_counter() - t0)


class _Raw:
    """The FAISS index under a VideoIndex, searched directly (no id or metadata lookups): the index alone."""

    def __init__(self, ix: VideoIndex) -> None:
        self.index = ix._search_index

    def search(self, q: np.ndarray, k: int) -> None:
        self.index.search(q, k)


def compare_autofaiss(
    x: np.ndarray, q: np.ndarray, truth: np.ndarray, auto: VideoIndex, ours: dict, args, tmp: Path
) -> dict:
    py = ensure_venv("autofaiss", peers_dir(args.peers_dir), install=not args.no_peer_install)
    if py is None:
        return {"skipped": "no autofaiss venv"}
    data = tmp / "peer"
    (data / "emb").mkdir(parents=True)
    np.save(data / "emb" / "part0.npy", x.astype(np.float32))
    np.save(data / "queries.npy", q.astype(np.float32))
    np.save(data / "truth.npy", truth)
    res = run_peer(
        py,
        "autofaiss",
        [
            "--data",
            str(data),
            "--memory-mb",
            str(MEMORY_BUDGET_MB),
            "--target-recall",
            str(ours["recall_at_10"]),
            "--qps-seconds",
            str(args.qps_seconds),
        ],
        data / "result.json",
    )
    print(
        f"autofaiss {res['autofaiss']} (faiss {res['faiss']}, numpy {res['numpy']}, own venv) chose "
        f"{res['index_key']} with {res['index_param']!r} in {res['build_seconds']:.1f} s (ours {auto.type} in "
        f"{ours['build_seconds']:.1f} s); index {res['index_mib']:.0f} MiB (ours {ours['index_mib']:.0f} MiB); build "
        f"peak extra memory {res['build_extra_mib']:.0f} MiB (ours {ours['build_extra_mib']:.0f} MiB)"
    )
    for run in res["runs"]:
        run["ratio_batch1"] = ours["qps_batch1"] / run["qps_batch1"]
        run["ratio_batch256"] = ours["qps_batch256"] / run["qps_batch256"]
        run["ratio_index_only_batch1"] = ours["qps_index_only_batch1"] / run["qps_batch1"]
        run["ratio_index_only_batch256"] = ours["qps_index_only_batch256"] / run["qps_batch256"]
        print(
            f"  autofaiss, {run['setting']}: recall@10 {run['recall_at_10']:.4f} (ours {ours['recall_at_10']:.4f}); "
            f"batch 1: {run['qps_batch1']:.0f} q/s, ours {ours['qps_batch1']:.0f} -> {run['ratio_batch1']:.2f}x "
            f"(index alone {run['ratio_index_only_batch1']:.2f}x); batch 256: {run['qps_batch256']:.0f} q/s, ours "
            f"{ours['qps_batch256']:.0f} -> {run['ratio_batch256']:.2f}x (index alone "
            f"{run['ratio_index_only_batch256']:.2f}x)"
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, help="Vectors (default 200000; --quick 50000).")
    ap.add_argument("--qps-seconds", type=float, default=3.0, help="Seconds of each queries/s measurement.")
    ap.add_argument("--peers-dir", help="Folder of the peers' own venvs (default: peers/ beside the repository).")
    ap.add_argument(
        "--no-peer-install", action="store_true", help="Skip a peer whose venv is missing instead of making it."
    )
    add_peer_args(ap)
    args = ap.parse_args()
    n, dim = (50_000, 128) if args.quick else (200_000, 128)
    n = args.n or n
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, dim))
    x = l2_normalize(centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, dim)))
    q = l2_normalize(centres[rng.integers(0, 1000, 1000)] + 0.6 * rng.normal(size=(1000, dim)))
    emb = Embeddings(ids=[str(i) for i in range(n)], embeddings=x, labels=[""] * n, cameras=[""] * n)
    figures: dict = {
        "n": n,
        "dim": dim,
        "queries": len(q),
        "memory_budget_mb": MEMORY_BUDGET_MB,
        "faiss": version_of("faiss-cpu"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        auto, mem = measure_peak(
            lambda: VideoIndex.build(emb, f"{tmp}/auto", type="auto", memory_budget_mb=MEMORY_BUDGET_MB)
        )
        t_build = mem["seconds"]
        flat = VideoIndex.build(emb, f"{tmp}/flat", type="flat")
        truth_hits = flat.search(q, 10)
        found = auto.search(q, 10)
        recall = np.mean(
            [len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(found, truth_hits, strict=True)]
        )
        print(
            f"{n} x {dim} clustered: auto chose {auto.type} {auto.info['params']} (built in {t_build:.1f} s); "
            f"recall@10 vs exact on 1000 new queries: {recall:.4f} (target >= 0.95)"
        )
        ours = {
            "type": auto.type,
            "params": auto.info["params"],
            "build_seconds": t_build,
            "build_extra_mib": mem["extra_mib"],
            "recall_at_10": float(recall),
            "index_mib": sum(f.stat().st_size for f in Path(tmp, "auto").glob("gen-*/index.faiss")) / 2**20,
            "folder_mib": sum(f.stat().st_size for f in Path(tmp, "auto").rglob("*") if f.is_file()) / 2**20,
        }
        for batch in (1, 256):
            f, a = qps(flat, q, batch, args.qps_seconds), qps(auto, q, batch, args.qps_seconds)
            raw = qps(_Raw(auto), q.astype(np.float32), batch, args.qps_seconds)
            ours[f"qps_batch{batch}"], ours[f"qps_index_only_batch{batch}"] = a, raw
            figures[f"flat_qps_batch{batch}"] = f
            print(
                f"batch {batch:>3}: flat {f:9.0f} q/s, auto {a:9.0f} q/s -> {a / f:.1f}x"
                + ("  (target >= 5x)" if batch == 1 else "")
                + f"; auto's FAISS index alone {raw:.0f} q/s"
            )
        figures["ours"] = ours
        if not args.no_peers:
            truth = np.array([[int(h.id) for h in hits] for hits in truth_hits], dtype=np.int64)
            figures["autofaiss"] = compare_autofaiss(x, q, truth, auto, ours, args, Path(tmp))
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

"""k-reciprocal re-ranking: ours (indexing/rerank.py, neighbourhoods from a top-k search) vs torchreid's
``re_ranking`` (dense (q+g) x (q+g) matrices), on the same features, side by side in one run.

Each side runs in a child process on the same .npy files and reports its time and its peak resident memory over
what the loaded problem takes (benchmarks/peers.py, ``measure_peak``). torchreid's side is what its engine runs
with ``rerank=True``: the query-gallery, query-query and gallery-gallery distance matrices (squared Euclidean of
the L2-normalised features, ``compute_distance_matrix``) and ``re_ranking(k1=20, k2=6, lambda_value=0.3)``. Both
sides' mAP / CMC@1 are scored with the same protocol (indexing/metrics.py), with and without re-ranking; they differ
slightly because torchreid scales each item's distances by its farthest item and squares them (docs/evaluation.md).

    python benchmarks/rerank.py                 # 2000 queries x 10000 gallery (MARS-sized), 128-d, 6 cameras
    python benchmarks/rerank.py --quick         # 300 x 1500
    python benchmarks/rerank.py --json benchmarks/results/peers/rerank.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from evaluate import problem, save_problem
from peers import add_peer_args, measure_peak, version_of, write_json

from indexing.metrics import evaluate_retrieval
from indexing.rerank import RerankParams, _ap_block, _scores, rerank_evaluate

KS = (1, 5, 10)


def load_torchreid_rerank():
    """torchreid's ``re_ranking`` (its module needs only numpy: loaded alone, not through the package), or None."""
    loaded = sys.modules.get("torchreid")  # benchmarks/peers.py may have put a bare package module (no __spec__) here
    if loaded is not None and getattr(loaded, "__path__", None):
        roots = list(loaded.__path__)
    else:
        spec = importlib.util.find_spec("torchreid")
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        return None
    path = Path(roots[0]) / "reid" / "utils" / "rerank.py"
    if not path.is_file():
        return None
    mspec = importlib.util.spec_from_file_location("torchreid_rerank", path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module.re_ranking


def _load(folder: Path) -> dict:
    return {k: np.load(folder / f"{k}.npy") for k in ("q", "g", "ql", "qc", "gl", "gc")}


def _meta(arr: dict) -> tuple:
    nq, ng = len(arr["q"]), len(arr["g"])
    return (
        [f"q{i}" for i in range(nq)],
        arr["ql"].astype(str),
        arr["qc"].astype(str),
        [f"g{i}" for i in range(ng)],
        arr["gl"].astype(str),
        arr["gc"].astype(str),
    )


def side(name: str, folder: Path) -> dict:
    """(In a child process.) One side's re-ranking with its time and peak memory, and its scores."""
    arr = _load(folder)
    q, g = arr["q"], arr["g"]
    qi, ql, qc, gi, gl, gc = _meta(arr)
    if name == "ours":
        (res, stats), mem = measure_peak(lambda: rerank_evaluate(q, qi, ql, qc, g, gi, gl, gc, ks=KS))
        return {**mem, "mAP": res.mAP, "cmc": res.cmc, "stats": stats.to_json()}
    re_ranking = load_torchreid_rerank()

    def run() -> np.ndarray:
        def sq(a, b):  # compute_distance_matrix(..., 'euclidean'): squared distances
            return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T

        return re_ranking(sq(q, g), sq(q, q), sq(g, g), k1=20, k2=6, lambda_value=0.3)

    final, mem = measure_peak(run)
    codes: dict = {}
    enc = lambda v: np.fromiter((codes.setdefault(str(x), len(codes)) for x in v), np.int64)  # noqa: E731
    qi_c, gi_c = enc(qi), enc(gi)
    labels: dict = {}
    ql_c = np.fromiter((labels.setdefault(str(x), len(labels)) for x in ql), np.int64)
    gl_c = np.fromiter((labels.setdefault(str(x), len(labels)) for x in gl), np.int64)
    ap, first = _ap_block(final, qi_c, ql_c, arr["qc"], gi_c, gl_c, arr["gc"])
    res = _scores(ap, first, list(KS))
    return {**mem, "mAP": res.mAP, "cmc": res.cmc}


def run_side(name: str, folder: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", name, "--data", str(folder)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--queries", type=int)
    ap.add_argument("--gallery", type=int)
    add_peer_args(ap)
    ap.add_argument("--side", choices=("ours", "torchreid"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.data), default=float))
        return
    nq = args.queries or (300 if args.quick else 2000)
    ng = args.gallery or (1500 if args.quick else 10000)
    data = problem(nq, ng, ids=max(50, ng // 10))
    q, qi, ql, qc, g, gi, gl, gc = data
    plain = evaluate_retrieval(q, qi, ql, qc, g, gi, gl, gc, ks=KS)
    print(f"{nq} queries x {ng} gallery, 128-d: without re-ranking mAP {plain.mAP:.4f}, CMC@1 {plain.cmc[1]:.4f}")
    p = RerankParams()
    figures: dict = {"problem": [nq, ng], "params": p.__dict__, "plain": {"mAP": plain.mAP, "cmc": plain.cmc}}
    with tempfile.TemporaryDirectory() as tmp:
        save_problem(Path(tmp), data)
        ours = run_side("ours", Path(tmp))
        print(
            f"ours: {ours['seconds']:.2f} s, peak extra memory {ours['extra_mib']:.0f} MiB, mAP {ours['mAP']:.4f}, "
            f"CMC@1 {ours['cmc']['1']:.4f}"
        )
        figures["ours"] = ours
        if args.no_peers or load_torchreid_rerank() is None:
            print("torchreid: not installed (pip install -e '.[bench]') or --no-peers; its side is skipped")
        else:
            theirs = run_side("torchreid", Path(tmp))
            theirs["version"] = version_of("torchreid")
            print(
                f"torchreid {theirs['version']} re_ranking: {theirs['seconds']:.2f} s, peak extra memory "
                f"{theirs['extra_mib']:.0f} MiB, mAP {theirs['mAP']:.4f}, CMC@1 {theirs['cmc']['1']:.4f}"
            )
            print(
                f"time ratio torchreid/ours {theirs['seconds'] / ours['seconds']:.1f}x, memory ratio "
                f"{theirs['extra_mib'] / max(ours['extra_mib'], 1):.1f}x"
            )
            figures["torchreid"] = theirs
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

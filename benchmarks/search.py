"""`--type auto` vs exact flat search on clustered vectors: recall@10 and queries/s at batch 1 and batch 256,
measured side by side in one run.

    python benchmarks/search.py            # 200k x 128
    python benchmarks/search.py --quick    # 50k x 128
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from indexing.embeddings import Embeddings, l2_normalize
from indexing.index import VideoIndex


def qps(ix: VideoIndex, q: np.ndarray, batch: int, seconds: float = 3.0) -> float:
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in range(0, len(q), batch):
            ix.search(q[s : s + batch], 10)
            done += len(q[s : s + batch])
            if time.perf_counter() - t0 >= seconds:
                break
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, dim = (50_000, 128) if args.quick else (200_000, 128)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, dim))
    x = l2_normalize(centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, dim)))
    q = l2_normalize(centres[rng.integers(0, 1000, 1000)] + 0.6 * rng.normal(size=(1000, dim)))
    emb = Embeddings(ids=[str(i) for i in range(n)], embeddings=x, labels=[""] * n, cameras=[""] * n)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        auto = VideoIndex.build(emb, f"{tmp}/auto", type="auto")
        t_build = time.perf_counter() - t0
        flat = VideoIndex.build(emb, f"{tmp}/flat", type="flat")
        truth = flat.search(q, 10)
        found = auto.search(q, 10)
        recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(found, truth, strict=True)])
        print(
            f"{n} x {dim} clustered: auto chose {auto.type} {auto.info['params']} (built in {t_build:.1f} s); "
            f"recall@10 vs exact on 1000 new queries: {recall:.4f} (target >= 0.95)"
        )
        for batch in (1, 256):
            f, a = qps(flat, q, batch), qps(auto, q, batch)
            print(
                f"batch {batch:>3}: flat {f:9.0f} q/s, auto {a:9.0f} q/s -> {a / f:.1f}x"
                + ("  (target >= 5x)" if batch == 1 else "")
            )


if __name__ == "__main__":
    main()

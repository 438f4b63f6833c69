"""The scale benchmark: build and serve an index larger than its memory budget, as the CLI does, and measure it.

Resumable steps, each one skipped when its output exists (``--force`` redoes it)::

    python benchmarks/scale.py --data /var/tmp/vidret-scale --n 10000000 --dim 256 generate
    python benchmarks/scale.py --data /var/tmp/vidret-scale truth
    python benchmarks/scale.py --data /var/tmp/vidret-scale --max-memory 4GB build
    python benchmarks/scale.py --data /var/tmp/vidret-scale --max-memory 4GB serve
    python benchmarks/scale.py --data /var/tmp/vidret-scale report --out benchmarks/results/scale

The vectors are synthetic and say so: seeded, clustered in two levels (coarse clusters, then identities of
``--per-identity`` videos around an identity centre inside a coarse cluster; the label is the identity, the camera
one of 8), L2-normalised float32, written as a shard folder of uncompressed ``.npz`` files with a ``shards.json``
(what ``vidret embed --shards`` writes), so the build memory-maps them. 1,000 held-out queries are further videos of
random identities (``queries.npz``, not indexed); their exact top-10 is computed blockwise (``truth``).

``build`` runs ``vidret index build --max-memory`` and ``serve`` runs ``vidret serve --mmap`` as subprocesses, in a
cgroup v2 memory limit of the same size when one can be made (``--cgroup``; what was used is recorded), and read
their peak RSS and RssAnon from /proc/PID/status (sampled) and the cgroup's memory.peak.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexing.embeddings import Embeddings, save_embeddings, write_shard_list  # noqa: E402

SEED = 0
COARSE = 4096
CAMERAS = 8
QUERIES = 1000
SHARD_ROWS = 1_000_000


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _centres(n_ident: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    coarse = _unit(rng.standard_normal((COARSE, dim), dtype=np.float32))
    which = rng.integers(0, COARSE, n_ident)
    out = np.empty((n_ident, dim), np.float32)
    for s in range(0, n_ident, 100_000):  # identity = coarse centre + noise of norm ~0.7
        e = min(n_ident, s + 100_000)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32) * np.float32(0.7 / np.sqrt(dim))
        out[s:e] = _unit(coarse[which[s:e]] + noise)
    return out


def _videos(centres: np.ndarray, ident: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dim = centres.shape[1]
    noise = rng.standard_normal((len(ident), dim), dtype=np.float32) * np.float32(0.45 / np.sqrt(dim))
    return _unit(centres[ident] + noise)


def generate(args) -> None:
    data = Path(args.data)
    shards = data / "embeddings"
    if (shards / "shards.json").is_file() and not args.force:
        print(f"generate: {shards} exists")
        return
    n, dim, per = args.n, args.dim, args.per_identity
    n_ident = -(-n // per)
    centres = _centres(n_ident, dim)
    ident_of_row = np.random.default_rng(SEED + 1).permutation(n_ident * per)[:n] // per
    names = []
    for i, s in enumerate(range(0, n, SHARD_ROWS)):
        e = min(n, s + SHARD_ROWS)
        name = f"shard-{i:06d}.npz"
        t0 = time.time()
        rng = np.random.default_rng([SEED + 2, i])
        ident = ident_of_row[s:e]
        emb = Embeddings(
            ids=np.char.add("v", np.char.zfill(np.arange(s, e).astype(str), 9)),
            embeddings=_videos(centres, ident, rng),
            labels=np.char.add("p", ident.astype(str)),
            cameras=np.char.add("c", rng.integers(0, CAMERAS, e - s).astype(str)),
        )
        save_embeddings(shards / name, emb)
        names.append(name)
        print(f"generate: {name} rows {s}-{e} in {time.time() - t0:.1f}s", flush=True)
    rng = np.random.default_rng(SEED + 3)
    qident = rng.integers(0, n_ident, QUERIES)
    q = Embeddings(
        ids=np.char.add("q", np.arange(QUERIES).astype(str)),
        embeddings=_videos(centres, qident, rng),
        labels=np.char.add("p", qident.astype(str)),
        cameras=np.char.add("c", rng.integers(0, CAMERAS, QUERIES).astype(str)),
    )
    save_embeddings(data / "queries.npz", q)
    info = {"n": n, "dim": dim, "per_identity": per, "coarse": COARSE, "seed": SEED, "synthetic": True}
    write_shard_list(shards, names, {"synthetic": info})
    print(f"generate: {n} x {dim} in {len(names)} shards -> {shards}")


def truth(args) -> None:
    """Exact top-10 of the held-out queries, a block of 100k rows at a time (inner product = cosine)."""
    from indexing.embeddings import EmbeddingSource, load_embeddings

    data = Path(args.data)
    out = data / "truth.npz"
    if out.is_file() and not args.force:
        print(f"truth: {out} exists")
        return
    q = load_embeddings(data / "queries.npz").embeddings
    src = EmbeddingSource.open([data / "embeddings"], normalize_check=False)
    k = 10
    best_d = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    t0 = time.time()
    for start, block in src.chunks(100_000):
        d = q @ block.T
        top = np.argpartition(-d, k, axis=1)[:, :k]
        best_d = np.hstack([best_d, np.take_along_axis(d, top, 1)])
        best_i = np.hstack([best_i, top + start])
        keep = np.argsort(-best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
        if start % 1_000_000 == 0:
            print(f"truth: {start + len(block)} rows, {time.time() - t0:.0f}s", flush=True)
    ids = src.ids[best_i]
    np.savez(out, rows=best_i, scores=best_d, ids=ids)
    print(f"truth: {len(q)} queries x {len(src)} rows in {time.time() - t0:.0f}s -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/var/tmp/vidret-scale")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("step", choices=["generate", "truth"])
    args = ap.parse_args()
    {"generate": generate, "truth": truth}[args.step](args)


if __name__ == "__main__":
    main()

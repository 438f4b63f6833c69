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
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def _text(prefix: str, values: np.ndarray) -> np.ndarray:
    """``prefix`` + each value, as the narrowest fixed-width string array (what vidret embed writes: numpy's
    default str of an int is 21 characters wide, 84 bytes a value)."""
    out = np.char.add(prefix, values.astype(str))
    return out.astype(f"U{max(1, int(np.char.str_len(out).max()))}")


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
        if args.shards is not None and i >= args.shards:
            break
        e = min(n, s + SHARD_ROWS)
        name = f"shard-{i:06d}.npz"
        t0 = time.time()
        rng = np.random.default_rng([SEED + 2, i])
        ident = ident_of_row[s:e]
        emb = Embeddings(
            ids=_text("v", np.char.zfill(np.arange(s, e).astype(str), 9)),
            embeddings=_videos(centres, ident, rng),
            labels=_text("p", ident),
            cameras=_text("c", rng.integers(0, CAMERAS, e - s)),
        )
        save_embeddings(shards / name, emb)
        names.append(name)
        print(f"generate: {name} rows {s}-{e} in {time.time() - t0:.1f}s", flush=True)
    rng = np.random.default_rng(SEED + 3)
    qident = rng.integers(0, n_ident, QUERIES)
    q = Embeddings(
        ids=_text("q", np.arange(QUERIES)),
        embeddings=_videos(centres, qident, rng),
        labels=_text("p", qident),
        cameras=_text("c", rng.integers(0, CAMERAS, QUERIES)),
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
    import faiss

    k = 10
    best_d = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    t0 = time.time()
    for start, block in src.chunks(250_000):
        flat = faiss.IndexFlatIP(block.shape[1])  # exact inner product (= cosine): FAISS's blocked top-k
        flat.add(block)
        d, i = flat.search(q, k)
        best_d, best_i = np.hstack([best_d, d]), np.hstack([best_i, i + start])
        keep = np.argsort(-best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, keep, 1), np.take_along_axis(best_i, keep, 1)
        print(f"truth: {start + len(block)} rows, {time.time() - t0:.0f}s", flush=True)
    ids = src.ids[best_i]
    np.savez(out, rows=best_i, scores=best_d, ids=ids)
    print(f"truth: {len(q)} queries x {len(src)} rows in {time.time() - t0:.0f}s -> {out}")


# ---- measuring a subprocess: a cgroup memory limit, peak RSS and RssAnon ---------------------------------------


def _own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory controller folder, when it can hold a child cgroup (root)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrl, path = line.split(":", 2)
            if ctrl == "memory":
                base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                return base if os.access(base, os.W_OK) else None
    except OSError:
        return None
    return None


def make_cgroup(name: str, limit_bytes: int) -> tuple[Path | None, str]:
    """A memory cgroup limited to ``limit_bytes`` (v1 memory.limit_in_bytes, swap included where accounted), or
    None and why not."""
    base = _own_memory_cgroup()
    if base is None:
        return None, "no writable cgroup v1 memory controller: no limit"
    cg = base / name
    if cg.exists():
        cg.rmdir()
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(limit_bytes))
    sw = cg / "memory.memsw.limit_in_bytes"
    if sw.exists():
        sw.write_text(str(limit_bytes))
    return cg, f"cgroup v1 memory controller {cg} (memory.limit_in_bytes = memsw = {limit_bytes})"


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


class Sampler(threading.Thread):
    """The peaks of VmRSS (and VmHWM), RssAnon and RssFile of a process, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop = pid, every, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for k, v in _status(self.pid).items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self.stop.wait(self.every)


def spawn(cmd: list[str], cg: Path | None, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``cmd`` niced, in ``cg``, its output to ``log``."""

    def enter() -> None:
        os.nice(10)
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    fh = open(log, "w")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=enter, env=env)


def _cg_peak(cg: Path | None) -> dict:
    if cg is None:
        return {}
    read = lambda name: int((cg / name).read_text()) if (cg / name).exists() else None  # noqa: E731
    return {"cgroup_max_usage_bytes": read("memory.max_usage_in_bytes"), "cgroup_failcnt": read("memory.failcnt")}


def _vidret() -> str:
    return str(Path(sys.executable).with_name("vidret"))


def _budget_bytes(text: str) -> int:
    from indexing.planning import parse_memory

    return int(parse_memory(text) * 2**20)


def build(args) -> None:
    data = Path(args.data)
    out = data / "build.json"
    if out.is_file() and not args.force:
        print(f"build: {out} exists")
        return
    cg, how = make_cgroup("vidret-scale-build", _budget_bytes(args.max_memory)) if args.cgroup else (None, "none")
    cmd = [_vidret(), "index", "build", "--embeddings", str(data / "embeddings"), "--out", str(data / "index")]
    cmd += ["--max-memory", args.max_memory, "--overwrite"] + (args.build_args.split() if args.build_args else [])
    t0 = time.time()
    proc = spawn(cmd, cg, data / "build.log")
    sampler = Sampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    took = time.time() - t0
    sampler.stop.set()
    import resource

    res = {
        "command": " ".join(["nice -n 10", *cmd]),
        "memory_limit": how,
        "returncode": rc,
        "build_s": round(took, 1),
        "peak_rss_bytes_getrusage": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "peak_sampled_bytes": sampler.peak,
        **_cg_peak(cg),
        "index_bytes_on_disk": _du(data / "index") if (data / "index").exists() else None,
        "log_tail": (data / "build.log").read_text()[-2000:],
    }
    if cg is not None:
        cg.rmdir()
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def _post(conn, path: str, body: dict) -> tuple[dict, float]:
    t0 = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    data = json.loads(res.read())
    if res.status != 200:
        raise RuntimeError(f"{path}: HTTP {res.status} {data}")
    return data, (time.perf_counter() - t0) * 1e3


def _latencies(port: int, q: np.ndarray, flt_of) -> tuple[list[float], list[list[dict]]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    times, results = [], []
    for i, v in enumerate(q):
        body = {"embedding": v.tolist(), "k": 10, **({"filter": flt_of(i)} if flt_of else {})}
        data, ms = _post(conn, "/v1/search", body)
        times.append(ms)
        results.append(data["results"])
    return times, results


def _throughput(port: int, q: np.ndarray, clients: int, seconds: float, flt_of=None) -> float:
    import http.client

    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = c
        while time.perf_counter() < stop:
            body = {"embedding": q[i % len(q)].tolist(), "k": 10, **({"filter": flt_of(i % len(q))} if flt_of else {})}
            _post(conn, "/v1/search", body)
            counts[c] += 1
            i += clients

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(counts) / (time.perf_counter() - t0)


def _pct(times: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2)}


def serve(args) -> None:
    """``vidret serve --mmap`` of the built index in a memory cgroup: start time, recall@10 of the held-out queries
    against the exact truth, batch-1 latency, 8-client throughput, the same filtered (label, camera)."""
    import urllib.request

    from indexing.embeddings import load_embeddings

    data = Path(args.data)
    out = data / "serve.json"
    if out.is_file() and not args.force:
        print(f"serve: {out} exists")
        return
    q = load_embeddings(data / "queries.npz")
    truth = np.load(data / "truth.npz")["ids"]
    cg, how = make_cgroup("vidret-scale-serve", _budget_bytes(args.max_memory)) if args.cgroup else (None, "none")
    port = args.port
    cmd = [_vidret(), "serve", "--index", str(data / "index"), "--mmap", "--port", str(port)]
    env = {**os.environ, "VIDRET_SEARCH_COALESCE": os.environ.get("VIDRET_SEARCH_COALESCE", "8")}
    t0 = time.time()
    proc = spawn(cmd, cg, data / "serve.log", env=env)
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}): {(data / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        start_s = time.time() - t0
        res = {"command": " ".join(["nice -n 10", *cmd]), "memory_limit": how, "server_start_s": round(start_s, 1)}
        times, results = _latencies(port, q.embeddings, None)
        got = [[h["id"] for h in r] for r in results]
        overlap = [len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)]
        res["recall_at_10"] = round(float(np.mean(overlap)), 4)
        res["batch1"] = _pct(times[10:])
        res["throughput_8_clients_qps"] = round(_throughput(port, q.embeddings, 8, args.seconds), 1)
        for name, flt_of in (
            ("label", lambda i: {"label": str(q.labels[i])}),
            ("camera", lambda i: {"camera": "c3"}),
        ):
            n = min(len(q), 300)
            times, results = _latencies(port, q.embeddings[:n], flt_of)
            bad = sum(1 for i, r in enumerate(results) for h in r if any(h[k] != v for k, v in flt_of(i).items()))
            res[f"filter_{name}"] = {
                **_pct(times[5:]),
                "queries": n,
                "mean_hits": round(float(np.mean([len(r) for r in results])), 2),
                "hits_not_matching": bad,
                "throughput_8_clients_qps": round(_throughput(port, q.embeddings, 8, args.seconds / 2, flt_of), 1),
            }
    finally:
        sampler.stop.set()
        proc.terminate()
        proc.wait(60)
    res.update(peak_sampled_bytes=sampler.peak, **_cg_peak(cg))
    if cg is not None:
        cg.rmdir()
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def wrapper(args) -> None:
    """In process, on the same memory-mapped index: VideoIndex.search against the bare faiss.Index.search plus the
    id lookup (an array of the ids), at batch 1 and 256."""
    from indexing.embeddings import load_embeddings
    from indexing.faiss_index import VideoIndex

    data = Path(args.data)
    ix = VideoIndex.load(data / "index", mmap=True)
    q = load_embeddings(data / "queries.npz").embeddings
    ids = np.array(ix.ids())  # the baseline's id map: one array
    res = {"index": ix.info["factory"], "params": ix.info["params"], "count": ix.count}
    raw = ix._search_index
    refine = int(ix.info["params"].get("refine", 0) or 0)
    from indexing.faiss_search import refined_search

    def bare(b: np.ndarray) -> None:
        _, rows = refined_search(raw, b, 10, refine, ix.metric, ix._vec_by_row.take)
        ids[np.maximum(rows, 0)]

    wrapped = lambda b: ix.search(b, 10)  # noqa: E731
    for batch in (1, 256):  # the two alternate call by call, on the same batches, so load on the machine hits both
        spent = {"wrapper": 0.0, "bare": 0.0}
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            for s in range(0, len(q), batch):
                for name, fn in (("wrapper", wrapped), ("bare", bare)):
                    t = time.perf_counter()
                    fn(q[s : s + batch])
                    spent[name] += time.perf_counter() - t
                done += len(q[s : s + batch])
        r = {name: round(done / t, 1) for name, t in spent.items()}
        res[f"batch{batch}_qps"] = {**r, "ratio": round(r["wrapper"] / r["bare"], 3)}
    ix.close()
    (data / "wrapper.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def _du(path: Path) -> dict[str, int]:
    sizes = {}
    for f in path.rglob("*"):
        if f.is_file():
            sizes[str(f.relative_to(path))] = f.stat().st_size
    return {"total": sum(sizes.values()), **sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/var/tmp/vidret-scale")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--max-memory", default="4GB")
    ap.add_argument("--build-args", default="", help="More `vidret index build` flags, e.g. '--nlist 2048'.")
    ap.add_argument("--no-cgroup", dest="cgroup", action="store_false", help="Run without a memory cgroup.")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seconds", type=float, default=20.0, help="Of each throughput measurement.")
    ap.add_argument("--shards", type=int, default=None, help="generate: write only the first SHARDS shards.")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("step", choices=["generate", "truth", "build", "serve", "wrapper"])
    args = ap.parse_args()
    {"generate": generate, "truth": truth, "build": build, "serve": serve, "wrapper": wrapper}[args.step](args)


if __name__ == "__main__":
    main()

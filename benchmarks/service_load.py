"""The same index queried in-process through FAISS and over HTTP (/v1/search, N concurrent keep-alive clients),
side by side in one run: queries/s, p50/p99 latency, errors.

In-process: N threads calling ``VideoIndex.search`` (batch 1). HTTP: N client processes, each one keep-alive
connection (stdlib ``http.client``, request bodies encoded before the clock starts, so the load generator spends
as little of the shared CPU as it can) against ``vidret serve`` in its own process.

    python benchmarks/service_load.py                      # 100k x 256 flat index, N = 8, 60 s per side
    python benchmarks/service_load.py --quick              # 20k x 256, 10 s per side
Targets: HTTP >= 0.5x in-process queries/s at N = 8; p99 <= 3x p50; zero errors.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np

from indexing.embeddings import Embeddings, l2_normalize
from indexing.faiss_index import VideoIndex


def run_clients(n: int, seconds: float, call) -> tuple[list[float], int]:
    lat: list[list[float]] = [[] for _ in range(n)]
    errors = [0] * n
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            ok = call(rng)
            lat[i].append(time.perf_counter() - t0)
            errors[i] += 0 if ok else 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for part in lat for x in part], sum(errors)


def http_client(port: int, start: float, seconds: float, dim: int, seed: int, out: mp.Queue) -> None:
    """One keep-alive connection sending /v1/search requests back to back from ``start`` (time.monotonic, shared by
    all client processes) for ``seconds``; puts (latencies, errors) on ``out``."""
    rng = np.random.default_rng(seed)
    bodies = [json.dumps({"embedding": rng.normal(size=dim).round(6).tolist(), "k": 10}).encode() for _ in range(64)]
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat, errors, i = [], 0, 0
    time.sleep(max(0.0, start - time.monotonic()))
    while time.monotonic() < start + seconds:
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/search", body=bodies[i % len(bodies)], headers=headers)
            resp = conn.getresponse()
            ok = resp.status == 200 and len(json.loads(resp.read())["results"]) == 10
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        lat.append(time.perf_counter() - t0)
        errors += 0 if ok else 1
        i += 1
    out.put((lat, errors))


def summary(name: str, lat: list[float], errors: int, seconds: float) -> float:
    a = np.asarray(lat) * 1e3
    qps = len(a) / seconds
    print(
        f"{name:>10}: {qps:8.0f} q/s, p50 {np.percentile(a, 50):6.2f} ms, p99 {np.percentile(a, 99):6.2f} ms, "
        f"p99/p50 {np.percentile(a, 99) / np.percentile(a, 50):.1f}, errors {errors}"
    )
    return qps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=None)
    args = ap.parse_args()
    n, dim = (20_000, 256) if args.quick else (100_000, 256)
    seconds = args.duration or (10.0 if args.quick else 60.0)
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(n, dim)))
    emb = Embeddings(ids=[f"v{i}" for i in range(n)], embeddings=x, labels=["a"] * n, cameras=[""] * n)
    with tempfile.TemporaryDirectory() as tmp:
        ix = VideoIndex.build(emb, f"{tmp}/ix", type="flat")

        queries = rng.normal(size=(64, dim)).astype(np.float32)

        def local(r) -> bool:
            return len(ix.search(queries[r.integers(64)][None, :], 10)[0]) == 10

        lat, err = run_clients(args.clients, seconds, local)
        q_local = summary("in-process", lat, err, seconds)
        ix.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "serve",
                "--index",
                f"{tmp}/ix",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env={**os.environ},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)

            ctx = mp.get_context("fork")
            out: mp.Queue = ctx.Queue()
            start = time.monotonic() + 1.0
            procs = [
                ctx.Process(target=http_client, args=(port, start, seconds, dim, i, out)) for i in range(args.clients)
            ]
            for p in procs:
                p.start()
            parts = [out.get() for _ in procs]
            for p in procs:
                p.join()
            lat, err = [x for part, _ in parts for x in part], sum(e for _, e in parts)
            q_http = summary("HTTP", lat, err, seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"HTTP / in-process throughput at N = {args.clients}: {q_http / q_local:.2f}x (target >= 0.5x)")


if __name__ == "__main__":
    main()

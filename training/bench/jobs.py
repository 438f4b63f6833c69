"""Running the noise benchmark's cells: how many at once (``--jobs``), each in a spawned process with its share of
the CPU threads, and an end to those processes when the benchmark's process ends."""

from __future__ import annotations

import os
import threading
import time


def auto_jobs() -> int:
    """Cells trained at once when --jobs is not given: 1 on a GPU (one model at a time keeps it busy); on the CPU
    one per core, at most 4. Small models use several threads badly: on 2 cores, two one-thread cells at once
    finish about 1.4x more cells per hour than one two-thread cell at a time (docs/noise-benchmark.md, "Cost")."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(4, os.cpu_count() or 1))


def resolve_jobs(cfg) -> tuple[int, int]:
    """(processes, torch threads per process)."""
    jobs = 1 if cfg.report_only else cfg.jobs or auto_jobs()
    return jobs, max(1, (os.cpu_count() or 1) // jobs)


def watch_parent(parent: int, interval: float = 2.0, exit=os._exit) -> threading.Thread:
    """A daemon thread that ends this process once ``parent`` is gone (this process re-parented): a cell process
    whose benchmark was killed stops instead of training on for nobody."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        exit(1)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def _worker_init(threads: int, parent: int) -> None:
    """A cell process: its share of the CPU threads, one decoded-video cache for every cell it trains, and an end
    when the benchmark's process ends."""
    import torch

    from training.data.dataset import shared_frame_cache

    watch_parent(parent)
    torch.set_num_threads(threads)
    global _worker_cache
    _worker_cache = shared_frame_cache()
    _worker_cache.__enter__()


def run_tasks(cfg, fn, tasks: dict, log=None):
    """``fn(*args)`` for every ``key: args`` of ``tasks``, yielding ``(key, result)`` as each finishes: in this
    process when one job runs at a time, else in ``--jobs`` fresh (spawned: forking after PyTorch has started its
    thread pools can hang) processes. The first failure stops the rest and is raised."""
    import concurrent.futures as cf
    import multiprocessing

    jobs, threads = resolve_jobs(cfg)
    if log is not None and not cfg.report_only:
        log(f"{len(tasks)} cells, {jobs} at a time ({threads} CPU threads each)")
    if jobs == 1 or len(tasks) <= 1:
        for key, args in tasks.items():
            yield key, fn(*args)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        min(jobs, len(tasks)), mp_context=ctx, initializer=_worker_init, initargs=(threads, os.getpid())
    ) as pool:
        futures = {pool.submit(fn, *args): key for key, args in tasks.items()}
        try:
            for fut in cf.as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

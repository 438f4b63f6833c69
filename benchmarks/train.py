"""Training throughput: the real pipeline (decode + augment in DataLoader workers, copy to the device, step) vs the
same steps on clips already on the device (compute-only), side by side in one run; the share of step time spent
waiting for data and, on a GPU, its utilisation.

    python benchmarks/train.py             # tiny3d (16x112) and r2plus1d_18 (8x112), --device auto, default --workers
    python benchmarks/train.py --quick     # tiny3d only, smaller
    python benchmarks/train.py --device cuda --model r2plus1d_18 --frames 16 --size 112 --workers 0 4 8 \\
        --batch-size 16 --epochs 3 --repeat 16 --json bench.json    # the GPU run of benchmarks/gpu_check.sh

Both sides are ``fit()`` as ``vidret train`` runs it. The real side's DataLoader is timed batch by batch; the
compute-only side swaps the trainer's DataLoader for one that decodes a few batches once, moves them to the device
and hands them out again for every step of every epoch, so the steps, the per-step bookkeeping and the read-backs
are the same and only the data path differs. The first epoch is warm-up (workers starting, cuDNN, the allocator,
--compile) and is not measured. Figures:

* clips/s and data wait: over the measured epochs, as metrics.csv reports them (the wait includes the refill at
  each epoch's start, so short epochs read worse than long ones: --repeat lists every video that many times);
* steady: the same over the second half of each measured epoch, after the refill: what long epochs approach, and
  what the goal is judged on (both are reported);
* GPU util: NVML's utilisation (torch.cuda.utilization, else nvidia-smi) sampled over the measured epochs; n/a
  without either, and on the CPU;
* vs compute-only: real clips/s divided by compute-only clips/s.

The goal on a GPU: data wait <= 10% of step time and a step at >= 0.5x compute-only speed (r2plus1d_18, 16x112).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import training.plots as plots
import training.trainer as trainer
from training.config import default_workers
from training.data.synth import SynthConfig, generate
from training.runtime import select_device

WAIT_GOAL = 0.10  # data wait share of step time, at most
RATIO_GOAL = 0.5  # real-pipeline speed over compute-only speed, at least
DEVICE_BATCHES = 8  # distinct batches the compute-only loader keeps on the device


# ---- timing the loader -----------------------------------------------------------------------------------------------
@dataclass
class EpochTiming:
    """One pass over a loader: when each batch was asked for and when it came, and its size."""

    asked: list[float] = field(default_factory=list)
    got: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    end: float = 0.0  # when the loop asked for the batch after the last one

    @property
    def start(self) -> float:
        return self.asked[0] if self.asked else self.end

    def wait(self, first: int = 0) -> tuple[float, float]:
        """(seconds waiting for data, seconds in all) from batch ``first`` to the end of the epoch."""
        if first >= len(self.asked):
            return 0.0, 0.0
        waited = sum(g - a for a, g in zip(self.asked[first:], self.got[first:], strict=True))
        return waited, self.end - self.asked[first]


def _timed(batches: Iterator[Any], record: list[EpochTiming]) -> Iterator[Any]:
    timing = EpochTiming()
    record.append(timing)
    while True:
        asked = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            timing.end = time.perf_counter()
            return
        timing.asked.append(asked)
        timing.got.append(time.perf_counter())
        timing.sizes.append(int(batch["clip"].shape[0]))
        yield batch


def timed_loader(record: list[EpochTiming]) -> type:
    """The trainer's DataLoader, unchanged, timing every batch of every epoch into ``record``."""

    class TimedLoader(trainer.DataLoader):
        def __iter__(self):
            return _timed(super().__iter__(), record)

    return TimedLoader


def device_loader(device: torch.device, record: list[EpochTiming], keep: int = DEVICE_BATCHES) -> type:
    """A DataLoader for compute-only steps: the first ``keep`` batches are decoded once (in this process), moved to
    ``device`` and handed out again, in turn, for every step of every epoch (as many steps as the real loader)."""

    class DeviceLoader(trainer.DataLoader):
        def __init__(self, dataset: Any, **kw: Any) -> None:
            kw.update(num_workers=0, persistent_workers=False, worker_init_fn=None, pin_memory=False)
            super().__init__(dataset, **kw)
            self._on_device: list[dict[str, Any]] = []

        def _fill(self) -> None:
            for batch in super().__iter__():
                # every tensor, the row indices too: a step's copy of a pageable CPU tensor would wait for the
                # device, where the real pipeline's pinned batches copy asynchronously
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                self._on_device.append(moved)
                if len(self._on_device) >= keep:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def _cycle(self) -> Iterator[dict[str, Any]]:
            if not self._on_device:
                self._fill()
            for step in range(len(self)):
                yield self._on_device[step % len(self._on_device)]

        def __iter__(self):
            return _timed(self._cycle(), record)

    return DeviceLoader


# ---- GPU utilisation -------------------------------------------------------------------------------------------------
class UtilSampler:
    """Samples the GPU's utilisation (%) with timestamps in a thread: torch.cuda.utilization (NVML through pynvml),
    else ``nvidia-smi -lms``; ``source`` is "n/a" when neither works or the device is not a GPU."""

    def __init__(self, device: torch.device, interval: float = 0.1) -> None:
        self.device, self.interval = device, interval
        self.samples: list[tuple[float, float]] = []
        self.source = "n/a"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> UtilSampler:
        if self.device.type != "cuda":
            return self
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            float(torch.cuda.utilization(index))
            self.source = "torch.cuda.utilization"
            self._thread = threading.Thread(target=self._poll_torch, args=(index,), daemon=True)
        except Exception:  # no pynvml, or NVML refuses: try the command line tool
            smi = shutil.which("nvidia-smi")
            if smi is None:
                return self
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            gpu = visible[index].strip() if index < len(visible) and visible[index].strip() else str(index)
            try:
                self._proc = subprocess.Popen(
                    [
                        smi,
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i",
                        gpu,
                        "-lms",
                        str(max(100, int(self.interval * 1000))),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            except OSError:
                return self
            self.source = "nvidia-smi"
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        self._thread.start()
        return self

    def _poll_torch(self, index: int) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.samples.append((time.perf_counter(), float(torch.cuda.utilization(index))))

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append((time.perf_counter(), float(line.strip())))

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def mean(self, windows: list[tuple[float, float]]) -> float | None:
        """Mean utilisation of the samples taken inside the (start, end) windows; None without any."""
        inside = [u for t, u in self.samples if any(a <= t <= b for a, b in windows)]
        if self.source == "n/a" or not inside:
            return None
        return sum(inside) / len(inside)


# ---- one measurement -------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    model: str
    frames: int
    size: int
    batch_size: int
    mode: str  # "pipeline" (the real DataLoader) or "compute-only" (clips already on the device)
    workers: int
    device: str
    precision: str
    clips_per_epoch: int
    epochs_measured: int
    clips_per_s: float
    data_wait_share: float
    steady_clips_per_s: float
    steady_wait_share: float
    gpu_util: float | None
    gpu_util_source: str
    seconds: float


def summarise(history: list[dict[str, float]], timings: list[EpochTiming], skip: int = 1) -> dict[str, float]:
    """The figures over the epochs after the first ``skip`` (all of them when there are no more): fit()'s own
    per-epoch clips/s and data wait share, weighted by epoch time, and the steady clips/s and wait share over the
    second half of each measured epoch's batches."""
    first = skip if len(history) > skip else 0
    pairs = list(zip(history, timings, strict=True))[first:]
    clips = loop_s = wait_s = steady_clips = steady_wait = steady_all = 0.0
    for row, timing in pairs:
        n = sum(timing.sizes)
        secs = n / row["clips_per_s"] if row["clips_per_s"] > 0 else 0.0
        clips, loop_s, wait_s = clips + n, loop_s + secs, wait_s + row["data_wait_share"] * secs
        half = len(timing.sizes) // 2
        w, a = timing.wait(half)
        steady_clips, steady_wait, steady_all = steady_clips + sum(timing.sizes[half:]), steady_wait + w, steady_all + a
    return {
        "clips_per_s": clips / loop_s if loop_s else 0.0,
        "data_wait_share": wait_s / loop_s if loop_s else 0.0,
        "steady_clips_per_s": steady_clips / steady_all if steady_all else 0.0,
        "steady_wait_share": steady_wait / steady_all if steady_all else 0.0,
        "epochs_measured": len(pairs),
        "clips_measured": int(clips),
    }


@contextlib.contextmanager
def _patched(loader_cls: type) -> Iterator[None]:
    """fit() with ``loader_cls`` as its DataLoader and without the figures (seconds of matplotlib per run)."""
    saved = trainer.DataLoader, plots.plot_training
    trainer.DataLoader, plots.plot_training = loader_cls, (lambda *a, **k: None)
    try:
        yield
    finally:
        trainer.DataLoader, plots.plot_training = saved


def measure(
    train_csv: Path,
    out: Path,
    *,
    model: str,
    frames: int,
    size: int,
    batch_size: int,
    epochs: int,
    workers: int,
    device: str,
    compute_only: bool = False,
    precision: str = "auto",
    compile_model: bool = False,
) -> Measurement:
    """One fit() of ``epochs`` epochs: the real pipeline with ``workers``, or compute-only."""
    dev = select_device(device)
    record: list[EpochTiming] = []
    loader = device_loader(dev, record) if compute_only else timed_loader(record)
    cfg = trainer.TrainConfig(
        train=str(train_csv),
        out=str(out),
        model=model,
        frames=frames,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        workers=0 if compute_only else workers,
        device=device,
        precision=precision,
        compile=compile_model,
        quiet=True,
        loss="imae",
    )
    sampler = UtilSampler(dev).start()
    t0 = time.perf_counter()
    try:
        with _patched(loader):
            res = trainer.fit(cfg)
    finally:
        sampler.stop()
    seconds = time.perf_counter() - t0
    resolved = json.loads((out / "config.json").read_text())
    fig = summarise(res.history, record)
    first = 1 if len(record) > 1 else 0
    util = sampler.mean([(t.start, t.end) for t in record[first:]])
    return Measurement(
        model,
        frames,
        size,
        batch_size,
        "compute-only" if compute_only else "pipeline",
        0 if compute_only else workers,
        resolved["resolved_device"],
        resolved["resolved_precision"],
        sum(record[-1].sizes) if record else 0,
        int(fig["epochs_measured"]),
        fig["clips_per_s"],
        fig["data_wait_share"],
        fig["steady_clips_per_s"],
        fig["steady_wait_share"],
        util,
        sampler.source,
        seconds,
    )


# ---- data ------------------------------------------------------------------------------------------------------------
def repeated_manifest(train_csv: Path, out_csv: Path, repeat: int) -> Path:
    """train.csv with every row listed ``repeat`` times (ids made unique, paths absolute): longer epochs from the
    same videos, each listing decoded anew."""
    if repeat <= 1:
        return train_csv
    with open(train_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    base = train_csv.resolve().parent
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for k in range(repeat):
            for r in rows:
                path = r["path"] if os.path.isabs(r["path"]) else str(base / r["path"])
                w.writerow({**r, "path": path, "id": f"{r.get('id') or r['path']}#{k}"})
    return out_csv


# ---- report ----------------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _same_case(a: Measurement, b: Measurement) -> bool:
    return (a.model, a.frames, a.size, a.batch_size) == (b.model, b.frames, b.size, b.batch_size)


def verdicts(results: list[Measurement]) -> list[dict[str, Any]]:
    """Per case and --workers: the speed relative to compute-only, per epoch and steady, and on a GPU the two goals,
    judged on the steady figures (None off a GPU or without a compute-only run)."""
    out = []
    for m in results:
        if m.mode != "pipeline":
            continue
        base = next((b for b in results if b.mode == "compute-only" and _same_case(b, m)), None)
        ratio = m.clips_per_s / base.clips_per_s if base and base.clips_per_s > 0 else None
        steady = m.steady_clips_per_s / base.steady_clips_per_s if base and base.steady_clips_per_s > 0 else None
        on_gpu = m.device.startswith("cuda")
        out.append(
            {
                "model": m.model,
                "frames": m.frames,
                "size": m.size,
                "batch_size": m.batch_size,
                "workers": m.workers,
                "device": m.device,
                "data_wait_share": m.data_wait_share,
                "steady_wait_share": m.steady_wait_share,
                "ratio_to_compute_only": ratio,
                "steady_ratio_to_compute_only": steady,
                "wait_goal_met": (m.steady_wait_share <= WAIT_GOAL) if on_gpu else None,
                "ratio_goal_met": (steady >= RATIO_GOAL) if on_gpu and steady is not None else None,
            }
        )
    return out


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


MARKS = {True: "met", False: "MISSED", None: "n/a"}


def report(results: list[Measurement]) -> str:
    lines = []
    cases = dict.fromkeys((m.model, m.frames, m.size, m.batch_size) for m in results)
    for model, frames, size, batch in cases:
        ms = [m for m in results if (m.model, m.frames, m.size, m.batch_size) == (model, frames, size, batch)]
        base = next((m for m in ms if m.mode == "compute-only"), None)
        lines.append(
            f"{model} {frames}x{size}, batch {batch}, {ms[0].device} {ms[0].precision}, "
            f"{ms[0].clips_per_epoch} clips/epoch, {ms[0].epochs_measured} epoch(s) measured "
            "(per epoch as metrics.csv reports it | steady: second half of each epoch):"
        )
        lines.append(
            f"  {'workers':>7}  {'clips/s':>8}  {'wait':>5}  {'vs c-o':>7} | {'clips/s':>8}  {'wait':>5}  "
            f"{'vs c-o':>7} | {'GPU util':>8}"
        )
        pipeline = sorted((m for m in ms if m.mode == "pipeline"), key=lambda m: m.workers)
        for m, v in zip(pipeline, sorted(verdicts(ms), key=lambda v: v["workers"]), strict=True):
            lines.append(
                f"  {m.workers:>7}  {m.clips_per_s:>8.1f}  {_pct(m.data_wait_share):>5}  "
                f"{_x(v['ratio_to_compute_only']):>7} | {m.steady_clips_per_s:>8.1f}  "
                f"{_pct(m.steady_wait_share):>5}  {_x(v['steady_ratio_to_compute_only']):>7} | "
                f"{_pct(m.gpu_util):>8}"
            )
        if base is not None:
            lines.append(
                f"  compute-only (clips already on the device): {base.clips_per_s:.1f} clips/s per epoch, "
                f"{base.steady_clips_per_s:.1f} steady, GPU util {_pct(base.gpu_util)} "
                f"({base.gpu_util_source})"
            )
        for v in sorted(verdicts(ms), key=lambda v: v["workers"]):
            if v["wait_goal_met"] is not None:
                lines.append(
                    f"  goal, --workers {v['workers']} (steady): data wait {_pct(v['steady_wait_share'])} "
                    f"<= {WAIT_GOAL:.0%} {MARKS[v['wait_goal_met']]}; "
                    f"{_x(v['steady_ratio_to_compute_only'])} >= {RATIO_GOAL}x compute-only "
                    f"{MARKS[v['ratio_goal_met']]}"
                )
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def write_json(path: Path | None, device: torch.device, args: argparse.Namespace, results: list[Measurement]) -> None:
    if path is None:
        return
    doc = {
        "machine": machine_info(device),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "goals": {"data_wait_share_max": WAIT_GOAL, "ratio_to_compute_only_min": RATIO_GOAL},
        "results": [asdict(m) for m in results],
        "verdicts": verdicts(results),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, path)


# ---- main ------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny3d 8x64 on a small dataset")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[default_workers()],
        help="DataLoader worker counts to measure, e.g. 0 4 8",
    )
    ap.add_argument("--model", help="one case: this backbone (default: tiny3d 16x112 and r2plus1d_18 8x112)")
    ap.add_argument("--frames", type=int, help="frames per clip of --model (16)")
    ap.add_argument("--size", type=int, help="crop size of --model (112)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per fit; the first is warm-up")
    ap.add_argument("--repeat", type=int, default=1, help="list every training video this many times per epoch")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--no-compute-only", action="store_true", help="skip the compute-only baseline")
    ap.add_argument("--data", type=Path, help="a dataset folder with train.csv (default: synthesise one)")
    ap.add_argument("--identities", type=int, help="identities of the synthesised dataset (24; --quick 16)")
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.frames is not None or args.size is not None:
        if args.model is None:
            ap.error("--frames and --size go with --model")
    if min(args.workers) < 0 or args.epochs < 1 or args.repeat < 1 or args.batch_size < 2:
        ap.error("--workers >= 0, --epochs >= 1, --repeat >= 1 and --batch-size >= 2")
    return args


def cases(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    if args.model:
        return [(args.model, args.frames or 16, args.size or 112)]
    return [("tiny3d", 8, 64)] if args.quick else [("tiny3d", 16, 112), ("r2plus1d_18", 8, 112)]


def main(argv: list[str] | None = None) -> list[Measurement]:
    args = parse_args(argv)
    device = select_device(args.device)
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            generate(
                data,
                SynthConfig(
                    identities=args.identities or (16 if args.quick else 24),
                    cameras=2,
                    clips_per_camera=2,
                    frames=32,
                    size=80 if args.quick else 128,
                ),
            )
        train = repeated_manifest(data / "train.csv", Path(tmp) / "train_repeated.csv", args.repeat)
        print(
            f"{os.cpu_count()} CPUs, device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
            + f", --workers {' '.join(map(str, args.workers))}",
            flush=True,
        )
        for model, frames, size in cases(args):
            common = {
                "model": model,
                "frames": frames,
                "size": size,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "device": args.device,
                "precision": args.precision,
                "compile_model": args.compile,
            }
            # the baseline first: with a time limit outside, the figures it makes sense of come first
            runs = ([] if args.no_compute_only else [(0, True)]) + [(w, False) for w in args.workers]
            for workers, compute_only in runs:
                name = f"{model}_{'device' if compute_only else f'w{workers}'}"
                m = measure(train, Path(tmp) / name, workers=workers, compute_only=compute_only, **common)
                results.append(m)
                print(
                    f"  {model} {m.mode}"
                    + ("" if compute_only else f" --workers {m.workers}")
                    + f": {m.clips_per_s:.1f} clips/s, data wait {_pct(m.data_wait_share)} (steady "
                    f"{m.steady_clips_per_s:.1f} clips/s, wait {_pct(m.steady_wait_share)}), GPU util "
                    f"{_pct(m.gpu_util)} [{m.seconds:.0f} s]",
                    flush=True,
                )
                write_json(args.json, device, args, results)
                shutil.rmtree(Path(tmp) / name, ignore_errors=True)  # checkpoints of large models add up
    print(report(results), flush=True)
    return results


if __name__ == "__main__":
    main()

"""Sampling a 16-frame clip from 10 s 720p H.264 videos: our decord pipeline (seek to the sampled frames,
resize at decode time) vs a naive baseline that decodes the whole video with PyAV and indexes it; then
DataLoader throughput with 0, 1 and 2 workers. Measured side by side in one run; the videos are made here.

    python benchmarks/decode.py            # 3 videos, 10 s at 25 fps, 1280x720
    python benchmarks/decode.py --quick    # 2 videos, 4 s, 640x360
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.data.dataset import VideoDataset, collate, worker_init
from training.data.manifest import VideoRow
from training.data.synth import write_mp4
from training.data.video import ClipSpec, read_clip, sample_indices


def make_video(path: Path, seconds: int, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = seconds * 25
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    frames = np.stack([np.roll(base, 4 * t, axis=1) for t in range(n)])
    write_mp4(path, frames, fps=25)


def naive_clip(path: Path, spec: ClipSpec) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    idx = sample_indices(len(frames), spec, train=False, rng=None)
    return np.stack([frames[i] for i in idx])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    count, secs, w, h = (2, 4, 640, 360) if args.quick else (3, 10, 1280, 720)
    spec = ClipSpec(frames=16, size=112, sampling="segments")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"v{i}.mp4" for i in range(count)]
        t0 = time.perf_counter()
        for i, p in enumerate(paths):
            make_video(p, secs, w, h, i)
        print(f"made {count} videos of {secs} s at {w}x{h}, 25 fps, H.264 in {time.perf_counter() - t0:.0f} s")
        read_clip(paths[0], spec, train=False)  # warm-up
        t0 = time.perf_counter()
        for p in paths:
            ours = read_clip(p, spec, train=False)[0]
        t_ours = (time.perf_counter() - t0) / count
        t0 = time.perf_counter()
        for p in paths:
            naive_clip(p, spec)
        t_naive = (time.perf_counter() - t0) / count
        print(
            f"16-frame clip: ours {t_ours * 1e3:.0f} ms, whole-video PyAV decode {t_naive * 1e3:.0f} ms -> "
            f"{t_naive / t_ours:.1f}x faster (target >= 2x); ours returns {tuple(ours.shape)} resized at decode"
        )
        rows = [VideoRow(path=str(paths[i % count]), id=str(i), label="a") for i in range(12)]
        ds = VideoDataset(rows, spec, train=True, class_to_idx={"a": 0}, seed=0)
        for workers in (0, 1, 2):
            loader = DataLoader(
                ds,
                batch_size=4,
                num_workers=workers,
                collate_fn=collate,
                worker_init_fn=worker_init if workers else None,
            )
            t0 = time.perf_counter()
            n = sum(int(b["clip"].shape[0]) for b in loader)
            print(
                f"DataLoader, {workers} worker(s): {n / (time.perf_counter() - t0):.1f} clips/s "
                f"(decode + augment, {torch.get_num_threads()} torch threads in the parent)"
            )


if __name__ == "__main__":
    main()

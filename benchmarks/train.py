"""Training throughput: the real pipeline (decode + augment in DataLoader workers + step) vs the same steps on
clips already in memory, side by side in one run; the share of step time spent waiting for data.

    python benchmarks/train.py             # tiny3d (16x112 clips) and r2plus1d_18 (8x112), default --workers
    python benchmarks/train.py --quick     # tiny3d only, smaller
On a GPU the same script runs on it (--device auto): the wait share is then the GPU's idle headroom.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from training.config import default_workers
from training.data.synth import SynthConfig, generate
from training.trainer import TrainConfig, fit


def epoch2(data: Path, out: Path, model: str, frames: int, size: int, cache: bool, workers: int) -> dict:
    res = fit(TrainConfig(train=str(data / "train.csv"), out=str(out), model=model, frames=frames, size=size,
                          epochs=2, batch_size=8, workers=0 if cache else workers, cache=cache, quiet=True,
                          loss="imae"))
    return res.history[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=default_workers())
    args = ap.parse_args()
    cases = [("tiny3d", 8, 64)] if args.quick else [("tiny3d", 16, 112), ("r2plus1d_18", 8, 112)]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, SynthConfig(identities=16 if args.quick else 24, cameras=2, clips_per_camera=2,
                                   frames=32, size=128 if not args.quick else 80))
        print(f"{os.cpu_count()} CPUs, --workers {args.workers}")
        for model, frames, size in cases:
            real = epoch2(data, Path(tmp) / f"{model}_real", model, frames, size, cache=False, workers=args.workers)
            mem = epoch2(data, Path(tmp) / f"{model}_mem", model, frames, size, cache=True, workers=0)
            ratio = real["clips_per_s"] / mem["clips_per_s"]
            print(f"{model} {frames}x{size}: real pipeline {real['clips_per_s']:.1f} clips/s, data wait "
                  f"{real['data_wait_share']:.0%} of step time; clips in memory {mem['clips_per_s']:.1f} clips/s "
                  f"(wait {mem['data_wait_share']:.0%}) -> real/in-memory {ratio:.2f}"
                  + ("  (target: wait <= 10%)" if model == "tiny3d" else ""))


if __name__ == "__main__":
    main()

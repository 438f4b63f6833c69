"""Schedule trials for the noise benchmark's frame-noise setting (docs/noise-benchmark.md, Choosing the schedule).

CCE only, ``frames:0.4``, seed 0, fine-tuned from the headline grid's pretrained checkpoint in OUT_DIR (prepared
here if missing: the same data, pretraining and seed-0 outlier frames as ``vidret bench noise OUT_DIR --headline``,
so the grid reuses them). Each trial is the grid's own cell with some training options changed; it reports the
share of outlier frames the final model fits (``frame_memorisation``, frame by frame, as the grid does) and the test
mAP. Usage:

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/noise_frames_trials.py OUT_DIR [NAME ...]
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

# name -> TrainConfig overrides of the headline cell (40 epochs, adamw lr 1e-3, wd 0.01, batch 16, 4 frames, 24 px);
# "headline" is the grid's own cell (runs/cce_frames0.4_seed0), the others ran as docs/noise-benchmark.md shows
TRIALS = {
    "headline": {},
    "lr3e-3_wd0": {"lr": 3e-3, "weight_decay": 0.0},
    "sgd_lr0.05_wd0": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0},
    "all10frames_lr3e-3_wd0": {"frames": 10, "sampling": "uniform", "lr": 3e-3, "weight_decay": 0.0},
    "120ep_lr3e-3_wd0": {"epochs": 120, "lr": 3e-3, "weight_decay": 0.0},
    "300ep_lr3e-3_wd0": {"epochs": 300, "lr": 3e-3, "weight_decay": 0.0},
}


def trial(cfg, prep, noisy, train_csv, name: str, overrides: dict) -> dict:
    from training.bench.frames import frame_memorisation
    from training.bench.grid import _cell_config, _train

    tcfg = _cell_config(cfg, prep, "cce", 8.0, "frames", 0.4, 0, train_csv)
    tcfg = replace(tcfg, out=str(Path(cfg.out_dir) / "trials" / name), **overrides)
    if "epochs" in overrides:
        tcfg = replace(tcfg, warmup_epochs=min(1.0, tcfg.epochs / 4))
    hist, seconds, cpu = _train(tcfg)
    clean, fits, _, _ = frame_memorisation(Path(tcfg.out), noisy, "cce", 8.0, cfg.video_frames, cfg.batch_size)
    maps = [h["val_mAP"] for h in hist]
    best = max(range(len(maps)), key=maps.__getitem__)
    return {
        "trial": name, "overrides": overrides, "fits_outlier_frames": fits, "fits_clean_frames": clean,
        "final_mAP": maps[-1], "best_mAP": maps[best], "best_epoch": best + 1, "seconds": seconds, "cpu_seconds": cpu,
    }  # fmt: skip


def main(out_dir: str, names: list[str]) -> None:
    from training.bench.config import NoiseBenchConfig
    from training.bench.frames import frame_noise_rows
    from training.bench.grid import prepare, synth_config
    from training.bench.jobs import run_tasks
    from training.data.dataset import shared_frame_cache
    from training.data.manifest import read_manifest, write_manifest

    cfg = NoiseBenchConfig.headline_grid(out_dir)
    out = Path(out_dir)
    with shared_frame_cache():
        prep = prepare(cfg, print)
        rows = read_manifest(prep.finetune_csv, require_label=True)
        folder = out / "frames" / "frames0.4_seed0"  # the grid's own seed-0 outlier frames (noise seed 40)
        noisy, share = frame_noise_rows(synth_config(cfg), folder, rows, 0.4, 40)
        train_csv = write_manifest(out / "labels" / "train_frames0.4_seed0.csv", noisy)
        print(f"frames 0.4, seed 0: {share:.3f} of the frames outliers", flush=True)
        tasks = {n: (cfg, prep, noisy, train_csv, n, TRIALS[n]) for n in names or TRIALS}
        for _, res in run_tasks(cfg, trial, tasks):
            print(json.dumps(res), flush=True)
            with open(out / "trials.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

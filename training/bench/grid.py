"""``vidret bench noise``: every loss x noise rate x seed on the synthetic open-set dataset (docs/noise-benchmark.md).

1. One clean synthetic dataset (train identities disjoint from query/gallery identities).
2. IMAE's T, unless given, is chosen on a validation split carved from the TRAINING identities (never on
   query/gallery): IMAE is trained at ``select_rate`` noise on the other training identities with each candidate
   T, and the T with the best final validation mAP wins.
3. For each noise rate and seed the training labels are corrupted once (the same noisy labels for every loss);
   each loss trains with the test query/gallery evaluated after every epoch (the curves; ``best`` is the best
   epoch on that curve, reported to show memorisation, never used to choose anything); the final model is then run
   over the training set to measure accuracy against the given labels on clean and on mislabelled samples, and
   the final sample weights.
4. results.csv, results.md, plots/.

Runs already finished with the same settings (a ``done.json`` in their folder records them) are reused, so an
interrupted benchmark continues.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.bench.report import (
    RunResult,
    plot_curves,
    plot_map_vs_noise,
    plot_weight_histograms,
    results_markdown,
    write_results_csv,
)
from training.config import TrainConfig
from training.data.manifest import VideoRow, class_map, read_manifest, write_manifest
from training.data.noise import NOISE_TYPES, inject_noise


@dataclass
class NoiseBenchConfig:
    out_dir: str
    losses: list[str] = field(default_factory=lambda: ["cce", "mae", "gce", "imae"])
    rates: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6])
    noise_type: str = "symmetric"
    seeds: int = 2
    # data
    identities: int = 200
    cameras: int = 4
    clips_per_camera: int = 2
    video_frames: int = 16
    video_size: int = 64
    data_seed: int = 0
    # training
    model: str = "tiny3d"
    frames: int = 8
    size: int = 40
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    workers: int = 0
    imae_t: float | None = None
    t_candidates: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])
    select_rate: float = 0.4
    val_fraction: float = 0.2

    @classmethod
    def quick(cls, out_dir: str) -> NoiseBenchConfig:
        """Tiny: checks the plumbing in a minute or two."""
        return cls(
            out_dir=out_dir,
            losses=["cce", "imae"],
            rates=[0.0, 0.4],
            seeds=1,
            identities=16,
            cameras=2,
            clips_per_camera=2,
            video_frames=8,
            video_size=32,
            frames=4,
            size=24,
            epochs=2,
            batch_size=8,
            t_candidates=[4.0, 16.0],
        )

    def validate(self) -> None:
        from training.losses import list_losses

        bad = [loss for loss in self.losses if loss not in list_losses()]
        if bad:
            raise UserError(f"--losses: unknown loss {bad[0]!r}; choose from {', '.join(list_losses())}")
        if not self.losses or not self.rates:
            raise UserError("--losses and --rates need at least one value each")
        if any(not 0 <= r < 1 for r in self.rates):
            raise UserError(f"--rates must be in [0, 1), got {self.rates}")
        if self.noise_type not in NOISE_TYPES:
            raise UserError(f"--noise-type must be one of {', '.join(NOISE_TYPES)}, got {self.noise_type!r}")
        if self.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {self.seeds}")


def _synth(cfg: NoiseBenchConfig, folder: Path) -> None:
    from training.data.synth import SynthConfig, generate

    scfg = SynthConfig(
        identities=cfg.identities,
        cameras=cfg.cameras,
        clips_per_camera=cfg.clips_per_camera,
        frames=cfg.video_frames,
        size=cfg.video_size,
        noise=0.0,
        seed=cfg.data_seed,
    )
    stamp = folder / "synth.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("config") == asdict(scfg):
        return
    if folder.exists():
        shutil.rmtree(folder)
    generate(folder, scfg)


def _noisy_rows(rows: list[VideoRow], rate: float, kind: str, seed: int) -> tuple[list[VideoRow], float]:
    cmap = class_map(r.clean_label or r.label for r in rows)
    names = sorted(cmap, key=cmap.get)
    res = inject_noise(np.array([cmap[r.clean_label or r.label] for r in rows]), len(names), rate, kind, seed)
    return [
        replace(r, label=names[y], clean_label=r.clean_label or r.label) for r, y in zip(rows, res.labels, strict=True)
    ], res.rate


def carve_validation(rows: list[VideoRow], fraction: float, seed: int) -> tuple[list, list, list]:
    """Split training rows by identity: (fit rows, val query, val gallery); queries are the first clip of every
    other camera of each validation identity."""
    ids = sorted({r.clean_label or r.label for r in rows})
    rng = np.random.default_rng(seed)
    val_ids = set(rng.choice(ids, size=max(2, int(round(len(ids) * fraction))), replace=False).tolist())
    fit = [r for r in rows if (r.clean_label or r.label) not in val_ids]
    val = [replace(r, label=r.clean_label or r.label) for r in rows if (r.clean_label or r.label) in val_ids]
    query, gallery, seen = [], [], set()
    cams = sorted({r.camera for r in val})
    for r in val:
        key = (r.label, r.camera)
        if cams.index(r.camera) % 2 == 0 and key not in seen:
            seen.add(key)
            query.append(r)
        else:
            gallery.append(r)
    return fit, query, gallery


def cell_config(
    cfg: NoiseBenchConfig, loss: str, t: float, train_csv: Path, run: Path, seed: int, **overrides: Any
) -> TrainConfig:
    """The training configuration of one grid cell: the benchmark's model and schedule, decoded once (``cache``)."""
    return TrainConfig(
        train=str(train_csv),
        out=str(run),
        loss=loss,
        imae_t=t,
        model=cfg.model,
        frames=cfg.frames,
        size=cfg.size,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        workers=cfg.workers,
        seed=seed,
        cache=True,
        quiet=True,
        warmup_epochs=min(1.0, cfg.epochs / 4),
        **overrides,
    )


def _train(
    cfg: NoiseBenchConfig, loss: str, t: float, train_csv: Path, q_csv: Path, g_csv: Path, run: Path, seed: int
) -> list[dict]:
    from training.trainer import fit

    tcfg = cell_config(cfg, loss, t, train_csv, run, seed, val_query=str(q_csv), val_gallery=str(g_csv))
    done = run / "done.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("config") == asdict(tcfg):  # a finished run of these settings: reuse it
            return record["history"]
    if run.exists():
        shutil.rmtree(run)
    res = fit(tcfg)
    atomic_write_text(done, json.dumps({"config": asdict(tcfg), "history": res.history}))
    return res.history


def _train_fit(
    cfg: NoiseBenchConfig, run: Path, train_csv: Path, loss: str, t: float
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Accuracy against the given labels on clean / mislabelled training samples, final weights, flipped mask."""
    import torch

    from training.audit import predict
    from training.losses import build_loss

    rows, probs, given, _ = predict(
        run / "checkpoints" / "last.pt",
        train_csv,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        device="auto",
        cache=True,
    )
    flipped = np.array([r.clean_label != r.label for r in rows])
    correct = probs.argmax(1) == given
    kwargs = {"t": t} if loss == "imae" else {}
    logits = torch.from_numpy(np.log(np.clip(probs, 1e-30, None)))
    weights = build_loss(loss, **kwargs).sample_weights(logits, torch.from_numpy(given)).numpy()
    acc = lambda m: float(correct[m].mean()) if m.any() else float("nan")  # noqa: E731
    return acc(~flipped), acc(flipped), weights, flipped


def select_t(cfg: NoiseBenchConfig, rows: list[VideoRow], out: Path, log) -> float:
    fit_rows, query, gallery = carve_validation(rows, cfg.val_fraction, cfg.data_seed)
    noisy, _ = _noisy_rows(fit_rows, cfg.select_rate, cfg.noise_type, seed=12345)
    folder = out / "t_selection"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rs in (("train.csv", noisy), ("val_query.csv", query), ("val_gallery.csv", gallery)):
        write_manifest(folder / name, rs)
    scores = {}
    for t in cfg.t_candidates:
        hist = _train(
            cfg,
            "imae",
            t,
            folder / "train.csv",
            folder / "val_query.csv",
            folder / "val_gallery.csv",
            folder / f"imae_t{t:g}",
            seed=0,
        )
        scores[t] = hist[-1]["val_mAP"]
        log(f"T selection: T={t:g} -> validation mAP {scores[t]:.4f} (noise {cfg.select_rate:g})")
    best = max(scores, key=lambda t: scores[t])
    atomic_write_text(
        folder / "selection.json",
        json.dumps({"candidates": scores, "chosen": best, "noise_rate": cfg.select_rate}, indent=2),
    )
    return best


def run_noise_bench(cfg: NoiseBenchConfig, log=print) -> list[RunResult]:
    """The whole grid. Every run trains on and is tested on the same videos: they are decoded once, in memory."""
    from training.data.dataset import shared_frame_cache

    cfg.validate()
    with shared_frame_cache():
        return _run_grid(cfg, log)


def _run_grid(cfg: NoiseBenchConfig, log) -> list[RunResult]:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    log(f"synthetic data -> {data}")
    _synth(cfg, data)
    rows = read_manifest(data / "train.csv", require_label=True)
    t = cfg.imae_t
    if "imae" in cfg.losses and t is None:
        t = select_t(cfg, rows, out, log)
        log(f"chosen IMAE T = {t:g} (on a validation split of the training identities)")
    t = t if t is not None else 8.0
    atomic_write_text(out / "bench_config.json", json.dumps({**asdict(cfg), "imae_t_used": t}, indent=2))
    results: list[RunResult] = []
    curves: dict[tuple[float, int], dict[str, list[dict]]] = {}
    weights: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    total = len(cfg.rates) * cfg.seeds * len(cfg.losses)
    i = 0
    for rate in cfg.rates:
        for seed in range(cfg.seeds):
            noisy, realised = _noisy_rows(rows, rate, cfg.noise_type, seed=1000 * seed + int(round(rate * 100)))
            train_csv = write_manifest(out / "labels" / f"train_noise{rate:g}_seed{seed}.csv", noisy)
            for loss in cfg.losses:
                i += 1
                run = out / "runs" / f"{loss}_noise{rate:g}_seed{seed}"
                log(f"[{i}/{total}] {loss} at noise {rate:g} (realised {realised:.3f}), seed {seed}")
                hist = _train(cfg, loss, t, train_csv, data / "query.csv", data / "gallery.csv", run, seed=seed)
                acc_clean, acc_noisy, w, flipped = _train_fit(cfg, run, train_csv, loss, t)
                maps = [h["val_mAP"] for h in hist]
                best = int(np.argmax(maps))
                results.append(
                    RunResult(
                        loss,
                        rate,
                        seed,
                        maps[-1],
                        maps[best],
                        hist[-1]["val_cmc1"],
                        max(h["val_cmc1"] for h in hist),
                        acc_clean,
                        acc_noisy,
                    )
                )
                curves.setdefault((rate, seed), {})[loss] = hist
                if seed == 0:
                    weights.setdefault(rate, {})[loss] = (w, flipped)
                log(
                    f"    final mAP {maps[-1]:.4f}, best {maps[best]:.4f} (epoch {best + 1}); train acc clean "
                    f"{acc_clean:.3f}, mislabelled {acc_noisy if not math.isnan(acc_noisy) else float('nan'):.3f}"
                )
    write_results_csv(out / "results.csv", results)
    header = (
        f"# Noise benchmark\n\n{cfg.model}, {cfg.epochs} epochs, {cfg.identities // 2} train identities, "
        f"{cfg.noise_type} noise, {cfg.seeds} seed(s); IMAE T = {t:g}; test = clean query/gallery of unseen "
        f"identities.\n"
    )
    atomic_write_text(out / "results.md", results_markdown(results, header))
    plots = out / "plots"
    plot_map_vs_noise(results, plots / "map_vs_noise.png")
    for (rate, seed), hists in curves.items():
        if seed == 0:
            plot_curves(hists, plots / f"curves_noise{rate:g}.png", f"noise {rate:g}, seed {seed}")
    for rate, ws in weights.items():
        if rate > 0:
            plot_weight_histograms(ws, plots / f"weights_noise{rate:g}.png", f"final sample weights, noise {rate:g}")
    return results

"""A synthetic open-set video re-identification dataset, written as real H.264 mp4 files.

Each identity is a walking figure with its own appearance (upper and lower colours drawn from a small shared
palette, so identities collide on colour; a stripe texture; body proportions; an optional bag) and its own motion
(speed, direction, gait frequency, bobbing). Each camera has its own background texture, lighting (gain and colour
cast), scale, viewpoint (mirroring and shear), sensor noise and blur; clips add small appearance jitter and,
optionally, an occluder. Train identities are disjoint from query/gallery identities (open-set retrieval, as in
re-ID). ``label`` of train.csv carries the requested label noise (training/data/noise.py), ``clean_label`` the truth.
Everything is determined by the seed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.data.noise import NOISE_TYPES, inject_noise

PALETTE = np.array(
    [
        [0.85, 0.15, 0.15],
        [0.15, 0.35, 0.85],
        [0.15, 0.7, 0.25],
        [0.9, 0.8, 0.2],
        [0.15, 0.15, 0.15],
        [0.9, 0.9, 0.9],
        [0.55, 0.3, 0.15],
        [0.6, 0.2, 0.7],
    ]
)


@dataclass(frozen=True)
class SynthConfig:
    identities: int = 200  # in all; half train, half query/gallery
    cameras: int = 4
    clips_per_camera: int = 2
    frames: int = 16
    size: int = 64
    noise: float = 0.0
    noise_type: str = "symmetric"
    seed: int = 0
    occluders: bool = True
    train_fraction: float = 0.5

    def validate(self) -> None:
        if self.identities < 4:
            raise UserError(f"--identities must be >= 4 (half train, half test), got {self.identities}")
        if self.cameras < 2:
            raise UserError(f"--cameras must be >= 2 (retrieval is across cameras), got {self.cameras}")
        if self.clips_per_camera < 1 or self.frames < 2:
            raise UserError(
                f"--clips-per-camera must be >= 1 and --frames >= 2, got {self.clips_per_camera}, {self.frames}"
            )
        if self.size < 16 or self.size % 2:
            raise UserError(f"--size must be an even number >= 16 (H.264 needs even sizes), got {self.size}")
        if not 0.0 <= self.noise <= 1.0:
            raise UserError(f"--noise must be in [0, 1], got {self.noise}")
        if self.noise_type not in NOISE_TYPES:
            raise UserError(f"--noise-type must be one of {', '.join(NOISE_TYPES)}, got {self.noise_type!r}")


def _identity(rng: np.random.Generator) -> dict:
    top, bottom = rng.choice(len(PALETTE), 2, replace=True)
    return {
        "top": PALETTE[top] + rng.normal(0, 0.05, 3),
        "bottom": PALETTE[bottom] + rng.normal(0, 0.05, 3),
        "stripe_freq": float(rng.choice([0.0, 0.6, 1.1, 1.7])),
        "stripe_angle": float(rng.uniform(0, np.pi)),
        "stripe_strength": float(rng.uniform(0.25, 0.6)),
        "width": float(rng.uniform(0.16, 0.28)),
        "height": float(rng.uniform(0.5, 0.72)),
        "split": float(rng.uniform(0.4, 0.6)),
        "speed": float(rng.uniform(0.01, 0.035)) * float(rng.choice([-1, 1])),
        "gait": float(rng.uniform(0.25, 0.7)),
        "bob": float(rng.uniform(0.005, 0.03)),
        "bag": bool(rng.random() < 0.5),
        "bag_color": PALETTE[rng.integers(len(PALETTE))],
    }


def _camera(rng: np.random.Generator) -> dict:
    return {
        "bg_a": rng.uniform(0.1, 0.9, 3),
        "bg_b": rng.uniform(0.1, 0.9, 3),
        "bg_freq": float(rng.uniform(2, 9)),
        "gain": float(rng.uniform(0.65, 1.25)),
        "cast": rng.normal(0, 0.08, 3),
        "scale": float(rng.uniform(0.75, 1.15)),
        "mirror": bool(rng.random() < 0.5),
        "shear": float(rng.uniform(-0.25, 0.25)),
        "noise": float(rng.uniform(0.01, 0.05)),
        "blur": bool(rng.random() < 0.5),
    }


def render_clip(ident: dict, cam: dict, frames: int, size: int, rng: np.random.Generator, occluder: bool) -> np.ndarray:
    """uint8 (frames, size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    xs = xx + cam["shear"] * (yy - 0.5)  # viewpoint shear
    bg = (
        cam["bg_a"] * (0.5 + 0.5 * np.sin(cam["bg_freq"] * (xx + 0.3 * yy) * np.pi))[..., None]
        + cam["bg_b"] * (0.5 + 0.5 * np.cos(cam["bg_freq"] * 0.7 * yy * np.pi))[..., None]
    )
    bg = bg / 2 + rng.normal(0, 0.02, (size, size, 3))
    scale = cam["scale"] * rng.uniform(0.9, 1.1)
    w, h = ident["width"] * scale, ident["height"] * scale
    top_c = np.clip(ident["top"] + rng.normal(0, 0.04, 3), 0, 1)
    bot_c = np.clip(ident["bottom"] + rng.normal(0, 0.04, 3), 0, 1)
    x0 = rng.uniform(0.25, 0.75)
    y0 = rng.uniform(0.45, 0.55)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sign(
        np.sin(ident["stripe_freq"] * 40 * (xs * np.cos(ident["stripe_angle"]) + yy * np.sin(ident["stripe_angle"])))
    )
    occ = None
    if occluder and rng.random() < 0.4:
        occ = (rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.9, 3))
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        cx = (x0 + ident["speed"] * t * scale - 0.5) % 1.0 * 0.7 + 0.15
        cy = y0 + ident["bob"] * np.sin(2 * ident["gait"] * t + phase)
        img = bg.copy()
        top_h = h * ident["split"]
        torso = ((xs - cx) / (w / 2)) ** 2 + ((yy - (cy - h / 2 + top_h / 2)) / (top_h / 2)) ** 2 < 1
        swing = np.sin(ident["gait"] * t + phase) * w * 0.35
        leg_top = cy - h / 2 + top_h
        legs_y = (yy > leg_top) & (yy < cy + h / 2)
        reach = (yy - leg_top) / max(h - top_h, 1e-3)
        leg1 = np.abs(xs - (cx - w * 0.2 + swing * reach)) < w * 0.17
        leg2 = np.abs(xs - (cx + w * 0.2 - swing * reach)) < w * 0.17
        head = ((xs - cx) / (w * 0.28)) ** 2 + ((yy - (cy - h / 2 - w * 0.2)) / (w * 0.28)) ** 2 < 1
        tex = 1 - ident["stripe_strength"] * stripes[..., None]
        img[torso] = top_c * tex[torso]
        img[legs_y & (leg1 | leg2)] = bot_c
        img[head] = np.array([0.85, 0.7, 0.55])
        if ident["bag"]:
            bag = (np.abs(xs - (cx + w * 0.55)) < w * 0.18) & (np.abs(yy - cy) < h * 0.12)
            img[bag] = ident["bag_color"]
        if occ is not None:
            img[np.abs(xx - occ[0]) < occ[1]] = occ[2]
        img = img * cam["gain"] + cam["cast"]
        if cam["blur"]:
            img = (img + np.roll(img, 1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)) / 4
        img = img + rng.normal(0, cam["noise"], img.shape)
        if cam["mirror"]:
            img = img[:, ::-1]
        out[t] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 12) -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4 (yuv420p), written atomically."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Bit-reproducible output: x264's rate control (crf) gave different bitstreams for the same frames now and
        # then, most often across processes (even single-threaded, aq off); constant QP on one thread never did.
        stream.options = {"qp": "20", "preset": "veryfast", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _clip_job(args: tuple) -> None:
    out, ident, cam, frames, size, seed, occluder = args
    write_mp4(out, render_clip(ident, cam, frames, size, np.random.default_rng(seed), occluder))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def generate(
    out_dir: str | Path,
    cfg: SynthConfig,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the videos and train.csv / query.csv / gallery.csv; return a summary (also saved as synth.json)."""
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    idents = [_identity(rng) for _ in range(cfg.identities)]
    cams = [_camera(rng) for _ in range(cfg.cameras)]
    n_train = max(2, int(round(cfg.identities * cfg.train_fraction)))
    jobs, train, query, gallery = [], [], [], []
    for i, ident in enumerate(idents):
        name = f"id{i:04d}"
        for c, cam in enumerate(cams):
            for k in range(cfg.clips_per_camera):
                rel = f"videos/{name}/c{c + 1}_s{k}.mp4"
                clip_seed = int(rng.integers(2**31))
                jobs.append((str(out / rel), ident, cam, cfg.frames, cfg.size, clip_seed, cfg.occluders))
                row = [rel, f"{name}_c{c + 1}_s{k}", name, f"c{c + 1}"]
                if i < n_train:
                    train.append(row)
                elif k == 0 and c % 2 == 0:  # queries: the first clip of every other camera
                    query.append(row)
                else:
                    gallery.append(row)
    workers = workers or min(4, os.cpu_count() or 1)
    done = 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_clip_job, jobs, chunksize=8):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _clip_job(job)
            done += 1
            if progress:
                progress(done, len(jobs))
    names = sorted({r[2] for r in train})
    idx = {n: j for j, n in enumerate(names)}
    clean = np.array([idx[r[2]] for r in train])
    noisy = inject_noise(clean, len(names), cfg.noise, cfg.noise_type, seed=cfg.seed)
    train_rows = [[r[0], r[1], names[noisy.labels[j]], r[3], r[2]] for j, r in enumerate(train)]
    _write_csv(out / "train.csv", ["path", "id", "label", "camera", "clean_label"], train_rows)
    _write_csv(out / "query.csv", ["path", "id", "label", "camera"], query)
    _write_csv(out / "gallery.csv", ["path", "id", "label", "camera"], gallery)
    summary = {
        "config": asdict(cfg),
        "train_identities": n_train,
        "test_identities": cfg.identities - n_train,
        "train_videos": len(train),
        "query_videos": len(query),
        "gallery_videos": len(gallery),
        "realised_noise_rate": noisy.rate,
    }
    atomic_write_text(out / "synth.json", json.dumps(summary, indent=2))
    return summary

"""A synthetic open-set video re-identification dataset, written as real H.264 mp4 files.

Each identity is a walking figure with its own appearance (upper and lower colours drawn from a small shared
palette, so identities collide on colour; a stripe texture; body proportions; an optional bag) and its own motion
(speed, direction, gait frequency, bobbing). Each camera has its own background texture, lighting (gain and colour
cast), scale, viewpoint (mirroring and shear), sensor noise and blur; clips add small appearance jitter and,
optionally, an occluder. Train identities are disjoint from query/gallery identities (open-set retrieval, as in
re-ID). ``label`` of train.csv carries the requested label noise (training/data/noise.py), ``clean_label`` the truth.

``frame_noise`` is the video noise of real tracklets (detector and tracker errors): in each training clip a share
``frame_noise`` of the frames (``round(rate * frames)``, chosen per clip) shows the camera's background only or
another training identity (half and half on average), recorded in train.csv's ``outlier_frames``. Its choices come
from a generator of their own (``frame_noise_seed``), so the clean frames are those of the clean dataset.
Query and gallery clips stay clean. Everything is determined by the seeds.
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
    frame_noise: float = 0.0
    frame_noise_seed: int | None = None  # None: ``seed``

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
        if not 0.0 <= self.frame_noise < 1.0:
            raise UserError(f"--frame-noise must be in [0, 1), got {self.frame_noise}")
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


def render_clip(
    ident: dict, cam: dict, frames: int, size: int, rng: np.random.Generator, occluder: bool, person: bool = True
) -> np.ndarray:
    """uint8 (frames, size, size, 3); ``person=False``: the same clip without the person (background only)."""
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
        if person:
            _draw_person(img, ident, xs, yy, cx, cy, w, h, t, phase, top_c, bot_c, stripes)
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


def _draw_person(img, ident, xs, yy, cx, cy, w, h, t, phase, top_c, bot_c, stripes) -> None:
    """Paint the walking figure into ``img`` (H, W, 3) in place."""
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
    out, *rest = args
    write_mp4(out, render_with_outliers(*rest))


def render_with_outliers(
    ident: dict, cam: dict, frames: int, size: int, seed: int, occluder: bool, outliers: list
) -> np.ndarray:
    """A clip whose ``outliers`` frames ``(t, None)`` show the background only, ``(t, other)`` another identity."""
    clip = render_clip(ident, cam, frames, size, np.random.default_rng(seed), occluder)
    if outliers:
        background = render_clip(ident, cam, frames, size, np.random.default_rng(seed), occluder, person=False)
        for t, other in outliers:
            if other is None:
                clip[t] = background[t]
            else:  # another identity walking through the same camera
                clip[t] = render_clip(other, cam, frames, size, np.random.default_rng(seed + 1), occluder)[t]
    return clip


def choose_outliers(frames: int, rate: float, rng: np.random.Generator, others: int) -> list[tuple[int, int | None]]:
    """``round(rate * frames)`` distinct frames of a clip, each ``(frame, None)`` (background only) or
    ``(frame, j)`` (the ``j``-th of ``others`` other identities), half and half on average, sorted by frame."""
    n = int(round(rate * frames))
    picked = sorted(int(t) for t in rng.choice(frames, size=n, replace=False)) if n else []
    return [(t, None if others == 0 or rng.random() < 0.5 else int(rng.integers(others))) for t in picked]


@dataclass
class _Clip:
    identity: int
    camera: int
    take: int
    rel: str
    seed: int

    @property
    def row(self) -> list[str]:
        name = f"id{self.identity:04d}"
        return [self.rel, f"{name}_c{self.camera + 1}_s{self.take}", name, f"c{self.camera + 1}"]


def _plan(cfg: SynthConfig) -> tuple[list[dict], list[dict], list[_Clip], int]:
    """Identities, cameras, every clip (in the order the seed draws them) and the number of training identities."""
    rng = np.random.default_rng(cfg.seed)
    idents = [_identity(rng) for _ in range(cfg.identities)]
    cams = [_camera(rng) for _ in range(cfg.cameras)]
    n_train = max(2, int(round(cfg.identities * cfg.train_fraction)))
    clips = [
        _Clip(i, c, k, f"videos/id{i:04d}/c{c + 1}_s{k}.mp4", int(rng.integers(2**31)))
        for i in range(cfg.identities)
        for c in range(cfg.cameras)
        for k in range(cfg.clips_per_camera)
    ]
    return idents, cams, clips, n_train


def _outlier_plan(
    cfg: SynthConfig, clip: _Clip, idents: list[dict], n_train: int, rate: float, seed: int
) -> list[tuple[int, dict | None]]:
    """A training clip's outlier frames, from a generator of their own (seed, identity, camera, take)."""
    rng = np.random.default_rng([seed, clip.identity, clip.camera, clip.take])
    others = [j for j in range(n_train) if j != clip.identity]
    chosen = choose_outliers(cfg.frames, rate, rng, len(others))
    return [(t, None if j is None else idents[others[j]]) for t, j in chosen]


def _run_jobs(jobs: list[tuple], workers: int | None, progress: Callable[[int, int], None] | None) -> None:
    workers = workers or min(4, os.cpu_count() or 1)
    done = 0
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_clip_job, jobs, chunksize=8):
                done += 1
                if progress:
                    progress(done, len(jobs))
        return
    for job in jobs:
        _clip_job(job)
        done += 1
        if progress:
            progress(done, len(jobs))


def render_frame_noise(
    cfg: SynthConfig,
    out_dir: str | Path,
    identities: set[str],
    rate: float,
    seed: int,
    workers: int | None = None,
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The training clips of ``identities`` (names ``idNNNN`` of ``cfg``'s dataset) again, with outlier frames at
    ``rate`` chosen with ``seed``, under ``out_dir``: clip id -> (absolute path, outlier frame indices). The noise
    benchmark draws one set of outlier frames per seed this way."""
    idents, cams, clips, n_train = _plan(cfg)
    out = Path(out_dir)
    jobs, found = [], {}
    for clip in clips:
        row = clip.row
        if clip.identity >= n_train or row[2] not in identities:
            continue
        outliers = _outlier_plan(cfg, clip, idents, n_train, rate, seed)
        path = out / clip.rel
        ident, cam = idents[clip.identity], cams[clip.camera]
        jobs.append((str(path), ident, cam, cfg.frames, cfg.size, clip.seed, cfg.occluders, outliers))
        found[row[1]] = (str(path.resolve()), tuple(t for t, _ in outliers))
    _run_jobs(jobs, workers, None)
    return found


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
    idents, cams, clips, n_train = _plan(cfg)
    frame_seed = cfg.seed if cfg.frame_noise_seed is None else cfg.frame_noise_seed
    jobs, train, query, gallery = [], [], [], []
    for clip in clips:
        row = clip.row
        outliers = []
        if clip.identity < n_train:
            if cfg.frame_noise > 0:
                outliers = _outlier_plan(cfg, clip, idents, n_train, cfg.frame_noise, frame_seed)
            train.append(row + [";".join(str(t) for t, _ in outliers) or "-"])
        elif clip.take == 0 and clip.camera % 2 == 0:  # queries: the first clip of every other camera
            query.append(row)
        else:
            gallery.append(row)
        ident, cam = idents[clip.identity], cams[clip.camera]
        jobs.append((str(out / clip.rel), ident, cam, cfg.frames, cfg.size, clip.seed, cfg.occluders, outliers))
    _run_jobs(jobs, workers, progress)
    names = sorted({r[2] for r in train})
    idx = {n: j for j, n in enumerate(names)}
    clean = np.array([idx[r[2]] for r in train])
    noisy = inject_noise(clean, len(names), cfg.noise, cfg.noise_type, seed=cfg.seed)
    train_rows = [[r[0], r[1], names[noisy.labels[j]], r[3], r[2], r[4]] for j, r in enumerate(train)]
    header = ["path", "id", "label", "camera", "clean_label", "outlier_frames"]
    if cfg.frame_noise == 0:  # the column only where there is frame noise to record
        header, train_rows = header[:-1], [r[:-1] for r in train_rows]
    _write_csv(out / "train.csv", header, train_rows)
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
        "outlier_frames_per_clip": int(round(cfg.frame_noise * cfg.frames)),
    }
    atomic_write_text(out / "synth.json", json.dumps(summary, indent=2))
    return summary

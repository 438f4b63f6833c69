"""Sampling a 16-frame clip from 10 s 720p H.264 videos: our decord pipeline (seek to the sampled frames,
resize at decode time) vs a naive baseline that decodes the whole video with PyAV and indexes it; then
DataLoader throughput with 0, 1 and 2 workers. Measured side by side in one run; the videos are made here.

Then the same 16 frame indices of the same files with the decoders users would pick instead (unless --no-peers):
torchcodec (``VideoDecoder(...).get_frames_at``; ``pip install -e '.[bench]'`` and FFmpeg's shared libraries,
Debian's libavcodec59 and friends) and PyAV seeking to each frame (it demuxes the keyframe positions first and seeks
only past a keyframe). Each is timed at the clip's decode size (ours resizes while decoding; torchcodec with its
decoder-native ``Resize``; PyAV with ``frame.reformat``) and at full size, in interleaved rounds (the median
round counts), and the frames are compared: the max abs difference from ours.

    python benchmarks/decode.py            # 3 videos, 10 s at 25 fps, 1280x720
    python benchmarks/decode.py --quick    # 2 videos, 4 s, 640x360
    python benchmarks/decode.py --json benchmarks/results/peers/decode.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peers import add_peer_args, version_of, write_json
from torch.utils.data import DataLoader

from training.data.dataset import VideoDataset, collate, worker_init
from training.data.manifest import VideoRow
from training.data.synth import write_mp4
from training.data.video import DECODE_THREADS, ClipSpec, _resized_hw, num_frames, read_clip, sample_indices


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


# ---- the peers ----------------------------------------------------------------------------------------------------
def torchcodec_clip(path: Path, indices: list[int], size: tuple[int, int] | None) -> torch.Tensor:
    """Frames ``indices`` as uint8 (N, H, W, 3): torchcodec's exact seek mode, resized by its decoder-native
    ``Resize`` (bilinear, antialiased) when ``size`` (h, w) is given."""
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    decoder = VideoDecoder(
        str(path),
        dimension_order="NHWC",
        num_ffmpeg_threads=DECODE_THREADS,
        seek_mode="exact",
        transforms=[Resize(size)] if size is not None else None,
    )
    return decoder.get_frames_at(indices).data


def torchcodec_resized_clip(path: Path, indices: list[int], size: tuple[int, int]) -> torch.Tensor:
    """torchcodec's full-size frames, then resized in torch on uint8 (bilinear, antialiased: torchvision's
    ``v2.Resize`` default): the other way a torchcodec user gets a clip of our size."""
    frames = torchcodec_clip(path, indices, None).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
    out = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.permute(0, 2, 3, 1).contiguous()


def pyav_seek_clip(path: Path, indices: list[int], size: tuple[int, int] | None) -> torch.Tensor:
    """Frames ``indices`` (sorted) as uint8 (N, H, W, 3) with PyAV, seeking: the keyframes' timestamps are demuxed
    first (no decoding), then it seeks to the keyframe before a wanted frame only when decoding on from where it is
    would pass that keyframe anyway. Frame i is the one at time i / fps (constant frame rate), resized with FFmpeg's
    swscale (bilinear) when ``size`` (h, w) is given."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = DECODE_THREADS
        start = int(stream.start_time or 0)
        step = 1 / (stream.average_rate * stream.time_base)  # timestamp units per frame
        keys = sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None)
        frames, last = None, None
        for i in indices:
            target = start + int(round(i * step))
            before = max((k for k in keys if k <= target), default=start)
            if frames is None or last is None or last >= target or before > last:
                container.seek(before, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                last = frame.pts
                if frame.pts is not None and frame.pts >= target:
                    kw = {"width": size[1], "height": size[0], "interpolation": "BILINEAR"} if size else {}
                    out.append(frame.reformat(format="rgb24", **kw).to_ndarray())
                    break
    return torch.from_numpy(np.stack(out))


def _rounds(methods: dict[str, Callable[[Path], torch.Tensor]], paths: list[Path], rounds: int) -> dict[str, float]:
    """ms per clip of each method: in each round every method decodes every video once, methods interleaved so
    that load from other processes falls on all of them alike; the median round counts."""
    per: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            for p in paths:
                fn(p)
            per[name].append((time.perf_counter() - t0) / len(paths) * 1e3)
    return {name: statistics.median(v) for name, v in per.items()}


def compare_peers(paths: list[Path], spec: ClipSpec, rounds: int) -> dict:
    try:
        import torchcodec  # noqa: F401 - loads FFmpeg's libraries: fails without them
    except Exception as exc:  # ImportError, or RuntimeError "Could not load libtorchcodec" without FFmpeg
        print(
            f"torchcodec: not available ({str(exc).splitlines()[0][:200]}); pip install -e '.[bench]' and "
            f"Debian's libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 "
            f"libavfilter8"
        )
        return {"skipped": f"torchcodec not available: {str(exc).splitlines()[0][:200]}"}
    n = num_frames(paths[0])
    h, w = read_clip(paths[0], spec, train=False, decode_short_side=0)[0].shape[1:3]
    size = _resized_hw(h, w, spec.decode_short_side)
    idx = {p: sample_indices(num_frames(p), spec, train=False, rng=None) for p in paths}
    uniq = {p: np.unique(i).tolist() for p, i in idx.items()}
    print(
        f"\npeers: the same {spec.frames} frame indices of the same {len(paths)} files ({w}x{h}, {n} frames; "
        f"{idx[paths[0]].tolist()} in the first), {DECODE_THREADS} decoding thread(s) each, {rounds} rounds"
    )
    methods = {
        "ours": lambda p: read_clip(p, spec, train=False)[0],
        "torchcodec_resize": lambda p: torchcodec_clip(p, uniq[p], size),
        "torchcodec_torch_resize": lambda p: torchcodec_resized_clip(p, uniq[p], size),
        "pyav_seek": lambda p: pyav_seek_clip(p, uniq[p], size),
        "ours_full": lambda p: read_clip(p, spec, train=False, decode_short_side=0)[0],
        "torchcodec_full": lambda p: torchcodec_clip(p, uniq[p], None),
        "pyav_seek_full": lambda p: pyav_seek_clip(p, uniq[p], None),
    }
    for fn in methods.values():  # warm-up (and the frames are decodable)
        fn(paths[0])
    ms = _rounds(methods, paths, rounds)
    diffs: dict[str, int] = {}
    for p in paths:
        inv = torch.from_numpy(np.unique(idx[p], return_inverse=True)[1])
        for full in (False, True):
            sfx = "_full" if full else ""
            ref = methods["ours" + sfx](p).to(torch.int16)
            peers = (
                ("torchcodec_full", "pyav_seek_full")
                if full
                else ("torchcodec_resize", "torchcodec_torch_resize", "pyav_seek")
            )
            for key in peers:
                got = methods[key](p)[inv].to(torch.int16)
                d = int((ref - got).abs().max()) if got.shape == ref.shape else -1
                diffs[key] = max(diffs.get(key, 0), d) if d >= 0 and diffs.get(key, 0) >= 0 else -1
    ms["torchcodec"] = min(ms["torchcodec_resize"], ms["torchcodec_torch_resize"])
    best = "its Resize" if ms["torchcodec_resize"] <= ms["torchcodec_torch_resize"] else "torch resize"
    res = {
        "torchcodec": version_of("torchcodec"),
        "decord": version_of("decord"),
        "av": version_of("av"),
        "decode_size": list(size),
        "torchcodec_fastest_resize": best,
        "full_size": [int(h), int(w)],
        "ms_per_clip": ms,
        "ratio_torchcodec_over_ours": ms["torchcodec"] / ms["ours"],
        "ratio_pyav_seek_over_ours": ms["pyav_seek"] / ms["ours"],
        "ratio_torchcodec_over_ours_full": ms["torchcodec_full"] / ms["ours_full"],
        "ratio_pyav_seek_over_ours_full": ms["pyav_seek_full"] / ms["ours_full"],
        "max_abs_diff_from_ours": diffs,
    }
    print(
        f"at decode size {size[1]}x{size[0]}: ours {ms['ours']:.0f} ms, torchcodec {ms['torchcodec']:.0f} ms "
        f"({best}; with its Resize {ms['torchcodec_resize']:.0f} ms, full size + torch resize "
        f"{ms['torchcodec_torch_resize']:.0f} ms), PyAV seeking {ms['pyav_seek']:.0f} ms per clip -> "
        f"ours/torchcodec speed {res['ratio_torchcodec_over_ours']:.2f}x (target >= 1.0x), ours/PyAV "
        f"{res['ratio_pyav_seek_over_ours']:.2f}x"
    )
    print(
        f"at full size {w}x{h}: ours {ms['ours_full']:.0f} ms, torchcodec {ms['torchcodec_full']:.0f} ms, PyAV "
        f"seeking {ms['pyav_seek_full']:.0f} ms -> ours/torchcodec {res['ratio_torchcodec_over_ours_full']:.2f}x, "
        f"ours/PyAV {res['ratio_pyav_seek_over_ours_full']:.2f}x"
    )
    print(
        f"max abs difference from our frames (uint8): full size torchcodec {diffs['torchcodec_full']}, PyAV "
        f"{diffs['pyav_seek_full']}; resized: torchcodec's Resize {diffs['torchcodec_resize']} (antialiased; ours "
        f"is FFmpeg's bilinear), torch resize {diffs['torchcodec_torch_resize']}, PyAV {diffs['pyav_seek']}"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--videos", type=int, help="Number of videos (default 3; --quick 2).")
    ap.add_argument("--seconds", type=int, help="Length of each video (default 10; --quick 4).")
    ap.add_argument("--resolution", help="WxH (default 1280x720; --quick 640x360).")
    ap.add_argument(
        "--rounds", type=int, default=None, help="Interleaved timing rounds of the peers (default 5; --quick 3)."
    )
    ap.add_argument("--no-loader", action="store_true", help="Skip the DataLoader throughput.")
    add_peer_args(ap)
    args = ap.parse_args()
    count, secs, w, h = (2, 4, 640, 360) if args.quick else (3, 10, 1280, 720)
    count, secs = args.videos or count, args.seconds or secs
    if args.resolution:
        w, h = (int(v) for v in args.resolution.lower().split("x"))
    rounds = args.rounds or (3 if args.quick else 5)
    spec = ClipSpec(frames=16, size=112, sampling="segments")
    figures: dict = {"videos": count, "seconds": secs, "resolution": f"{w}x{h}", "fps": 25, "frames": 16}
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
        figures["naive"] = {"ours_ms": t_ours * 1e3, "whole_video_pyav_ms": t_naive * 1e3, "ratio": t_naive / t_ours}
        if not args.no_loader:
            rows = [VideoRow(path=str(paths[i % count]), id=str(i), label="a") for i in range(12)]
            ds = VideoDataset(rows, spec, train=True, class_to_idx={"a": 0}, seed=0)
            figures["dataloader_clips_per_s"] = {}
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
                rate = n / (time.perf_counter() - t0)
                figures["dataloader_clips_per_s"][str(workers)] = rate
                print(
                    f"DataLoader, {workers} worker(s): {rate:.1f} clips/s "
                    f"(decode + augment, {torch.get_num_threads()} torch threads in the parent)"
                )
        if not args.no_peers:
            figures["peers"] = compare_peers(paths, spec, rounds)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

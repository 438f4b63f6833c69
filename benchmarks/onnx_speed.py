"""CPU embedding throughput: onnxruntime (an export of ``vidret export --format onnx``) vs torch (eval mode,
``torch.no_grad``), side by side in one run, on the same preprocessed clips and the same threads; and the two
embeddings' largest cosine distance.

Each model is a checkpoint with random weights (throughput does not depend on them) at its usual clip shape.

    python benchmarks/onnx_speed.py                    # tiny3d 8 x 48 px, resnet18-tap 8 x 112, r2plus1d_18 16 x 112
    python benchmarks/onnx_speed.py --quick            # smaller clips, fewer rounds
    python benchmarks/onnx_speed.py --json benchmarks/results/onnx.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peers import write_json

from tests.training.test_export import make_checkpoint
from training.embed import load_checkpoint
from training.export import cosine_distance, export_onnx
from training.onnx_model import OnnxEmbedder

MODELS = {"tiny3d": (8, 48), "resnet18-tap": (8, 112), "r2plus1d_18": (16, 112)}
QUICK = {"tiny3d": (8, 32), "resnet18-tap": (4, 64), "r2plus1d_18": (8, 64)}


def _rate(fn, x: np.ndarray, rounds: int) -> float:
    fn(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(rounds):
        fn(x)
    return rounds * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    rounds = args.rounds or (2 if args.quick else 5)
    figures: dict = {"batch": args.batch, "threads": threads, "rounds": rounds, "models": {}}
    for arch, (frames, size) in (QUICK if args.quick else MODELS).items():
        with tempfile.TemporaryDirectory() as tmp:
            ck = make_checkpoint(Path(tmp) / "m.pt", arch, frames=frames, size=size)
            export_onnx(ck, Path(tmp) / "m.onnx")
            loaded = load_checkpoint(ck, device="cpu")
            ort = OnnxEmbedder(Path(tmp) / "m.onnx", threads=threads)
            x = np.random.default_rng(0).normal(size=(args.batch, 3, frames, size, size)).astype(np.float32)

            def torch_embed(a: np.ndarray, loaded=loaded) -> np.ndarray:
                with torch.no_grad():
                    return loaded.model.embed(torch.from_numpy(a)).numpy()

            dist = float(cosine_distance(torch_embed(x), ort.run(x)).max())
            r_torch, r_ort = _rate(torch_embed, x, rounds), _rate(ort.run, x, rounds)
        print(
            f"{arch} ({frames} x {size} px, batch {args.batch}, {threads} threads): torch {r_torch:.1f} clips/s, "
            f"onnxruntime {r_ort:.1f} clips/s ({r_ort / r_torch:.2f}x); max cosine distance {dist:.1e}",
            flush=True,
        )
        figures["models"][arch] = {
            "frames": frames, "size": size, "torch_clips_per_s": r_torch, "onnxruntime_clips_per_s": r_ort,
            "ratio_onnxruntime_over_torch": r_ort / r_torch, "max_cosine_distance": dist,
        }  # fmt: skip
    figures["versions"] = {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__}
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

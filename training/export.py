"""``vidret export --format onnx``: a checkpoint's embedding network as an ONNX graph (docs/export.md).

The graph takes exactly what the eval preprocessing produces (``clip_transform``, training/data/dataset.py): float32
``(batch, 3, frames, size, size)``, RGB frames divided by 255, minus ``mean``, over ``std``, the centre crop of
frames decoded with their short side at ``decode_short_side``. Nothing is normalised inside the graph, so nothing is
normalised twice. It outputs the L2-normalised ``(batch, embedding_dim)`` embeddings. The batch size is dynamic;
the clip shape, the preprocessing and the checkpoint's sha256 are in the model's metadata (``vidret.*`` keys).
Before the file is written, onnxruntime runs the graph on a clip and its embedding must equal torch's within
``PARITY_COSINE`` cosine distance; a model the exporter cannot convert is an error that names it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from indexing.errors import UserError
from training.onnx_model import ONNX_FORMAT, ONNX_VERSION, OnnxEmbedder

OPSET = 17
PARITY_COSINE = 1e-4  # onnxruntime vs torch, cosine distance of the embeddings


class _Embed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.model.embed(clip)


def onnx_metadata(loaded: Any, arch: str) -> dict[str, str]:
    spec = loaded.spec
    return {
        "vidret.format": ONNX_FORMAT,
        "vidret.version": str(ONNX_VERSION),
        "vidret.model": arch,
        "vidret.embedding_dim": str(loaded.embedding_dim),
        "vidret.frames": str(spec.frames),
        "vidret.size": str(spec.size),
        "vidret.sampling": spec.sampling,
        "vidret.stride": str(spec.stride),
        "vidret.decode_short_side": str(spec.decode_short_side),
        "vidret.mean": json.dumps(list(loaded.mean)),
        "vidret.std": json.dumps(list(loaded.std)),
        "vidret.input": "float32 (batch, 3, frames, size, size): RGB / 255, minus mean, over std; centre crop of "
        "frames decoded with their short side at decode_short_side",
        "vidret.output": "float32 (batch, embedding_dim), L2-normalised",
        "vidret.checkpoint_sha256": loaded.sha256,
        "vidret.checkpoint": Path(loaded.checkpoint_path).name,
    }


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - (a * b).sum(1)


def _to_onnx(module: nn.Module, example: torch.Tensor, path: Path, arch: str, opset: int) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=["clip"],
                output_names=["embedding"],
                dynamic_axes={"clip": {0: "batch"}, "embedding": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types for unsupported operators
        path.unlink(missing_ok=True)
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"model {arch!r} cannot be exported to ONNX (opset {opset}): {reason}") from None


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET) -> dict[str, Any]:
    """Write ``out`` (atomically); the metadata and the measured parity (max cosine distance) on a clip."""
    import onnx

    from training.checkpoint import load_checkpoint_file
    from training.embed import load_checkpoint

    arch = str(load_checkpoint_file(checkpoint)["arch"]["name"])
    loaded = load_checkpoint(checkpoint, device="cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    spec = loaded.spec
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, spec.frames, spec.size, spec.size, generator=gen)
    module = _Embed(loaded.model).eval()
    _to_onnx(module, example, tmp, arch, opset)
    model = onnx.load(str(tmp))
    meta = onnx_metadata(loaded, arch)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(tmp))
    probe = torch.randn(3, 3, spec.frames, spec.size, spec.size, generator=gen)  # another batch size
    with torch.no_grad():
        want = module(probe).numpy()
    got = OnnxEmbedder(tmp).run(probe.numpy())
    dist = float(cosine_distance(want, got).max())
    if not dist <= PARITY_COSINE:
        tmp.unlink(missing_ok=True)
        raise UserError(f"model {arch!r}: onnxruntime differs from torch by cosine distance {dist:.2e} after export")
    os.replace(tmp, out)
    return {"metadata": meta, "parity_cosine_distance": dist, "opset": opset}

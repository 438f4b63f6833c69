"""An exported model (``vidret export --format onnx``) in onnxruntime, with numpy decoding and preprocessing
(training/data/npclip.py): what ``vidret serve --checkpoint model.onnx`` embeds uploads with. Imports no torch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexing.errors import UserError
from training.data.npclip import NpClipSpec, decode_frames, preprocess

ONNX_FORMAT = "vidret-onnx"
ONNX_VERSION = 1


class OnnxEmbedder:
    """The graph alone: ``run`` takes preprocessed float32 (batch, 3, T, S, S) clips."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("serving an ONNX model needs onnxruntime: pip install -e '.[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: ONNX model not found")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's InvalidGraph, Fail, ...
            raise UserError(f"{path}: not a readable ONNX model ({' '.join(str(exc).split())[:200]})") from None
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get("vidret.format") != ONNX_FORMAT:
            raise UserError(f"{path}: not a vidret ONNX export (vidret export --format onnx)")
        self.path = path

    def run(self, clips: np.ndarray) -> np.ndarray:
        return self.session.run(["embedding"], {"clip": np.ascontiguousarray(clips, dtype=np.float32)})[0]


class OnnxModel:
    """What the service needs of a loaded model (training/embed.py ``LoadedModel``), with onnxruntime."""

    runtime = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.embedder = OnnxEmbedder(path, threads)
        m = self.embedder.meta
        try:
            self.spec = NpClipSpec(int(m["vidret.frames"]), int(m["vidret.size"]), m["vidret.sampling"],
                                   int(m["vidret.stride"]))  # fmt: skip
            self.mean: tuple[float, ...] = tuple(json.loads(m["vidret.mean"]))
            self.std: tuple[float, ...] = tuple(json.loads(m["vidret.std"]))
            self.embedding_dim = int(m["vidret.embedding_dim"])
            self.sha256 = m["vidret.checkpoint_sha256"]  # of the checkpoint: what indexes record
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path}: incomplete vidret metadata ({exc})") from None
        self.onnx_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        self.checkpoint_path = str(path)
        self.class_names: list[str] = []
        self.model = None  # no torch module: the routes that need one (the server-side audit) refuse

    def read_clip(self, path: str | Path, max_frames: int | None = None, label: str | None = None) -> np.ndarray:
        """A video file -> its preprocessed (3, T, S, S) clip."""
        return preprocess(decode_frames(path, self.spec, max_frames, label), self.spec, self.mean, self.std)

    def embed_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        return self.embedder.run(np.stack(clips))

    def embed_video(self, path: str | Path, max_frames: int | None = None) -> np.ndarray:
        return self.embed_clips([self.read_clip(path, max_frames)])[0]

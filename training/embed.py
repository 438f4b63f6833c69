"""A checkpoint + videos -> L2-normalised embeddings, with the eval transform recorded in the checkpoint.

The same code path serves ``vidret embed``, validation during training and uploads to the service, so a video
gives the same vector through all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from indexing.embeddings import Embeddings, save_embeddings
from training.data.dataset import VideoDataset, clip_transform, collate, worker_init
from training.data.manifest import VideoRow, read_manifest
from training.data.video import ClipSpec, read_clip
from training.models import build_model
from training.runtime import load_checkpoint_file, select_device, sha256_file


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ClipSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    embedding_dim: int
    sha256: str
    device: torch.device
    checkpoint_path: str


def load_checkpoint(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Load a vidret checkpoint for inference (eval mode, on ``device``)."""
    ckpt = load_checkpoint_file(path)
    arch, inp = ckpt["arch"], ckpt["input"]
    model = build_model(
        arch["name"],
        num_classes=int(arch["num_classes"]),
        embedding_dim=int(arch["embedding_dim"]),
        scale=float(arch["scale"]),
    )
    model.load_state_dict(ckpt["model"])
    dev = device if isinstance(device, torch.device) else select_device(device)
    model.to(dev).eval()
    spec = ClipSpec(
        frames=int(inp["frames"]),
        size=int(inp["size"]),
        sampling=str(inp["sampling"]),
        stride=int(inp.get("stride", 2)),
    )
    return LoadedModel(
        model=model,
        spec=spec,
        mean=tuple(inp["mean"]),
        std=tuple(inp["std"]),
        class_names=list(ckpt["classes"]),
        embedding_dim=int(arch["embedding_dim"]),
        sha256=sha256_file(path),
        device=dev,
        checkpoint_path=str(path),
    )


def eval_loader(
    rows: Sequence[VideoRow],
    spec: ClipSpec,
    batch_size: int,
    workers: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_to_idx: dict[str, int] | None = None,
    on_bad_video: str = "fail",
    cache: bool = False,
) -> DataLoader:
    ds = VideoDataset(
        rows, spec, train=False, class_to_idx=class_to_idx, on_bad_video=on_bad_video, mean=mean, std=std, cache=cache
    )
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init if workers else None,
        persistent_workers=False,
    )


@torch.no_grad()
def run_inference(
    model: nn.Module, loader: DataLoader, device: torch.device, with_logits: bool = False, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[tuple[str, str]]]:
    """Embeddings (and logits) of the decodable rows in dataset order, their row indices, and the skipped videos."""
    from training.data.dataset import apply_bad_video_policy

    was_training = model.training
    model.eval()
    n = len(loader.dataset)
    embs: np.ndarray | None = None
    logits: np.ndarray | None = None
    done = np.zeros(n, dtype=bool)
    skipped: dict[str, str] = {}
    policy = loader.dataset.on_bad_video
    iterator = loader
    bar = None
    if progress:
        from training.ui import progress_bar

        bar = progress_bar(progress)
        bar.start()
        iterator = bar.track(loader, total=len(loader), description=progress)
    try:
        for batch in iterator:
            apply_bad_video_policy(batch["skipped"], policy, skipped)
            if batch["clip"].shape[0] == 0:
                continue
            emb, logit = model(batch["clip"].to(device, non_blocking=True))
            idx = batch["index"].numpy()
            if embs is None:
                embs = np.zeros((n, emb.shape[1]), dtype=np.float32)
                logits = np.zeros((n, logit.shape[1]), dtype=np.float32) if with_logits else None
            embs[idx] = emb.float().cpu().numpy()
            if logits is not None:
                logits[idx] = logit.float().cpu().numpy()
            done[idx] = True
    finally:
        if bar is not None:
            bar.stop()
        model.train(was_training)
    if embs is None:
        embs = np.zeros((n, 0), dtype=np.float32)
    return embs[done], (logits[done] if logits is not None else None), np.nonzero(done)[0], sorted(skipped.items())


@torch.no_grad()
def embed_clips(loaded: LoadedModel, clips: Sequence[torch.Tensor]) -> np.ndarray:
    """uint8 (T, H, W, C) clips -> (N, D) embeddings, through the checkpoint's eval transform."""
    x = torch.stack([clip_transform(c, loaded.spec, False, None, loaded.mean, loaded.std) for c in clips])
    return loaded.model.embed(x.to(loaded.device)).float().cpu().numpy()


def embed_video(loaded: LoadedModel, path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """One video file (or frame folder) -> its (D,) embedding, exactly as ``vidret embed`` computes it."""
    clip, _ = read_clip(path, loaded.spec, train=False, max_frames=max_frames)
    return embed_clips(loaded, [clip])[0]


def embed_manifest(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    on_bad_video: str = "fail",
) -> Embeddings:
    """Embed every row of a manifest and write the ``.npz`` of docs/formats.md."""
    from indexing.errors import UserError

    if batch_size < 1 or workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size}, {workers}")
    loaded = load_checkpoint(checkpoint, device)
    rows = read_manifest(manifest)
    loader = eval_loader(rows, loaded.spec, batch_size, workers, loaded.mean, loaded.std, on_bad_video=on_bad_video)
    embs, _, kept_idx, skipped = run_inference(loaded.model, loader, loaded.device, progress="embedding")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    kept = [rows[i] for i in kept_idx]
    emb = Embeddings(
        ids=[r.id for r in kept],
        embeddings=embs,
        labels=[r.label or "" for r in kept],
        cameras=[r.camera for r in kept],
        paths=[r.path for r in kept],
        checkpoint_sha256=loaded.sha256,
    )
    save_embeddings(out, emb)
    return emb

"""A checkpoint + videos -> L2-normalised embeddings, with the eval transform recorded in the checkpoint.

The same code path serves ``vidret embed``, validation during training and uploads to the service, so a video
gives the same vector through all three. ``embed_manifest_sharded`` splits a manifest into shards across the
processes of a torchrun job and resumes from the shards an earlier run wrote (docs/formats.md, Embedding shards).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from indexing.embeddings import (
    SHARD_NAME,
    Embeddings,
    ShardProvenance,
    load_embeddings,
    read_shard_provenance,
    save_embeddings,
    save_shard,
    write_shard_list,
)
from training.checkpoint import load_checkpoint_file
from training.data.dataset import VideoDataset, clip_transform, collate, worker_init
from training.data.manifest import VideoRow, read_manifest
from training.data.video import ClipSpec, read_clip
from training.models import build_model
from training.runtime import DistInfo, init_distributed, select_device, sha256_file


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


# ---- distributed and resumable embedding: shards ------------------------------------------------------------------

SHARD_ROWS = 1024  # default --shard-size: manifest rows per shard


def manifest_sha256(rows: Sequence[VideoRow]) -> str:
    """What a manifest asks for, as a sha256: each row's resolved path, id, label and camera, in order."""
    body = json.dumps([[r.path, r.id, r.label, r.camera] for r in rows], separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """The manifest rows of each shard: contiguous ``[start, stop)`` ranges of ``shard_size`` rows, in order."""
    return [(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]


def rank_shards(count: int, rank: int, world: int) -> list[int]:
    """The shards a rank embeds: every ``world``-th one from ``rank`` (strided, so ranks finish together)."""
    return list(range(rank, count, world))


@dataclass
class ShardJob:
    """One embedding job over shards: the rows, what identifies them, and where the shards go."""

    loaded: LoadedModel
    rows: list[VideoRow]
    manifest_sha256: str
    folder: Path
    ranges: list[tuple[int, int]]
    on_bad_video: str

    def path(self, k: int) -> Path:
        return self.folder / SHARD_NAME.format(k)

    def reusable(self, k: int) -> bool:
        """Whether shard ``k`` on disk holds exactly these rows, of this manifest, by this checkpoint (and, under
        ``--on-bad-video fail``, skipped none): then a rerun keeps it."""
        prov = read_shard_provenance(self.path(k)) if self.path(k).is_file() else None
        return (
            prov is not None
            and (prov.start, prov.stop) == self.ranges[k]
            and prov.manifest_sha256 == self.manifest_sha256
            and prov.checkpoint_sha256 == self.loaded.sha256
            and (self.on_bad_video == "skip" or not prov.skipped)
        )

    def flush(self, k: int, kept: list[int], vectors: list, skipped: list[tuple[str, str]]) -> tuple[list, list, list]:
        """Write shard ``k`` from the head of the rows done so far (manifest positions ``kept``, ascending, their
        ``vectors``, and the ``skipped`` videos); return what belongs to later shards."""
        start, stop = self.ranges[k]
        n = bisect.bisect_left(kept, stop)
        paths = {r.path for r in self.rows[start:stop]}
        self.write(k, kept[:n], vectors[:n], [s for s in skipped if s[0] in paths])
        return kept[n:], vectors[n:], [s for s in skipped if s[0] not in paths]

    def write(self, k: int, positions: list[int], vectors: list[np.ndarray], skipped: list[tuple[str, str]]) -> None:
        kept = [self.rows[i] for i in positions]
        emb = Embeddings(
            ids=[r.id for r in kept],
            embeddings=np.stack(vectors) if vectors else np.zeros((0, self.loaded.embedding_dim), np.float32),
            labels=[r.label or "" for r in kept],
            cameras=[r.camera for r in kept],
            paths=[r.path for r in kept],
            checkpoint_sha256=self.loaded.sha256,
        )
        start, stop = self.ranges[k]
        rows = np.array(positions, np.int64)
        save_shard(
            self.path(k), emb, ShardProvenance(start, stop, rows, self.manifest_sha256, self.loaded.sha256, skipped)
        )


@torch.no_grad()
def embed_shards(job: ShardJob, todo: Sequence[int], batch_size: int, workers: int, progress: str | None) -> None:
    """Embed the shards ``todo`` with one DataLoader over their rows, in order; each shard is written (atomically)
    as soon as its last row is done, so an interrupted job keeps what it finished."""
    from training.data.dataset import apply_bad_video_policy

    positions = [i for k in todo for i in range(*job.ranges[k])]
    if not positions:
        return
    loaded = job.loaded
    loader = eval_loader([job.rows[i] for i in positions], loaded.spec, batch_size, workers, loaded.mean, loaded.std)
    ends = np.cumsum([job.ranges[k][1] - job.ranges[k][0] for k in todo])
    done, shard, kept, vectors, skipped = 0, 0, [], [], []
    bar = None
    if progress:
        from training.ui import progress_bar

        bar = progress_bar(progress)
        bar.start()
    try:
        batches = bar.track(loader, total=len(loader), description=progress) if bar else loader
        for batch in batches:
            apply_bad_video_policy(batch["skipped"], job.on_bad_video, {})  # under fail: raises, naming the file
            skipped.extend(batch["skipped"])
            if batch["clip"].shape[0]:
                emb, _ = loaded.model(batch["clip"].to(loaded.device, non_blocking=True))
                kept.extend(positions[i] for i in batch["index"].tolist())
                vectors.extend(emb.float().cpu().numpy())
            done += len(batch["index"]) + len(batch["skipped"])
            while shard < len(todo) and ends[shard] <= done:  # shard ``todo[shard]`` is complete: write it
                kept, vectors, skipped = job.flush(todo[shard], kept, vectors, skipped)
                shard += 1
    finally:
        if bar is not None:
            bar.stop()


@dataclass(frozen=True)
class ShardedResult:
    """What a sharded embedding wrote (rank 0): ``count`` embeddings of dimension ``dim`` in ``out`` (one .npz, or
    a shard folder with its shards.json), of which ``reused`` shards came from an earlier run."""

    out: Path
    count: int
    dim: int
    shards: int
    reused: int


def _gather_errors(info: DistInfo, error: str | None) -> list[str]:
    """Every rank's error (None when it succeeded), on every rank: no rank waits for one that failed."""
    if not info.enabled:
        return [error] if error else []
    errors: list[str | None] = [None] * info.world_size
    dist.all_gather_object(errors, error)
    return [e for e in errors if e]


def embed_manifest_sharded(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    on_bad_video: str = "fail",
    shards: bool = False,
    shard_size: int = SHARD_ROWS,
) -> ShardedResult | None:
    """Embed a manifest in shards of ``shard_size`` rows, split across the processes of a torchrun job (strided:
    rank r embeds shards r, r + N, ...; one process when not under torchrun), each on the GPU of its LOCAL_RANK
    when there is one. Shards already written for this manifest and checkpoint are kept (a rerun resumes). Once
    every rank is done, rank 0 writes ``out``: one .npz in manifest order, or with ``shards`` the folder's
    shards.json. If any rank fails, every rank raises a UserError naming the failed ranks and their errors.
    Returns the result on rank 0, None on the others."""
    from indexing.errors import UserError

    for flag, value, least in (
        ("--batch-size", batch_size, 1),
        ("--shard-size", shard_size, 1),
        ("--workers", workers, 0),
    ):
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    if on_bad_video not in ("fail", "skip"):
        raise UserError(f"--on-bad-video must be fail or skip, got {on_bad_video!r}")
    info = init_distributed(device)
    try:
        loaded = load_checkpoint(checkpoint, select_device(device, info.local_rank))
        rows = read_manifest(manifest)
        folder = Path(out) if shards else Path(f"{out}.shards")
        folder.mkdir(parents=True, exist_ok=True)
        job = ShardJob(loaded, rows, manifest_sha256(rows), folder, shard_ranges(len(rows), shard_size), on_bad_video)
        mine = rank_shards(len(job.ranges), info.rank, info.world_size)
        todo = [k for k in mine if not job.reusable(k)]
        error, bug = None, None
        try:
            embed_shards(job, todo, batch_size, workers, "embedding" if info.is_main else None)
        except UserError as exc:
            error = f"rank {info.rank}: {exc}"
        except Exception as exc:  # a bug: its traceback is kept, after the other ranks have been told
            error, bug = f"rank {info.rank}: {type(exc).__name__}: {exc}", exc
        failed = _gather_errors(info, error)
        if bug is not None:
            raise bug
        if failed:
            raise UserError(
                f"embedding failed on {len(failed)} of {info.world_size} processes ({'; '.join(failed)}); the shards "
                f"already written are kept in {folder} and the same command resumes from them"
            )
        if info.enabled:
            print(f"rank {info.rank}: shards embedded {len(todo)}, kept from an earlier run {len(mine) - len(todo)}")
        result = _finish(job, Path(out), shards, Path(manifest), len(mine) - len(todo)) if info.is_main else None
        if info.enabled:
            dist.barrier()  # the job ends when rank 0 has written the result
        return result
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _finish(job: ShardJob, out: Path, shards: bool, manifest: Path, reused: int) -> ShardedResult:
    """Rank 0, once every shard is written: check them, then write the shard list or merge them into ``out``."""
    from indexing.errors import UserError

    provs = []
    for k in range(len(job.ranges)):
        if not job.reusable(k):
            raise UserError(
                f"{job.path(k)}: missing or changed while this job ran (another job writes to {job.folder}?)"
            )
        provs.append(read_shard_provenance(job.path(k)))
    for path, reason in (s for p in provs for s in p.skipped):
        print(f"skipped {path}: {reason}")
    count, names = sum(len(p.rows) for p in provs), [job.path(k).name for k in range(len(job.ranges))]
    dim = job.loaded.embedding_dim
    if shards:
        write_shard_list(
            job.folder,
            names,
            {
                "manifest": manifest.name,
                "manifest_sha256": job.manifest_sha256,
                "manifest_rows": len(job.rows),
                "checkpoint_sha256": job.loaded.sha256,
                "shard_size": job.ranges[0][1] - job.ranges[0][0] if job.ranges else 0,
                "count": count,
                "dim": dim,
            },
        )
        for stale in set(p.name for p in job.folder.glob("shard-*.npz")) - set(names):
            (job.folder / stale).unlink()  # shards of an earlier, longer manifest
        return ShardedResult(job.folder, count, dim, len(names), reused)
    parts = [load_embeddings(job.path(k), normalize_check=False) for k in range(len(job.ranges))]
    merged = Embeddings(
        ids=np.concatenate([p.ids for p in parts]),
        embeddings=np.concatenate([p.embeddings for p in parts]) if parts else np.zeros((0, dim), np.float32),
        labels=np.concatenate([p.labels for p in parts]),
        cameras=np.concatenate([p.cameras for p in parts]),
        paths=np.concatenate([p.paths for p in parts]),
        checkpoint_sha256=job.loaded.sha256,
    )
    save_embeddings(out, merged)
    shutil.rmtree(job.folder)  # the shards were the work in progress of this .npz
    return ShardedResult(out, count, dim, len(names), reused)

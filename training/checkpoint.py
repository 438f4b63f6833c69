"""The checkpoint format of docs/formats.md, in one place: what a checkpoint holds, its version, and how it is read.

Written by the trainer (``checkpoint_state`` + ``atomic_torch_save``); read by ``--resume``
(``training/trainer.py``), inference (``training/embed.py``: ``vidret embed``, validation, the service) and
``--weights`` (``training/models.py``), all through ``load_checkpoint_file`` / ``checked_checkpoint``.

Versions:

* 1: one random state, ``rng = {torch, cuda}`` (rank 0's under DDP, restored on every rank);
* 2: every process's random state, ``rng_ranks = [{torch, cuda}, ...]`` by rank, each restored on its own rank.

A version-1 checkpoint is read as version 2 with one process's state (``read_from_version(ck) == 1``), and the
trainer says so; a version this code does not know is refused with a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from indexing.errors import UserError
from training.distributed import cpu_process_group
from training.runtime import DistInfo

FORMAT = "vidret-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_UPGRADED = "_read_from_version"  # set in memory on a checkpoint read from an older version; never written
_log = logging.getLogger(__name__)


def checkpoint_state(
    *,
    arch: dict[str, Any],
    model: dict[str, torch.Tensor],
    classes: list[str],
    input_spec: dict[str, Any],
    config: dict[str, Any],
    epoch: int,
    best_map: float,
    history: list[dict[str, float]],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    scaler: dict[str, Any],
    rng_ranks: list[dict[str, Any]],
) -> dict[str, Any]:
    """A version-2 checkpoint: plain tensors and primitives (``torch.load(weights_only=True)``)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model": model,
        "classes": classes,
        "input": input_spec,
        "embedding_dim": arch["embedding_dim"],
        "config": config,
        "epoch": epoch,
        "best_map": best_map,
        "history": history,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "rng_ranks": rng_ranks,
    }


def is_vidret_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_torch_file(path: str | Path, what: str, kind: str = "PyTorch weights file") -> Any:
    """torch.load(weights_only=True) with clear errors; ``what`` names the file in them (e.g. ``--weights X``),
    ``kind`` says what it should have been."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what}: {'checkpoint' if 'checkpoint' in kind else 'file'} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of many types
        raise UserError(f"{what}: not a readable {kind} ({str(exc).splitlines()[0][:160]})") from None


def checked_checkpoint(ck: dict[str, Any], what: str) -> dict[str, Any]:
    """A vidret checkpoint of a readable version, as version 2 (a version-1 one upgraded in memory)."""
    version = ck.get("version")
    if version not in READABLE_VERSIONS:
        raise UserError(
            f"{what}: vidret checkpoint format version {version!r}, which this vidret does not read (it reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}); use the vidret version that wrote it"
        )
    if version == 1:
        _log.info("%s: checkpoint format version 1, read compatibly (one random state for every process)", what)
        old = ck.get("rng")
        ck = {k: v for k, v in ck.items() if k != "rng"}
        ck.update(version=VERSION, rng_ranks=[old] if isinstance(old, dict) else [], **{_UPGRADED: 1})
    return ck


def read_from_version(ck: dict[str, Any]) -> int:
    """The version the checkpoint was written in (older ones are upgraded in memory when read)."""
    return int(ck.get(_UPGRADED, ck["version"]))


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A vidret checkpoint read from ``path``, or a UserError for a missing, foreign or unknown-version file."""
    ck = load_torch_file(path, str(path), kind="vidret checkpoint")
    if not is_vidret_checkpoint(ck):
        raise UserError(f"{path}: not a vidret checkpoint")
    return checked_checkpoint(ck, str(path))


# ---- random generators, per process ------------------------------------------------------------------------------
def _own_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every process's CPU and CUDA generator states, by rank (a collective under DDP: every rank calls it)."""
    mine = _own_rng_state()
    if not info.enabled:
        return [mine]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, mine, group=cpu_process_group())  # gloo: no GPU traffic
    return states


def restore_rng_state(ck: dict[str, Any], info: DistInfo) -> str | None:
    """Restore this rank's generators from the checkpoint; a note for the log when that is not exact."""
    ranks = ck["rng_ranks"]
    if not ranks:
        return "the checkpoint holds no random state: the random streams start afresh"
    state = ranks[info.rank % len(ranks)]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # the GPUs this machine has
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if read_from_version(ck) == 1:
        every = " on every process" if info.enabled else ""
        return f"checkpoint format version 1 (read compatibly): its one random state is restored{every}"
    if len(ranks) != info.world_size:
        return (
            f"the checkpoint holds the random state of {len(ranks)} process(es), this run has {info.world_size}: "
            f"rank r continues rank r mod {len(ranks)}'s streams (not an exact continuation)"
        )
    return None

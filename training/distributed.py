"""Decisions every DDP rank must take together: whether a training step runs, and which videos were skipped.

Under DDP a training step's backward pass is a collective: a rank that skips a step (its batch shrank below the two
clips BatchNorm needs, because ``--on-bad-video skip`` dropped unreadable videos from it) would leave the others
waiting in their all-reduce for ever. So with ``--on-bad-video skip`` the ranks agree on every step with one
all-reduce (the minimum of their batch sizes) over a CPU (gloo) group, which costs no device sync: a step runs on
every rank or on none. Without skipping, every rank's batches have the same size (``DistributedSampler`` with
``drop_last``), so no collective is needed. At the end of an epoch the ranks share the videos they skipped, so the
main process reports all of them (``skipped.txt``, the ``skipped_videos`` column).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from training.runtime import DistInfo

MIN_CLIPS = 2  # BatchNorm needs two samples
_cpu_group: Any = None


def cpu_process_group() -> Any:
    """The default group when it is gloo, else one gloo group over every rank (created once, collectively)."""
    global _cpu_group
    if dist.get_backend() == "gloo":
        return None
    if _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo")
    return _cpu_group


def every_rank_can_step(num_clips: int, policy: str, info: DistInfo) -> bool:
    """True when this step runs: this batch (and, under DDP with skipping, every rank's) has ``MIN_CLIPS`` clips."""
    if not info.enabled or policy != "skip":
        return num_clips >= MIN_CLIPS
    fewest = torch.tensor([num_clips], dtype=torch.int64)
    dist.all_reduce(fewest, op=dist.ReduceOp.MIN, group=cpu_process_group())
    return int(fewest[0]) >= MIN_CLIPS


def share_skipped(skipped: dict[str, str], info: DistInfo) -> None:
    """Merge every rank's skipped videos into ``skipped`` (in place; a collective under DDP)."""
    if not info.enabled:
        return
    every: list[Any] = [None] * info.world_size
    dist.all_gather_object(every, dict(skipped), group=cpu_process_group())
    for other in every:
        skipped.update(other)

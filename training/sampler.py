"""Training-data order: shuffled clips (``--sampler random``, the default) or identity-balanced batches
(``--sampler pk``: P identities x K clips per batch, the usual re-identification batch).

Both are functions of (seed, epoch) only, so a resumed run (which restarts at an epoch boundary) sees exactly the
batches of an uninterrupted one, with DataLoader workers too (the sampler runs in the main process) and under
torchrun (every process draws the same global batches and takes its own share of each).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from indexing.errors import UserError

SAMPLERS = ("random", "pk")


class PKSampler(Sampler[int]):
    """Batches of ``p`` identities x ``k`` clips each, as a flat index sequence of whole batches.

    An epoch has ``len(targets) // (p * k)`` batches (at least one), so it shows about as many clips as a shuffled
    epoch. Identities are taken in a shuffled order, refilled when used up, never twice in a batch; an identity's
    clips are taken from a shuffled pool, refilled when used up, so each clip is seen about equally often; an
    identity with fewer than ``k`` clips repeats some. Under DDP (``world_size`` > 1) each process yields its share
    ``batch[rank::world_size]`` of every global batch.
    """

    def __init__(self, targets: np.ndarray, p: int, k: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        targets = np.asarray(targets)
        self.classes = np.unique(targets[targets >= 0])
        if p < 2 or k < 1:
            raise UserError(f"--pk-identities must be >= 2 and --pk-clips >= 1, got {p} and {k}")
        if p > len(self.classes):
            raise UserError(f"--pk-identities {p}: the training set has only {len(self.classes)} identities")
        if (p * k) % world_size:
            raise UserError(f"--pk-identities x --pk-clips ({p * k}) must be a multiple of the {world_size} processes")
        self.by_class = {int(c): np.flatnonzero(targets == c) for c in self.classes}
        self.p, self.k, self.seed, self.rank, self.world_size = p, k, seed, rank, world_size
        self.batches = max(1, len(targets) // (p * k))
        self.epoch = 0

    @property
    def per_rank_batch(self) -> int:
        return self.p * self.k // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """Every batch of this epoch, all processes' shares together."""
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        queue: list[int] = []
        pools: dict[int, list[int]] = {c: [] for c in self.by_class}
        out = []
        for _ in range(self.batches):
            chosen: list[int] = []
            while len(chosen) < self.p:
                if not queue:
                    queue = [int(c) for c in rng.permutation(self.classes) if int(c) not in chosen]
                chosen.append(queue.pop())
            batch = []
            for c in chosen:
                clips = self.by_class[c]
                for _ in range(self.k):
                    if not pools[c]:
                        pools[c] = [int(i) for i in rng.permutation(clips)]
                    batch.append(pools[c].pop())
            out.append(batch)
        return out

    def __iter__(self) -> Iterator[int]:
        for batch in self.global_batches():
            yield from batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return self.batches * self.per_rank_batch


def build_sampler(cfg, dataset, rank: int, world_size: int) -> tuple[Sampler, int, bool]:
    """(the sampler of one process, as ``(epoch, index)`` pairs; its per-process batch size; drop_last) for a
    ``TrainConfig``'s ``--sampler``."""
    from training.data.dataset import EpochSampler

    if cfg.sampler not in SAMPLERS:
        raise UserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
    if cfg.sampler == "pk":
        pk = PKSampler(dataset.targets, cfg.pk_identities, cfg.pk_clips, cfg.seed, rank, world_size)
        return EpochSampler(pk), pk.per_rank_batch, False
    per_rank_batch = max(2, cfg.batch_size // world_size)
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=world_size > 1
    )
    return EpochSampler(sampler), per_rank_batch, len(dataset) // world_size > per_rank_batch

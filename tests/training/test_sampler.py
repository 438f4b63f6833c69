"""The identity-balanced sampler (--sampler pk): P identities x K clips per batch, a function of (seed, epoch)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from indexing.errors import UserError
from training.sampler import PKSampler

# 10 identities with 2 to 9 clips each (two have fewer than K = 4)
TARGETS = np.repeat(np.arange(10), [2, 3, 9, 4, 5, 6, 4, 8, 7, 4])


def test_every_batch_has_p_distinct_identities_with_k_clips_each() -> None:
    s = PKSampler(TARGETS, p=4, k=4, seed=1)
    batches = s.global_batches()
    assert len(batches) == len(TARGETS) // 16 and len(list(s)) == len(s) == 16 * len(batches)
    for batch in batches:
        per_id = Counter(int(TARGETS[i]) for i in batch)
        assert len(per_id) == 4 and set(per_id.values()) == {4}
    # an identity with at least K clips shows K different clips in a batch; each clip is drawn before any repeats
    for batch in batches:
        for c in Counter(int(TARGETS[i]) for i in batch):
            if (TARGETS == c).sum() >= 4:
                assert len({i for i in batch if TARGETS[i] == c}) == 4


def test_the_order_depends_on_seed_and_epoch_only() -> None:
    a, b = PKSampler(TARGETS, 4, 2, seed=3), PKSampler(TARGETS, 4, 2, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PKSampler(TARGETS, 4, 2, seed=4)) != list(PKSampler(TARGETS, 4, 2, seed=3))


def test_ranks_split_every_global_batch() -> None:
    whole = PKSampler(TARGETS, 4, 2, seed=0).global_batches()
    ranks = [list(PKSampler(TARGETS, 4, 2, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert all(len(r) == 4 * len(whole) for r in ranks)
    for i, batch in enumerate(whole):
        shares = [r[4 * i : 4 * (i + 1)] for r in ranks]
        assert sorted(shares[0] + shares[1]) == sorted(batch)


def test_bad_sizes_are_user_errors() -> None:
    with pytest.raises(UserError, match="only 10 identities"):
        PKSampler(TARGETS, p=11, k=2)
    with pytest.raises(UserError, match="--pk-identities must be >= 2"):
        PKSampler(TARGETS, p=1, k=2)
    with pytest.raises(UserError, match="multiple of the 4 processes"):
        PKSampler(TARGETS, p=3, k=1, world_size=4)

"""Label noise: exact flip counts, no self-flips, pair-flip targets, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.noise import inject_noise


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.43, 0.6, 1.0])
def test_flips_exactly_round_rate_n(kind: str, rate: float) -> None:
    labels = np.arange(1000) % 10
    res = inject_noise(labels, 10, rate, kind, seed=3)
    changed = res.labels != labels
    assert changed.sum() == round(rate * 1000)
    assert (res.flipped == changed).all()
    assert res.rate == pytest.approx(round(rate * 1000) / 1000)
    assert np.allclose(res.transition.sum(1), 1.0)


def test_symmetric_spreads_over_other_classes_only() -> None:
    labels = np.zeros(20000, dtype=int)
    res = inject_noise(labels, 5, 0.5, "symmetric", seed=0)
    moved = res.labels[res.flipped]
    assert (moved != 0).all()
    counts = np.bincount(moved, minlength=5)[1:]
    assert counts.min() / counts.max() > 0.9  # uniform over the 4 other classes
    assert res.transition[0, 0] == pytest.approx(0.5)


def test_pairflip_moves_to_next_class() -> None:
    labels = np.arange(500) % 5
    res = inject_noise(labels, 5, 0.4, "pairflip", seed=1)
    assert ((labels[res.flipped] + 1) % 5 == res.labels[res.flipped]).all()


def test_same_seed_same_labels_other_seed_differs() -> None:
    labels = np.arange(300) % 7
    a = inject_noise(labels, 7, 0.3, seed=11).labels
    b = inject_noise(labels, 7, 0.3, seed=11).labels
    c = inject_noise(labels, 7, 0.3, seed=12).labels
    assert (a == b).all() and (a != c).any()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="noise type"):
        inject_noise(np.zeros(3, int), 3, 0.1, "uniform")
    with pytest.raises(ValueError, match="rate"):
        inject_noise(np.zeros(3, int), 3, 1.5)
    with pytest.raises(ValueError, match="label 3"):
        inject_noise(np.array([0, 3]), 3, 0.1)


def _clusters() -> tuple[np.ndarray, np.ndarray]:
    """Four classes of 50 samples around 2-D directions: 0 and 1 are near each other, 2 and 3 are near each other."""
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0], [0.95, 0.3], [-1.0, 0.1], [-0.9, -0.4]])
    labels = np.repeat(np.arange(4), 50)
    return labels, centres[labels] + rng.normal(0, 0.02, (200, 2))


def test_identity_switch_moves_to_the_nearest_other_centroid() -> None:
    labels, emb = _clusters()
    res = inject_noise(labels, 4, 0.4, "identity", seed=5, embeddings=emb)
    assert res.flipped.sum() == 80 and (res.labels[res.flipped] != labels[res.flipped]).all()
    expected = {0: 1, 1: 0, 2: 3, 3: 2}  # a look-alike identity, never a far one
    assert all(expected[c] == n for c, n in zip(labels[res.flipped], res.labels[res.flipped], strict=True))
    again = inject_noise(labels, 4, 0.4, "identity", seed=5, embeddings=emb)
    assert (again.labels == res.labels).all()


def test_identity_switch_needs_matching_embeddings() -> None:
    labels, emb = _clusters()
    with pytest.raises(ValueError, match="needs embeddings"):
        inject_noise(labels, 4, 0.4, "identity")
    with pytest.raises(ValueError, match="N = 200"):
        inject_noise(labels, 4, 0.4, "identity", embeddings=emb[:10])
    with pytest.raises(ValueError, match="finite"):
        inject_noise(labels, 4, 0.4, "identity", embeddings=emb * np.nan)

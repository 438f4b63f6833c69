"""Label-noise injection (symmetric, pair-flip and identity switch) and its statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_TYPES = ("symmetric", "pairflip")  # need only the labels (``vidret data synth --noise-type``)
ALL_NOISE_TYPES = (*NOISE_TYPES, "identity")  # identity switch also needs embeddings


@dataclass(frozen=True)
class NoiseResult:
    labels: np.ndarray  # the noisy labels, int64, same length as the input
    rate: float  # realised share of changed labels
    transition: np.ndarray  # (C, C) empirical P(noisy = j | clean = i); rows of absent classes are zero
    flipped: np.ndarray  # bool mask of the changed samples


def inject_noise(
    labels: np.ndarray,
    num_classes: int,
    rate: float,
    kind: str = "symmetric",
    seed: int = 0,
    embeddings: np.ndarray | None = None,
) -> NoiseResult:
    """Flip exactly ``round(rate * N)`` labels chosen by a seeded generator.

    symmetric: each flipped label moves to a uniformly chosen *other* class.
    pairflip:  class c moves to (c + 1) mod C.
    identity:  class c moves to the class whose centroid is nearest to c's (cosine similarity of the given
               ``embeddings``, one row per label, e.g. a pretrained model's): a tracking error that merges two
               look-alike identities.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if kind not in ALL_NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; choose one of: {', '.join(ALL_NOISE_TYPES)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if num_classes < 2 and rate > 0:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"label {bad} is outside [0, {num_classes})")
    n = labels.size
    rng = np.random.default_rng(seed)
    n_flip = int(round(rate * n))
    idx = rng.choice(n, size=n_flip, replace=False)
    noisy = labels.copy()
    if kind == "symmetric":
        shift = rng.integers(1, num_classes, size=n_flip)  # 1..C-1: never the same class
        noisy[idx] = (labels[idx] + shift) % num_classes
    elif kind == "pairflip":
        noisy[idx] = (labels[idx] + 1) % num_classes
    else:
        noisy[idx] = nearest_other_class(labels, num_classes, embeddings)[labels[idx]]
    flipped = noisy != labels
    transition = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(transition, (labels, noisy), 1.0)
    counts = transition.sum(axis=1, keepdims=True)
    transition = np.divide(transition, counts, out=np.zeros_like(transition), where=counts > 0)
    return NoiseResult(labels=noisy, rate=float(flipped.mean()) if n else 0.0, transition=transition, flipped=flipped)


def nearest_other_class(labels: np.ndarray, num_classes: int, embeddings: np.ndarray | None) -> np.ndarray:
    """For each class, the other class whose centroid (mean of its L2-normalised embeddings) is most
    cosine-similar; ties go to the lower index. Classes without samples are never chosen (and map to themselves)."""
    if embeddings is None:
        raise ValueError("identity-switch noise needs embeddings (one row per label)")
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != labels.size:
        raise ValueError(f"embeddings must be (N, D) with N = {labels.size} labels, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings must be finite")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((num_classes, emb.shape[1]))
    np.add.at(sums, labels, emb)
    present = np.bincount(labels, minlength=num_classes) > 0
    if present.sum() < 2:
        raise ValueError("identity-switch noise needs samples of at least 2 classes")
    cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    sim = cent @ cent.T
    sim[:, ~present] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    target = sim.argmax(axis=1)
    target[~present] = np.flatnonzero(~present)
    return target

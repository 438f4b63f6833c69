"""Label-noise injection (symmetric and pair-flip) and its statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_TYPES = ("symmetric", "pairflip")


@dataclass(frozen=True)
class NoiseResult:
    labels: np.ndarray  # the noisy labels, int64, same length as the input
    rate: float  # realised share of changed labels
    transition: np.ndarray  # (C, C) empirical P(noisy = j | clean = i); rows of absent classes are zero
    flipped: np.ndarray  # bool mask of the changed samples


def inject_noise(
    labels: np.ndarray, num_classes: int, rate: float, kind: str = "symmetric", seed: int = 0
) -> NoiseResult:
    """Flip exactly ``round(rate * N)`` labels chosen by a seeded generator.

    symmetric: each flipped label moves to a uniformly chosen *other* class.
    pairflip:  class c moves to (c + 1) mod C.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; choose one of: {', '.join(NOISE_TYPES)}")
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
    else:
        noisy[idx] = (labels[idx] + 1) % num_classes
    flipped = noisy != labels
    transition = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(transition, (labels, noisy), 1.0)
    counts = transition.sum(axis=1, keepdims=True)
    transition = np.divide(transition, counts, out=np.zeros_like(transition), where=counts > 0)
    return NoiseResult(labels=noisy, rate=float(flipped.mean()) if n else 0.0, transition=transition, flipped=flipped)

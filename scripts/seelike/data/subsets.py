"""Training on a fraction of the data: stratified, deterministic and nested subsets.

Within each class, examples are ordered by a hash of (seed, index), and a fraction takes the
first round(fraction * class size) of that order. The order does not depend on the fraction, so
a 3% subset lies inside the 10% subset, which lies inside the 30% subset (Raghu et al. 2021, F12).
"""
from __future__ import annotations

import hashlib

import numpy as np


def _order_key(seed: int, index: int) -> bytes:
    return hashlib.blake2b(f"subset:{seed}:{index}".encode(), digest_size=16).digest()


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted positions of a stratified `fraction` of `labels` (at least one example per class)."""
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise ValueError(f"training fraction must be in (0, 1], got {fraction}")
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ordered = sorted(members.tolist(), key=lambda i: _order_key(seed, i))
        k = max(1, int(round(fraction * len(members))))
        keep += ordered[:k]
    return np.sort(np.asarray(keep, dtype=np.int64))


def k_per_class(labels: np.ndarray, k: int, seed: int = 0, among: np.ndarray | None = None) -> np.ndarray:
    """Sorted positions of k examples of every class of ``labels`` (the first k of each class's hash
    order), drawn from the positions ``among`` (default: all); a class with fewer than k there is an
    error, also one with none at all (it would silently go untrained)."""
    labels = np.asarray(labels)
    pool = np.arange(len(labels)) if among is None else np.asarray(among)
    keep = []
    for c in np.unique(labels):
        members = pool[labels[pool] == c]
        if len(members) < k:
            raise ValueError(f"{k}-shot: class {c} has only {len(members)} examples")
        keep += sorted(members.tolist(), key=lambda i: _order_key(seed, i))[:k]
    return np.sort(np.asarray(keep, dtype=np.int64))

"""Linear probes: closed-form regularised least squares from features to one-hot targets.

For a layer's features X (n x d) and one-hot targets Y, the probe is W = argmin ||Z W - Yc||^2 +
lam ||W||^2 with Z = Xc / rms(Xc), the centred features scaled by their overall root mean square so
that one grid of lam suits layers of any scale (lam, as the tables report it, is in these scaled
units; the bias is not regularised), solved for every lam at once from one SVD of Z:
W(lam) = V diag(s / (s^2 + lam)) U^T Yc. lam is chosen on a held-out part of the probe's
training examples, then the probe is refitted on all of them and scored on separate test examples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_LAMBDAS = tuple(10.0 ** np.arange(-6, 5))


@dataclass
class ProbeResult:
    accuracy: float
    lam: float
    n_train: int
    n_test: int


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


def ridge_solutions(x: np.ndarray, y: np.ndarray, lambdas) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W (d, c), b (c,)) for each lambda], float64. Features are scaled by their overall RMS so
    that one grid of lambdas suits layers of any scale; W is returned for the unscaled features."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    scale = np.sqrt(np.mean(xc ** 2)) or 1.0
    u, s, vt = np.linalg.svd(xc / scale, full_matrices=False)
    uty = u.T @ yc
    out = []
    for lam in lambdas:
        w = (vt.T * (s / (s ** 2 + lam))) @ uty / scale
        out.append((w, my - mx @ w))
    return out


def accuracy(x, y, w, b) -> float:
    return float(np.mean(np.argmax(np.asarray(x, np.float64) @ w + b, axis=1) == y))


def fit_probe(x_train, y_train, x_test, y_test, n_classes: int, lambdas=DEFAULT_LAMBDAS,
              holdout_fraction: float = 0.2, seed: int = 0) -> ProbeResult:
    """Choose lam on a held-out part of the training examples, refit on all of them, score on test."""
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_train))
    n_hold = max(1, int(round(holdout_fraction * len(y_train))))
    hold, fit = perm[:n_hold], perm[n_hold:]
    sols = ridge_solutions(x_train[fit], one_hot(y_train[fit], n_classes), lambdas)
    scores = [accuracy(x_train[hold], y_train[hold], w, b) for w, b in sols]
    best = float(lambdas[int(np.argmax(scores))])  # ties: the smallest lambda reaching the best score
    w, b = ridge_solutions(x_train, one_hot(y_train, n_classes), [best])[0]
    return ProbeResult(accuracy=accuracy(x_test, y_test, w, b), lam=best, n_train=len(y_train), n_test=len(y_test))

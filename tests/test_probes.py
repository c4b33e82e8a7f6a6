"""Probe closed form against an independent float64 least-squares reference; subsets nested and stratified."""
import numpy as np
import pytest

from seelike.data.subsets import k_per_class, stratified_subset
from seelike.probes import fit_probe, one_hot, ridge_solutions


def reference_ridge(x, y, lam):
    """Augmented least squares: [Xc; sqrt(lam') I] W = [Yc; 0], solved by np.linalg.lstsq."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    scale = np.sqrt(np.mean(xc ** 2))
    d = x.shape[1]
    a = np.vstack([xc / scale, np.sqrt(lam) * np.eye(d)])
    t = np.vstack([yc, np.zeros((d, y.shape[1]))])
    w = np.linalg.lstsq(a, t, rcond=None)[0] / scale
    return w, my - mx @ w


@pytest.mark.parametrize("n,d,scale", [(60, 5, 1.0), (40, 100, 1e3), (50, 20, 1e-4)])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 100.0])
def test_ridge_matches_lstsq_reference(n, d, scale, lam):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * scale + 3.0
    y = one_hot(rng.integers(0, 4, n), 4)
    (w, b), = ridge_solutions(x, y, [lam])
    w_ref, b_ref = reference_ridge(x, y, lam)
    np.testing.assert_allclose(w * scale, w_ref * scale, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b, b_ref, rtol=1e-7, atol=1e-9)


def test_rank_deficient_features():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 3))
    x = np.hstack([base, base, base @ rng.normal(size=(3, 4))])  # rank 3 in 10 dims
    y = one_hot(rng.integers(0, 3, 30), 3)
    (w, b), = ridge_solutions(x, y, [0.5])
    w_ref, b_ref = reference_ridge(x, y, 0.5)
    np.testing.assert_allclose(x @ w + b, x @ w_ref + b_ref, atol=1e-9)


def test_probe_separates_separable_classes_and_not_noise():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 400)
    means = rng.normal(size=(5, 16)) * 4
    x = means[y] + rng.normal(size=(400, 16))
    good = fit_probe(x[:300], y[:300], x[300:], y[300:], 5)
    assert good.accuracy > 0.95
    noise = fit_probe(rng.normal(size=(300, 16)), y[:300], rng.normal(size=(100, 16)), y[300:], 5)
    assert noise.accuracy < 0.45


def test_subsets_are_deterministic_nested_and_stratified():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 5000)
    s3, s10, s30 = (stratified_subset(labels, f, seed=0) for f in (0.03, 0.10, 0.30))
    assert set(s3) <= set(s10) <= set(s30)
    np.testing.assert_array_equal(s10, stratified_subset(labels, 0.10, seed=0))
    assert not np.array_equal(s10, stratified_subset(labels, 0.10, seed=1))
    for sub, f in ((s3, 0.03), (s10, 0.10), (s30, 0.30)):
        for c in range(10):
            assert abs((labels[sub] == c).sum() - f * (labels == c).sum()) <= 1
    shots = k_per_class(labels, 10)
    assert np.bincount(labels[shots]).tolist() == [10] * 10
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(labels, 0)

"""seelike.cka against independent float64 references written here from the definitions.

References (none uses seelike's U-centring or blocked all-pairs code):
* unbiased HSIC: the trace formula of Song et al. 2012 (eq. 5) with np.trace, and for tiny n the
  U-statistic itself, summed over every ordered 4-tuple of distinct examples;
* biased HSIC: tr(K H L H) / (n-1)^2 with an explicit centring matrix H;
* full-batch biased CKA: the feature-space formula of Kornblith et al. 2019,
  ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F);
* minibatch CKA and its jackknife: loops over minibatches from the definitions.
"""
from __future__ import annotations

import itertools
import re
import math
import warnings

import numpy as np
import pytest
import torch

from seelike.cka import (
    CKAResult,
    NegativeHSICWarning,
    cka_all_pairs_from_features,
    cka_from_minibatch_hsic,
    double_center,
    gram,
    hsic_all_pairs,
    u_center,
)


# ----------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------

def ref_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, eq. (5): [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))."""
    n = K.shape[0]
    Kt, Lt = K.astype(np.float64).copy(), L.astype(np.float64).copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    t1 = np.trace(Kt @ Lt)
    t2 = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    return (t1 + t2 - t3) / (n * (n - 3))


def ref_hsic_ustat(K: np.ndarray, L: np.ndarray) -> float:
    """The U-statistic: mean over ordered distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = K.shape[0]
    tot, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        tot += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2.0 * K[i, j] * L[i, q]
        count += 1
    return tot / count


def ref_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_all_pairs(grams, ref):
    m = len(grams)
    return np.array([[ref(grams[i], grams[j]) for j in range(m)] for i in range(m)])


def ref_gram(x) -> np.ndarray:
    a = np.asarray(torch.as_tensor(x).double().numpy()).reshape(len(x), -1)
    return a @ a.T


#: Relative error (of the largest |K|) allowed to float32 Grams of offset-dominated features: float32
#: products with float32 sums, which oneDNN blocks more coarsely than MKL (up to 6.6e-6 on bf16 values
#: of 300 +- 20 over 2048 features, against 3e-7 for MKL); CKA itself is held to 1e-6 of float64 below.
RTOL_OFFSET = 1e-5


def ref_cka_linear(X: np.ndarray, Y: np.ndarray) -> float:
    """Kornblith et al. 2019 full-batch linear CKA in feature space (biased HSIC)."""
    X = X.reshape(len(X), -1).astype(np.float64)
    Y = Y.reshape(len(Y), -1).astype(np.float64)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def ref_minibatch_cka(features, b, ref_hsic):
    """Per-minibatch HSIC from the reference formula; CKA of the means; jackknife; per-batch std."""
    N = features[0].shape[0]
    m = N // b
    Ls = len(features)
    per = np.zeros((m, Ls, Ls))
    for t in range(m):
        gs = [ref_gram(f[t * b:(t + 1) * b]) for f in features]
        per[t] = ref_all_pairs(gs, ref_hsic)

    def cka_of(batches):
        h = per[list(batches)].mean(0)
        out = np.zeros((Ls, Ls))
        for i in range(Ls):
            for j in range(Ls):
                out[i, j] = h[i, j] / np.sqrt(h[i, i] * h[j, j])
        return out

    cka = cka_of(range(m))
    loo = np.array([cka_of([u for u in range(m) if u != t]) for t in range(m)])
    se = np.sqrt((m - 1) / m * ((loo - loo.mean(0)) ** 2).sum(0))
    per_cka = np.array([cka_of([t]) for t in range(m)])
    std = per_cka.std(0, ddof=1)
    return cka, se, std


def assert_hsic_close(got, want, grams, norm):
    """|got - want| <= 1e-9 |want| + 1e-10 ||K_i|| ||K_j|| / norm, i.e. rounding level in float64."""
    scale = np.array([np.linalg.norm(g) for g in grams])
    tol = 1e-9 * np.abs(want) + 1e-10 * np.outer(scale, scale) / norm
    err = np.abs(got - want)
    assert (err <= tol).all(), f"max err {err.max():.3e}, worst ratio to tolerance {(err / tol).max():.3g}"


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

def _layers(kind: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Feature matrices of several layers for one minibatch."""
    base = rng.standard_normal((n, 20))
    if kind == "random":
        return [base, base @ rng.standard_normal((20, 30)) + rng.standard_normal((n, 30)),
                rng.standard_normal((n, 7)), rng.standard_normal((n, 50)) * 3 + 1]
    if kind == "rank_deficient":
        r1 = rng.standard_normal((n, 1)) @ rng.standard_normal((1, 40))
        r2 = rng.standard_normal((n, 2)) @ rng.standard_normal((2, 40))
        return [r1, r2, base]
    if kind == "huge":
        return [1e4 * base, 1e4 * rng.standard_normal((n, 10)), 1e4 * (base[:, :5] + 3.0)]
    if kind == "tiny":
        return [1e-4 * base, 1e-4 * rng.standard_normal((n, 10)), 1e-4 * (base[:, :5] + 3.0)]
    if kind == "constant":
        return [np.full((n, 6), 2.5), base, np.zeros((n, 4)) + np.arange(4.0)]
    if kind == "large_mean":
        return [base + 100.0, base[:, :10] * 0.1 + 50.0, rng.standard_normal((n, 15)) + 1e3]
    raise AssertionError(kind)


CASES = [(kind, n) for kind in ("random", "rank_deficient", "huge", "tiny", "constant", "large_mean")
         for n in (4, 9, 33)]


@pytest.mark.parametrize("kind,n", CASES)
def test_hsic_unbiased_matches_song_trace_formula(kind, n):
    rng = np.random.default_rng(hash((kind, n)) % 2**32)
    grams = np.stack([f @ f.T for f in _layers(kind, n, rng)])
    got = hsic_all_pairs(grams, "unbiased")
    want = ref_all_pairs(grams, ref_hsic_unbiased)
    assert got.shape == want.shape and got.dtype == np.float64
    assert_hsic_close(got, want, grams, n * (n - 3))
    # the same through the public U-centring function
    ku = u_center(grams).reshape(len(grams), -1)
    assert_hsic_close(ku @ ku.T / (n * (n - 3)), want, grams, n * (n - 3))


@pytest.mark.parametrize("kind,n", CASES)
def test_hsic_biased_matches_centring_matrix_formula(kind, n):
    rng = np.random.default_rng(1 + hash((kind, n)) % 2**32)
    grams = np.stack([f @ f.T for f in _layers(kind, n, rng)])
    got = hsic_all_pairs(grams, "biased")
    want = ref_all_pairs(grams, ref_hsic_biased)
    assert_hsic_close(got, want, grams, (n - 1) ** 2)


@pytest.mark.parametrize("n", [4, 5, 6])
def test_hsic_unbiased_is_the_u_statistic(n):
    rng = np.random.default_rng(n)
    feats = [rng.standard_normal((n, 3)), rng.standard_normal((n, 5)) + 2, rng.standard_normal((n, 1))]
    grams = np.stack([f @ f.T for f in feats])
    got = hsic_all_pairs(grams)
    want = ref_all_pairs(grams, ref_hsic_ustat)
    assert_hsic_close(got, want, grams, n * (n - 3))


def test_hsic_non_psd_inputs():
    """Any symmetric matrices (not just Grams): hand-made, indefinite, nonzero diagonal."""
    rng = np.random.default_rng(7)
    n = 11
    grams = rng.standard_normal((4, n, n)) * np.array([1.0, 10.0, 0.1, 1e3])[:, None, None]
    grams = grams + grams.transpose(0, 2, 1)
    for est, ref, norm in (("unbiased", ref_hsic_unbiased, n * (n - 3)), ("biased", ref_hsic_biased, (n - 1) ** 2)):
        assert_hsic_close(hsic_all_pairs(grams, est), ref_all_pairs(grams, ref), grams, norm)


@pytest.mark.parametrize("n", [37, 100])
def test_hsic_several_row_blocks(n, monkeypatch):
    """Small blocks force hsic_all_pairs to centre the lower triangle in many row blocks."""
    import seelike.cka as cka_mod
    monkeypatch.setattr(cka_mod, "_HSIC_BLOCK_VALUES", 3 * 300)    # ~300 values per layer per block
    rng = np.random.default_rng(3)
    L = 3
    feats = [rng.standard_normal((n, 16)) + i for i in range(L)]
    grams = np.stack([f @ f.T for f in feats])
    assert_hsic_close(hsic_all_pairs(grams), ref_all_pairs(grams, ref_hsic_unbiased), grams, n * (n - 3))
    assert_hsic_close(hsic_all_pairs(grams, "biased"), ref_all_pairs(grams, ref_hsic_biased), grams, (n - 1) ** 2)


def test_hsic_all_pairs_does_not_modify_input_and_accepts_tensors():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((2, 6, 6))
    g = g + g.transpose(0, 2, 1)
    before = g.copy()
    a = hsic_all_pairs(g)
    np.testing.assert_array_equal(g, before)
    np.testing.assert_array_equal(hsic_all_pairs(torch.from_numpy(g)), a)
    ro = g.copy()
    ro.flags.writeable = False                   # e.g. memory-mapped or broadcast arrays
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(hsic_all_pairs(ro), a)


def test_centring_functions():
    rng = np.random.default_rng(5)
    k = rng.standard_normal((3, 8, 8))
    k = k + k.transpose(0, 2, 1)
    H = np.eye(8) - 1.0 / 8
    np.testing.assert_allclose(double_center(k), H @ k @ H, atol=1e-13)
    ku = u_center(k)
    assert np.all(np.diagonal(ku, axis1=1, axis2=2) == 0)
    np.testing.assert_allclose(ku, ku.transpose(0, 2, 1), atol=1e-14)
    # U-centring annihilates the a_i + a_j + c terms a feature shift adds to a Gram
    a = rng.standard_normal(8)
    np.testing.assert_allclose(u_center(k[0] + a[:, None] + a[None, :] + 3.0), ku[0], atol=1e-12)
    assert u_center(k[0]).shape == (8, 8)


# ----------------------------------------------------------------------------------------------
# CKA properties
# ----------------------------------------------------------------------------------------------

def _random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_cka_identity_orthogonal_and_isotropic_invariance(estimator):
    rng = np.random.default_rng(11)
    n, d = 64, 24
    X = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 0.5
    Q = _random_orthogonal(d, rng)
    feats = [torch.from_numpy(X), torch.from_numpy(X @ Q), torch.from_numpy(7.5 * X),
             torch.from_numpy(1e-3 * X @ Q), torch.from_numpy(X + 42.0)]
    res = cka_all_pairs_from_features(feats, minibatch_size=16, estimator=estimator)
    assert isinstance(res, CKAResult) and res.n_minibatches == 4
    np.testing.assert_allclose(res.cka, 1.0, atol=1e-6)    # float32 Gram products: ~1e-7
    assert (res.status == "ok").all()
    # the same in float64 from hsic_all_pairs on exact Grams
    grams = np.stack([f.numpy() @ f.numpy().T for f in feats])
    h = hsic_all_pairs(grams, estimator)
    np.testing.assert_allclose(h / np.sqrt(np.outer(np.diag(h), np.diag(h))), 1.0, atol=1e-10)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_cka_not_invariant_to_non_isotropic_scaling(estimator):
    """Sanity check that the invariance test can fail: scaling features unequally changes CKA."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((64, 10))
    D = np.diag(np.r_[np.full(5, 10.0), np.full(5, 0.1)])
    res = cka_all_pairs_from_features([torch.from_numpy(X), torch.from_numpy(X @ D)], estimator=estimator)
    assert res.cka[0, 1] < 0.9


def test_full_batch_biased_cka_is_kornblith_feature_space_formula():
    rng = np.random.default_rng(13)
    n = 50
    X = rng.standard_normal((n, 12)) + 3
    Y = np.tanh(X @ rng.standard_normal((12, 30))) + rng.standard_normal((n, 30)) * 0.3
    Z = rng.standard_normal((n, 4, 5))     # token-shaped
    feats = [X, Y, Z]
    res = cka_all_pairs_from_features([torch.from_numpy(f) for f in feats], estimator="biased")
    want = np.array([[ref_cka_linear(a, b) for b in feats] for a in feats])
    np.testing.assert_allclose(res.cka, want, atol=1e-6)
    # exact Grams -> float64-level agreement
    grams = np.stack([ref_gram(torch.from_numpy(f)) for f in feats])
    h = hsic_all_pairs(grams, "biased")
    np.testing.assert_allclose(h / np.sqrt(np.outer(np.diag(h), np.diag(h))), want, atol=1e-12)
    assert 0.05 < want[0, 1] < 0.95   # a non-trivial value, so the comparison means something


# ----------------------------------------------------------------------------------------------
# Gram
# ----------------------------------------------------------------------------------------------

def test_gram_tokens_equal_sum_of_per_token_grams_and_flattened():
    g = torch.Generator().manual_seed(0)
    n, t, d = 12, 5, 7
    x = torch.randn(n, t, d, generator=g) + 0.3
    want = ref_gram(x)
    per_token = sum(ref_gram(x[:, i]) for i in range(t))
    np.testing.assert_allclose(per_token, want, rtol=1e-12)
    for got in (gram(x), gram(x.reshape(n, -1)), sum(gram(x[:, i]) for i in range(t)),
                gram(x, chunk_features=3), gram(x.double())):
        assert got.dtype == torch.float64 and got.shape == (n, n) and got.device == x.device
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("n,d,chunk,panels", [
    (600, 4200, 1 << 16, 4), (521, 8300, 8192, 4), (1030, 800, 1 << 16, 8), (257, 700, 1 << 16, 2),
    (300, 1000, 97, 0), (40, 2000, 300, 0)])
def test_gram_panels_and_chunks(n, d, chunk, panels):
    """From n = 256 and chunks of >= 512 features the Gram takes the lower-block-triangle path on CPU
    (2, 4 or 8 row panels, the last one partial; the last, partial chunk too); small chunks sum in
    float64."""
    from seelike.cka import gram_panels

    b = gram_panels(n, min(d, chunk), torch.device("cpu"))
    assert (b and -(-n // b)) == panels            # the path this case is meant to exercise
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g) * 2 + 1
    want = ref_gram(x)
    got = gram(x, chunk_features=chunk)
    assert torch.equal(got, got.T)                 # exactly symmetric
    assert np.abs(got.numpy() - want).max() <= 1e-6 * np.abs(want).max()
    # centre=True: the Gram of the minibatch-centred features, H K H
    H = np.eye(n) - 1.0 / n
    want_c = H @ want @ H
    got_c = gram(x, chunk_features=chunk, center=True).numpy()
    assert np.abs(got_c - want_c).max() <= 1e-6 * np.abs(want_c).max()
    got_h = gram(x.half(), chunk_features=chunk, center=True).numpy()     # staged float16 path
    want_h = H @ ref_gram(x.half()) @ H
    assert np.abs(got_h - want_h).max() <= 1e-6 * np.abs(want_h).max()


def test_gram_float16_that_overflows_in_float16():
    g = torch.Generator().manual_seed(1)
    x = (300.0 + 20.0 * torch.randn(16, 2048, generator=g)).half()
    assert torch.isinf(x @ x.T).any()             # premise: a float16 Gram overflows
    want = ref_gram(x)                            # float64 Gram of the float16 values
    got = gram(x)
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    assert np.abs(got.numpy() - want).max() <= RTOL_OFFSET * np.abs(want).max()
    got = gram(x.view(16, 32, 64), chunk_features=500)
    assert np.abs(got.numpy() - want).max() <= RTOL_OFFSET * np.abs(want).max()


def test_gram_bfloat16():
    g = torch.Generator().manual_seed(2)
    x = (300.0 + 20.0 * torch.randn(16, 2048, generator=g)).bfloat16()
    want = ref_gram(x)
    naive = (x @ x.T).double().numpy()
    assert np.abs(naive - want).max() > 1e-4 * np.abs(want).max()   # premise: bf16 Grams are coarse
    got = gram(x).numpy()
    assert np.abs(got - want).max() <= RTOL_OFFSET * np.abs(want).max()


def _centred_ref(x) -> np.ndarray:
    a = np.asarray(torch.as_tensor(x).double().numpy()).reshape(len(x), -1)
    a = a - a.mean(axis=0)
    return a @ a.T


@pytest.mark.parametrize("n,d", [(48, 3000), (300, 2048)])          # plain and panel paths
def test_gram_auto_centres_in_float64_unless_the_offset_dominates(n, d):
    """center="auto" returns H K H: from the float64 K when the features' mean is small next to
    their spread (bitwise the float64 centring of center=False's K, no second pass), and from
    centred features when the mean dominates, where centring K afterwards has lost the signal."""
    from seelike.cka import OFFSET_LIMIT, _centre_

    def _centre(k):
        return _centre_(k.clone(), k.sum(dim=1))

    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, d, generator=g)
    ordinary = torch.relu(z)                                     # mean^2 / spread ~ 0.5
    got = gram(ordinary, center="auto")
    assert torch.equal(got, _centre(gram(ordinary)))            # no recompute
    assert torch.equal(got, got.T)
    want = _centred_ref(ordinary)           # as accurate as K itself: float32 products of ||x_i|| ||x_j||
    assert np.abs(got.numpy() - want).max() <= 1e-6 * np.abs(ref_gram(ordinary)).max()

    offset = z + 300.0 * torch.randn(d, generator=g)            # mean^2 / spread ~ 9e4 >> OFFSET_LIMIT
    want = _centred_ref(offset)
    late = _centre(gram(offset)).numpy()                         # premise: centring K afterwards is too late
    assert np.abs(late - want).max() > 1e-3 * np.abs(want).max()
    got = gram(offset, center="auto")
    assert torch.equal(got, got.T)
    assert np.abs(got.numpy() - want).max() <= 4e-6 * np.abs(want).max()   # float32 products of centred features
    assert torch.equal(got, gram(offset, center=True))          # recomputed from centred features

    # the switch sits at OFFSET_LIMIT: just below it K is centred, just above it recomputed
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = (u - u.mean(0)) / u.norm() * np.sqrt(n)                  # sum_i ||u_i||^2 = n, mean exactly ~0
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    for ratio, recomputed in ((OFFSET_LIMIT * 0.9, False), (OFFSET_LIMIT * 1.1, True)):
        x = (u + mu / mu.norm() * np.sqrt(ratio)).float()       # n ||mean||^2 / sum ||x_i - mean||^2 = ratio
        got = gram(x, center="auto")
        assert torch.equal(got, gram(x, center=True)) == recomputed


def test_gram_auto_decides_from_a_sample_before_the_product(monkeypatch):
    """center="auto" reads a sample of the features first: offset-dominated ones (sampled ratio above
    OFFSET_LIMIT) get one product of centred features, small offsets one uncentred product; where the
    sample misses the offset, the exact check on the uncentred Gram recomputes it from centred
    features. The result is always H K H (float64 reference)."""
    import seelike.cka
    from seelike.cka import _ESTIMATE_RUN, _ESTIMATE_RUNS, OFFSET_LIMIT, offset_ratio_estimate

    calls = []
    real = seelike.cka._gram
    monkeypatch.setattr(seelike.cka, "_gram", lambda x, c, center, p="fp32", dest=None: calls.append(center)
                        or real(x, c, center, p, dest))
    g = torch.Generator().manual_seed(8)
    n, d = 256, 20000                               # d > the sample: runs spread over the features
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = (u - u.mean(0)) / u.norm() * np.sqrt(n)     # sum_i ||u_i||^2 = n, mean exactly ~0
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    hidden = torch.ones(d, dtype=torch.float64)     # an offset only where the sample does not read
    for i in range(_ESTIMATE_RUNS):
        s0 = round(i * (d - _ESTIMATE_RUN) / (_ESTIMATE_RUNS - 1))
        hidden[s0:s0 + _ESTIMATE_RUN] = 0.0
    cases = [(mu, 0.5, [False]), (mu, 1.5 * OFFSET_LIMIT, [True]), (mu, 20 * OFFSET_LIMIT, [True]),
             (mu * hidden, 1.5 * OFFSET_LIMIT, [False, True])]
    for direction, ratio, want_calls in cases:
        x = (u + direction / direction.norm() * np.sqrt(ratio)).float()
        if direction is mu:
            assert abs(offset_ratio_estimate(x) / ratio - 1) < 0.25, ratio  # the sample reads the ratio
        else:
            assert offset_ratio_estimate(x) < 0.1 * OFFSET_LIMIT             # the sample misses it
        calls.clear()
        got = gram(x, center="auto")
        assert calls == want_calls, (ratio, calls)
        want = _centred_ref(x)
        assert np.abs(got.numpy() - want).max() <= 4e-6 * np.abs(want).max(), ratio
    assert offset_ratio_estimate(torch.ones(4, 10)) == math.inf and offset_ratio_estimate(torch.zeros(4, 10)) == 0.0
    bad = torch.randn(8, 100)
    bad[3, 5] = float("nan")
    assert offset_ratio_estimate(bad) == 0.0 and torch.isnan(gram(bad, center="auto")).any()


def test_gram_auto_keeps_cka_accurate_for_offset_activations():
    """End to end through the estimator: activations with a large common offset (as in some
    transformer residual streams) give CKA within 1e-6 of float64 with center="auto", not with
    uncentred Grams."""
    rng = np.random.default_rng(3)
    n, d = 256, 4096
    z = rng.standard_normal((n, d))
    w = z @ rng.standard_normal((d, 32)) @ rng.standard_normal((32, d)) / 32 + rng.standard_normal((n, d))
    mu = 100.0 * rng.standard_normal(d)
    feats = [(z + mu).astype(np.float32), (w + 0.5 * mu).astype(np.float32)]
    want = ref_all_pairs([_centred_ref(f) for f in feats], ref_hsic_unbiased)
    want = want[0, 1] / np.sqrt(want[0, 0] * want[1, 1])
    errors = {}
    for center in (False, "auto"):
        grams = np.stack([gram(torch.from_numpy(f), center=center).numpy() for f in feats])
        errors[center] = abs(cka_from_minibatch_hsic(hsic_all_pairs(grams)[None]).cka[0, 1] - want)
    assert errors[False] > 1e-5                                  # premise: the offset costs accuracy
    assert errors["auto"] <= 1e-6


def test_gram_onednn_products(monkeypatch):
    """oneDNN's float32 products (seelike.cka.cpu_products), where this torch has them: chosen on
    AVX-512 CPUs only, and, forced on any CPU, the Gram of every path (plain and panels, column
    chunks and strided features copied to contiguous staging, float16, centred) matches float64 and
    BLAS's Gram, CKA of offset layers stays within 1e-6 of float64, and NaN / Inf reach the Gram."""
    import seelike.cka
    from seelike.cka import cpu_products

    has_onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert cpu_products() == ("onednn" if has_onednn and avx512 else "blas")
    if not has_onednn:
        pytest.skip("this torch has no oneDNN matmul: BLAS products are what the other tests check")
    monkeypatch.setattr(seelike.cka, "cpu_products", lambda: "onednn")
    g = torch.Generator().manual_seed(21)
    cases = {
        "plain": torch.relu(torch.randn(64, 3000, generator=g)),
        "panels": torch.randn(300, 2048, generator=g) * 2 + 1,
        "column chunks": torch.relu(torch.randn(256, 70000, generator=g)),      # d > chunk_features
        "CNN token view": torch.relu(torch.randn(256, 64, 6, 6, generator=g)).flatten(2).transpose(1, 2),
        "strided CLS": torch.randn(256, 5, 700, generator=g)[:, 0],            # not contiguous
        "float16": (3 + torch.randn(256, 900, generator=g)).half(),
    }
    for name, x in cases.items():
        for center in (False, True):
            got = gram(x, center=center)
            want = _centred_ref(x) if center else ref_gram(x)
            assert torch.equal(got, got.T), name
            assert np.abs(got.numpy() - want).max() <= 4e-6 * np.abs(want).max(), (name, center)
    strided = cases["strided CLS"]
    assert torch.equal(gram(strided), gram(strided.contiguous()))   # staging is a copy, not a change
    with monkeypatch.context() as m:
        m.setattr(seelike.cka, "cpu_products", lambda: "blas")
        blas = gram(cases["panels"]).numpy()
    assert np.abs(gram(cases["panels"]).numpy() - blas).max() <= 4e-6 * np.abs(blas).max()

    rng = np.random.default_rng(5)       # CKA of offset-dominated layers, as in the test above
    z = rng.standard_normal((256, 4096))
    mu = 100.0 * rng.standard_normal(4096)
    feats = [(z + mu).astype(np.float32), (np.tanh(z) + 0.5 * mu).astype(np.float32)]
    want = ref_all_pairs([_centred_ref(f) for f in feats], ref_hsic_unbiased)
    grams = np.stack([gram(torch.from_numpy(f), center="auto").numpy() for f in feats])
    got = cka_from_minibatch_hsic(hsic_all_pairs(grams)[None]).cka[0, 1]
    assert abs(got - want[0, 1] / np.sqrt(want[0, 0] * want[1, 1])) <= 1e-6

    for bad in (float("nan"), float("inf")):
        x = torch.randn(256, 1024, generator=g)
        x[7, 100] = bad
        k = gram(x)
        assert not torch.isfinite(k[7]).any() and torch.isfinite(k[:7, :7]).all(), bad


def test_extraction_stores_the_centred_gram():
    """The shard's Gram is H K H of the layer's activations (float64 reference), for ordinary
    activations and for a transformer-like residual stream with a large common offset."""
    from seelike.extract import GramReducer

    g = torch.Generator().manual_seed(11)
    acts = {"relu": torch.relu(torch.randn(32, 4, 5, 5, generator=g)),
            "stream": torch.randn(32, 9, 16, generator=g) + 200.0 * torch.randn(9, 16, generator=g)}
    r = GramReducer(list(acts))
    for feats in (acts, {k: v.flip(0) for k, v in acts.items()}):
        for name, x in feats.items():
            r.consume(name, x)
    out = r.result()
    for name, x in acts.items():
        stored = out[f"layers/{name}/gram"]
        assert stored.shape == (2, 32, 32) and stored.dtype == np.float64
        for got, feats in zip(stored, (x, x.flip(0))):
            want = _centred_ref(feats)
            assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max(), name


def test_gram_ignores_autocast():
    """Grams stay float32 products under an enclosing autocast (the forward's mixed precision),
    on the plain path (n < 256) and the panel path alike."""
    g = torch.Generator().manual_seed(5)
    for n in (64, 256):
        x = torch.randn(n, 3000, generator=g) + 1.0
        outside = {c: gram(x, center=c) for c in (False, True, "auto")}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert (x @ x.T).dtype == torch.bfloat16             # premise: autocast reaches matmuls
            inside = {c: gram(x, center=c) for c in (False, True, "auto")}
        for c in outside:
            assert inside[c].dtype == torch.float64 and torch.equal(inside[c], outside[c]), (n, c)


def test_gram_rejects_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        gram(np.ones((4, 3)))
    with pytest.raises(ValueError, match="no features"):
        gram(torch.ones(4, 0))
    with pytest.raises(ValueError, match="chunk_features"):
        gram(torch.ones(4, 3), chunk_features=0)
    with pytest.raises(ValueError, match="center must be True, False or 'auto'"):
        gram(torch.ones(4, 3), center="yes")


# ----------------------------------------------------------------------------------------------
# Minibatch CKA
# ----------------------------------------------------------------------------------------------

def _minibatch_features(N=64, seed=21):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, 10, generator=g, dtype=torch.float64)
    return [base + 2.0,
            torch.tanh(base @ torch.randn(10, 3, 8, generator=g, dtype=torch.float64).reshape(10, 24)).reshape(N, 3, 8),
            base[:, :4] + 0.5 * torch.randn(N, 4, generator=g, dtype=torch.float64),
            torch.randn(N, 6, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("estimator,ref", [("unbiased", ref_hsic_unbiased), ("biased", ref_hsic_biased)])
@pytest.mark.parametrize("center", [False, True])
def test_minibatch_cka_and_jackknife_match_reference(estimator, ref, center):
    feats = _minibatch_features()
    b = 16
    cka, se, std = ref_minibatch_cka(feats, b, ref)
    res = cka_all_pairs_from_features(feats, minibatch_size=b, estimator=estimator, center=center)
    assert res.n_minibatches == 4 and (res.status == "ok").all()
    np.testing.assert_allclose(res.cka, cka, atol=1e-6)
    np.testing.assert_allclose(res.se, se, atol=1e-6)
    np.testing.assert_allclose(res.batch_std, std, atol=1e-6)
    assert (se[~np.eye(4, dtype=bool)] > 1e-3).all()     # non-trivial spread, so the check means something
    # float64-level agreement when starting from exact per-minibatch Grams
    per = np.stack([hsic_all_pairs(np.stack([ref_gram(f[t * b:(t + 1) * b]) for f in feats]), estimator)
                    for t in range(4)])
    exact = cka_from_minibatch_hsic(per)
    np.testing.assert_allclose(exact.cka, cka, atol=1e-12)
    np.testing.assert_allclose(exact.se, se, atol=1e-12)
    np.testing.assert_allclose(exact.batch_std, std, atol=1e-12)


def test_student_t_quantile_against_closed_forms_and_tables():
    from seelike.cka import student_t_quantile

    for p in (0.6, 0.9, 0.975, 0.995, 0.9995):
        assert abs(student_t_quantile(p, 1) - np.tan(np.pi * (p - 0.5))) <= 1e-9 * np.tan(np.pi * (p - 0.5))
        assert abs(student_t_quantile(p, 2) - (2 * p - 1) / np.sqrt(2 * p * (1 - p))) <= 1e-9
    # two-sided 95% critical values of standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
    for dof, t in {3: 3.182446, 5: 2.570582, 7: 2.364624, 10: 2.228139, 30: 2.042272, 100: 1.983972}.items():
        assert abs(student_t_quantile(0.975, dof) - t) <= 2e-6, dof
    assert abs(student_t_quantile(0.975, 10 ** 6) - 1.959963985) <= 1e-5      # -> the normal quantile
    assert student_t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-12)
    for bad in ((0.4, 3), (1.0, 3), (0.975, 0), (0.975, 2.5)):
        with pytest.raises(ValueError):
            student_t_quantile(*bad)


def test_interval_uses_the_jackknifes_degrees_of_freedom():
    """ci = cka -+ t_{m-1} se: with 8 minibatches t = 2.3646 (the normal 1.96 would be 17% narrower)."""
    feats = _minibatch_features(N=64)
    res = cka_all_pairs_from_features(feats, minibatch_size=8)
    assert res.n_minibatches == 8
    low, high = res.interval(0.95)
    np.testing.assert_allclose(res.cka - low, 2.364624 * res.se, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(high - res.cka, 2.364624 * res.se, rtol=1e-6, atol=1e-12)
    one = cka_all_pairs_from_features(feats, minibatch_size=64)
    assert all(np.isnan(a).all() for a in one.interval())


def test_single_minibatch_has_no_spread():
    res = cka_all_pairs_from_features(_minibatch_features(), minibatch_size=None)
    assert res.n_minibatches == 1
    assert np.isnan(res.se).all() and np.isnan(res.batch_std).all()
    assert np.isfinite(res.cka).all()


def test_jackknife_known_values():
    """Hand-computable: HSIC of two layers over 3 minibatches."""
    h = np.array([[[1.0, 0.5], [0.5, 1.0]],
                  [[1.0, 0.8], [0.8, 1.0]],
                  [[4.0, 1.2], [1.2, 1.0]]])
    res = cka_from_minibatch_hsic(h)
    assert res.cka[0, 1] == pytest.approx(2.5 / 3 / np.sqrt(2.0 * 1.0))
    loo = np.array([2.0 / 2 / np.sqrt(5 / 2 * 1.0), 1.7 / 2 / np.sqrt(5 / 2), 1.3 / 2 / np.sqrt(1.0)])
    assert res.se[0, 1] == pytest.approx(np.sqrt(2 / 3 * ((loo - loo.mean()) ** 2).sum()))
    assert res.batch_std[0, 1] == pytest.approx(np.std([0.5, 0.8, 0.6], ddof=1))
    assert res.se[0, 0] == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------------------------
# Non-positive self-HSIC
# ----------------------------------------------------------------------------------------------

def test_constant_layer_gives_status_nan_and_warning():
    g = torch.Generator().manual_seed(4)
    n = 4
    feats = [torch.randn(3 * n, 5, generator=g), torch.full((3 * n, 5), 7.0),
             torch.randn(3 * n, 2, 3, generator=g)]
    for center in (False, True):
        with pytest.warns(NegativeHSICWarning, match=re.escape("rows/columns [1]")):
            res = cka_all_pairs_from_features(feats, minibatch_size=n, center=center)
        bad = np.zeros((3, 3), dtype=bool)
        bad[1, :] = bad[:, 1] = True
        assert (res.status[bad] == "nonpositive_self_hsic").all() and (res.status[~bad] == "ok").all()
        assert np.isnan(res.cka[bad]).all() and np.isfinite(res.cka[~bad]).all()
        assert np.isfinite(res.se[~bad]).all() and np.isfinite(res.batch_std[~bad]).all()


def test_hand_made_gram_with_zero_centred_part():
    """K_ij = a_i + a_j + c off the diagonal (any diagonal): U-centring gives exactly 0."""
    rng = np.random.default_rng(9)
    n = 4
    a = rng.standard_normal(n) * 100
    k = a[:, None] + a[None, :] + 5.0
    np.fill_diagonal(k, rng.standard_normal(n))
    other = rng.standard_normal((n, 3))
    grams = np.stack([other @ other.T, k])
    h = hsic_all_pairs(grams)
    want = ref_all_pairs(grams, ref_hsic_unbiased)
    assert abs(want[1, 1]) < 1e-9 * np.linalg.norm(k) ** 2        # reference: zero up to rounding
    assert h[1, 1] == 0.0 and h[0, 1] == 0.0 and h[1, 0] == 0.0    # ours: exactly zero, not noise
    with pytest.warns(NegativeHSICWarning, match=re.escape("[1]")):
        res = cka_from_minibatch_hsic(h[None])
    assert res.status[0, 0] == "ok" and np.isnan(res.cka[1]).all() and res.cka[0, 0] == 1.0


def test_negative_accumulated_self_hsic_from_hand_made_hsic():
    h = np.array([[[-1e-3, 0.01, 0.0], [0.01, 2.0, 0.5], [0.0, 0.5, 1.0]],
                  [[0.5e-3, 0.02, 0.0], [0.02, 1.5, 0.4], [0.0, 0.4, 1.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)          # no sqrt of a negative, no 0/0
        with pytest.warns(NegativeHSICWarning, match=re.escape("rows/columns [0]")) as rec:
            res = cka_from_minibatch_hsic(h)
    assert len([w for w in rec if issubclass(w.category, NegativeHSICWarning)]) == 1
    assert issubclass(NegativeHSICWarning, UserWarning)
    assert (res.status[0] == "nonpositive_self_hsic").all() and (res.status[:, 0] == "nonpositive_self_hsic").all()
    assert (res.status[1:, 1:] == "ok").all()
    assert np.isnan(res.cka[0]).all() and np.isnan(res.cka[:, 0]).all() and np.isfinite(res.cka[1:, 1:]).all()
    assert res.cka[1, 2] == pytest.approx(0.45 / np.sqrt(1.75))


def test_layer_constant_in_one_minibatch_only():
    """Per-minibatch CKA undefined in one minibatch: CKA still defined, batch_std skips that batch."""
    g = torch.Generator().manual_seed(6)
    b = 8
    x = torch.randn(4 * b, 6, generator=g, dtype=torch.float64)
    y = torch.randn(4 * b, 6, generator=g, dtype=torch.float64) + x
    y[:b] = 3.0                                     # constant in minibatch 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # nothing to warn about
        res = cka_all_pairs_from_features([x, y], minibatch_size=b)
    assert (res.status == "ok").all() and np.isfinite(res.cka).all() and np.isfinite(res.se).all()
    per = [cka_all_pairs_from_features([x[t * b:(t + 1) * b], y[t * b:(t + 1) * b]]).cka[0, 1] for t in (1, 2, 3)]
    assert res.batch_std[0, 1] == pytest.approx(np.std(per, ddof=1), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error_naming_the_problem():
    g = np.ones((2, 3, 3))
    with pytest.raises(ValueError, match=r"unbiased HSIC estimator needs n >= 4.*n = 3"):
        hsic_all_pairs(g)
    with pytest.raises(ValueError, match=r"biased HSIC estimator needs n >= 2.*n = 1"):
        hsic_all_pairs(np.ones((2, 1, 1)), "biased")
    with pytest.raises(ValueError, match=r"unknown HSIC estimator 'kernel'"):
        hsic_all_pairs(np.ones((2, 5, 5)), "kernel")
    with pytest.raises(ValueError, match="square"):
        hsic_all_pairs(np.ones((2, 5, 4)))
    with pytest.raises(ValueError, match="stack"):
        hsic_all_pairs(np.ones((5, 5)))
    bad = np.random.default_rng(0).standard_normal((3, 6, 6))
    bad = bad + bad.transpose(0, 2, 1)
    asym = bad.copy()
    asym[1] = np.triu(asym[1])
    with pytest.raises(ValueError, match=re.escape("layer indices [1] are not symmetric")):
        hsic_all_pairs(asym)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 300, 40))
    k = x @ x.T
    for name, m in (("upper triangle", np.triu(k)), ("lower triangle", np.tril(k)), ("X Y^T", x @ y.T),
                    ("one perturbed row", k + np.outer(np.eye(300)[150], np.ones(300)))):
        with pytest.raises(ValueError, match=re.escape("layer indices [1] are not symmetric")):
            hsic_all_pairs(np.stack([k, m]))
    bad[2, 1, 4] = np.nan
    with pytest.raises(ValueError, match=re.escape("non-finite values in the Gram matrices of layer indices [2]")):
        hsic_all_pairs(bad)
    with pytest.raises(ValueError, match="square"):
        u_center(np.ones((3, 4)))
    with pytest.raises(ValueError, match="n >= 3"):
        u_center(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\(m, L, L\)"):
        cka_from_minibatch_hsic(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        cka_from_minibatch_hsic(np.full((1, 2, 2), np.inf))
    feats = [torch.randn(10, 3), torch.randn(10, 2)]
    with pytest.raises(ValueError, match="not a multiple of minibatch_size 4"):
        cka_all_pairs_from_features(feats, minibatch_size=4)
    with pytest.raises(ValueError, match="minibatch_size 3 is too small"):
        cka_all_pairs_from_features([torch.randn(9, 3)], minibatch_size=3)
    with pytest.raises(ValueError, match="layer 1 has 9 examples"):
        cka_all_pairs_from_features([torch.randn(10, 3), torch.randn(9, 3)])
    with pytest.raises(ValueError, match="unknown HSIC estimator"):
        cka_all_pairs_from_features(feats, estimator="debiased")


def test_gram_of_a_transposed_cnn_token_view_reads_memory_in_place():
    from seelike.cka import flat_features, gram

    g = torch.Generator().manual_seed(3)
    nchw = torch.randn(6, 5, 4, 3, generator=g) * 10 + 3
    tokens = nchw.flatten(2).transpose(1, 2)          # (n, h*w, c): what the CNN taps hand over
    flat = flat_features(tokens)
    assert flat.data_ptr() == nchw.data_ptr() and flat.shape == (6, 60)
    x = tokens.reshape(6, -1).double()                 # the dims' order, as an independent reference
    np.testing.assert_allclose(gram(tokens).numpy(), (x @ x.T).numpy(), rtol=1e-5, atol=0)
    np.testing.assert_allclose(gram(tokens, center=True).numpy(),
                               ((x - x.mean(0)) @ (x - x.mean(0)).T).numpy(), rtol=1e-5, atol=1e-6)
    odd = torch.randn(4, 6, 8, generator=g)[:, ::2, 1:]  # not a permutation of dense memory: copied
    assert flat_features(odd).shape == (4, 21)
    np.testing.assert_allclose(gram(odd).numpy(), (odd.reshape(4, -1).double() @ odd.reshape(4, -1).double().T).numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("case", ["nan", "pos_and_neg_inf", "inf_fp16", "transposed_nan"])
def test_check_finite_finds_the_first_bad_example(case):
    from seelike.extract import NonFiniteActivation, check_finite

    a = torch.randn(8, 5, 6)
    idx = np.arange(100, 108)
    if case == "nan":
        a[3, 2, 1] = float("nan")
        first = 103
    elif case == "pos_and_neg_inf":     # +Inf and -Inf: their sum is NaN, not Inf
        a[5, 0, 0], a[6, 1, 1] = float("inf"), float("-inf")
        first = 105
    elif case == "inf_fp16":
        a = a.half()
        a[2, 4, 5] = 70000.0            # overflows float16 to Inf
        first = 102
    else:
        a = torch.randn(8, 6, 2, 2)
        a[4, 1, 1, 0] = float("nan")
        a = a.flatten(2).transpose(1, 2)
        first = 104
    with pytest.raises(NonFiniteActivation, match=rf"layer 'L': .*dataset index {first}\b"):
        check_finite({"ok": torch.randn(8, 3), "L": a}, idx)


def test_check_finite_accepts_huge_finite_activations():
    from seelike.extract import check_finite

    a = torch.full((4, 1000), 3e37)    # finite, but their float32 sum overflows: the per-example scan decides
    check_finite({"L": a, "h": torch.full((4, 64), 60000.0, dtype=torch.float16)}, np.arange(4))


# ----------------------------------------------------------------------------------------------
# float64 input: centred in float64 and scaled into float32's range before the float32 products
# ----------------------------------------------------------------------------------------------

def _legacy_gram(x, chunk_features=1 << 16, center=False):
    """Frozen copy of ``gram`` as it was before float64 input was centred in float64 and scaled
    (commit 65dc44f), for the bit-exactness check of the float32 / float16 / bfloat16 paths, which
    are what extraction feeds it: the change must leave their Grams, and so the workflow's results,
    untouched."""
    from seelike.cka import OFFSET_LIMIT, _centre_, _mirror_lower, flat_features, gram_panels
    from seelike.runtime import full_fp32

    def _g(x, chunk, center):
        n = x.shape[0]
        flat = flat_features(x)
        d = flat.shape[1]
        staged = center or flat.dtype != torch.float32
        if staged:
            chunk = min(chunk, max(512, (1 << 24) // n))
            stage = torch.empty(n, min(chunk, d), dtype=torch.float32, device=x.device)
        b = gram_panels(n, min(d, chunk), x.device)
        buf = torch.empty(n, n, dtype=torch.float32, device=x.device) if b else None
        out = None
        with torch.no_grad(), full_fp32():
            for s in range(0, d, chunk):
                c = flat[:, s:s + chunk]
                if staged:
                    st = stage[:, :c.shape[1]]
                    if center and c.dtype == torch.float32:
                        torch.sub(c, c.mean(dim=0), out=st)
                    else:
                        st.copy_(c)
                        if center:
                            st.sub_(st.mean(dim=0))
                    c = st
                else:
                    c = c.to(torch.float32)
                if b:
                    for p in range(0, n, b):
                        q = min(n, p + b)
                        torch.mm(c[p:q], c[:q].T, out=buf[p:q, :q])
                    part = buf
                else:
                    part = c @ c.T
                if out is None:
                    out = part.to(torch.float64)
                else:
                    out += part
            if b:
                _mirror_lower(out, b)
        return out

    if center == "auto":
        k = _g(x, chunk_features, False)
        rows = k.sum(dim=1)
        offset = float(rows.sum()) / k.shape[0]
        if offset * (1.0 + OFFSET_LIMIT) <= OFFSET_LIMIT * float(k.diagonal().sum()):
            return _centre_(k, rows)
    elif not center:
        return _g(x, chunk_features, False)
    k = _g(x, chunk_features, True)
    return _centre_(k, k.sum(dim=1))


@pytest.mark.parametrize("n,d,chunk", [(40, 3000, 1 << 16), (40, 3000, 700), (300, 2048, 1 << 16),
                                       (300, 2048, 600), (7, 33, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gram_of_float32_and_lower_is_bitwise_unchanged(n, d, chunk, dtype, monkeypatch):
    """Extraction hands gram float32 or narrower activations: with BLAS products their Gram is bit for
    bit what it was before float64 input got its own path (plain and panel products, several chunks,
    ordinary and offset-dominated features, every ``center``, a transposed CNN token view). oneDNN's
    products are tested against float64 in test_gram_onednn_products."""
    import seelike.cka

    monkeypatch.setattr(seelike.cka, "cpu_products", lambda: "blas")
    g = torch.Generator().manual_seed(n + d + chunk)
    z = torch.randn(n, d, generator=g)
    for x in (torch.relu(z), z + 300.0 * torch.randn(d, generator=g)):
        x = x.to(dtype)
        for center in (False, True, "auto"):
            assert torch.equal(gram(x, chunk_features=chunk, center=center),
                               _legacy_gram(x, chunk_features=chunk, center=center)), (dtype, center)
    tokens = torch.randn(n, 32, 4, 4, generator=g).to(dtype).flatten(2).transpose(1, 2)
    for center in (False, True, "auto"):
        assert torch.equal(gram(tokens, center=center), _legacy_gram(tokens, center=center)), center


@pytest.mark.parametrize("n,d,chunk", [(40, 3000, 1 << 16), (300, 2048, 1 << 16), (300, 2048, 600),
                                       (600, 1024, 1 << 16), (600, 1024, 500)])
def test_gram_into_out_is_the_same_gram(n, d, chunk, monkeypatch):
    """``gram(..., out=)`` writes into ``out`` (a row of the shard's results, for GramReducer) and returns
    it, with the same bits as without it and as the frozen earlier ``gram``: plain products, panels with
    the mirror in float32 (one chunk; n = 600 mirrors block by block in place) or of the float64 sum
    (several chunks), every ``center``, small and dominating offsets, float32, float16 and float64 input.
    A wrong ``out`` is refused before any product."""
    import seelike.cka

    monkeypatch.setattr(seelike.cka, "cpu_products", lambda: "blas")
    g = torch.Generator().manual_seed(n + d)
    z = torch.randn(n, d, generator=g)
    for x in (torch.relu(z), z + 300.0 * torch.randn(d, generator=g)):
        for dtype in (torch.float32, torch.float16, torch.float64):
            xd = x.to(dtype)
            for center in (False, True, "auto"):
                want = gram(xd, chunk_features=chunk, center=center)
                out = torch.full((n, n), float("nan"), dtype=torch.float64)
                got = gram(xd, chunk_features=chunk, center=center, out=out)
                assert got.data_ptr() == out.data_ptr() and torch.equal(got, want), (dtype, center)
                if dtype != torch.float64:
                    assert torch.equal(got, _legacy_gram(xd, chunk_features=chunk, center=center)), (dtype, center)
    for bad in (torch.empty(n, n), torch.empty(n, n + 1, dtype=torch.float64), torch.empty(n - 1, n - 1, dtype=torch.float64)):
        with pytest.raises(ValueError, match="out must be a float64"):
            gram(z, out=bad)


def _ref_centred_gram64(x: np.ndarray) -> np.ndarray:
    """X_c X_c^T of the features centred over the examples, all in float64 (numpy)."""
    a = x.reshape(len(x), -1)
    a = a - a.mean(axis=0)
    return a @ a.T


def _ref_cka64(kc: np.ndarray, lc: np.ndarray) -> float:
    """Biased linear CKA of two centred float64 Grams: <Kc, Lc> / (||Kc|| ||Lc||)."""
    return float((kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc)))


def _rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def test_float64_features_with_a_large_offset_give_float64_accurate_cka():
    """Features with a common offset of 1e4 and a spread of 0.01 about it: casting float64 to float32
    before centring left the spread to ~1e-3 of a float32 ulp of the offset (CKA off by ~2e-3); they
    are centred in float64 first, so CKA agrees with the float64 reference to < 1e-6."""
    rng = np.random.default_rng(31)
    n, d = 64, 300
    z = rng.standard_normal((n, d))
    w = np.tanh(z @ rng.standard_normal((d, d)) / np.sqrt(d)) + 0.5 * rng.standard_normal((n, d))
    feats = [1e4 + 0.01 * z, 1e4 + 0.01 * w, -3e4 + 0.01 * rng.standard_normal((n, 2, d // 2))]
    refs = [_ref_centred_gram64(f) for f in feats]
    want = np.array([[_ref_cka64(a, b) for b in refs] for a in refs])
    assert 0.05 < want[0, 1] < 0.95                       # premise: a CKA that is neither 0 nor 1
    for center in (True, "auto"):
        for f, r in zip(feats, refs):
            assert _rel_err(gram(torch.from_numpy(f), center=center).numpy(), r) <= 1e-6, center
        res = cka_all_pairs_from_features([torch.from_numpy(f) for f in feats], estimator="biased", center=center)
        assert np.abs(res.cka - want).max() < 1e-6, (center, np.abs(res.cka - want).max())
        # unbiased estimator against the Song et al. reference on the float64 Grams
        h = ref_all_pairs(refs, ref_hsic_unbiased)
        want_u = h / np.sqrt(np.outer(np.diag(h), np.diag(h)))
        res = cka_all_pairs_from_features([torch.from_numpy(f) for f in feats], center=center)
        assert np.abs(res.cka - want_u).max() < 1e-6, (center, np.abs(res.cka - want_u).max())


@pytest.mark.parametrize("scale", [1e20, 1e-30, 1e60, 1e-60])
def test_float64_features_outside_float32_range(scale):
    """float64 features whose values (or whose products) lie outside float32's range: ~1e20 used to
    overflow the float32 products ("non-finite values in the Gram matrices"), ~1e-30 to underflow them
    (a "constant layer"). Each chunk is scaled by a power of two into float32's range and its Gram
    scaled back in float64: Gram values and CKA as the float64 reference, for every ``center``."""
    rng = np.random.default_rng(int(abs(np.log10(scale))))
    n, d = 24, 200
    z = rng.standard_normal((n, d))
    feats = [scale * z, scale * (z[:, :50] @ rng.standard_normal((50, 80)) + rng.standard_normal((n, 80)) + 2.0)]
    for f in feats:
        x = torch.from_numpy(f)
        want = f @ f.T
        for chunk in (1 << 16, 64):
            got = gram(x, chunk_features=chunk).numpy()
            assert np.isfinite(got).all() and _rel_err(got, want) <= 1e-6, chunk
            for center in (True, "auto"):
                got = gram(x, chunk_features=chunk, center=center).numpy()
                assert _rel_err(got, _ref_centred_gram64(f)) <= 1e-6, (chunk, center)
    wide = scale * (rng.standard_normal((260, 600)) + 1.0)       # the panel path (n >= 256, d >= 512)
    assert _rel_err(gram(torch.from_numpy(wide)).numpy(), wide @ wide.T) <= 1e-6
    assert _rel_err(gram(torch.from_numpy(wide), center=True).numpy(), _ref_centred_gram64(wide)) <= 1e-6
    refs = [_ref_centred_gram64(f) for f in feats]
    want = _ref_cka64(*refs)
    for center in (False, True, "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                 # no "constant layer" warning
            res = cka_all_pairs_from_features([torch.from_numpy(f) for f in feats], estimator="biased", center=center)
        assert (res.status == "ok").all() and abs(res.cka[0, 1] - want) < 1e-6, center


@pytest.mark.parametrize("seed", range(4))
def test_float64_gram_matches_float64_reference_on_random_inputs(seed):
    """Random float64 features (random n, shapes, offsets, scales, chunk sizes; plain and panel paths,
    mixed magnitudes across features): the Gram is the float64 reference to float32-product accuracy."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.choice([5, 33, 260]))
    shape = (n,) + tuple(int(s) for s in rng.integers(2, 40, size=int(rng.integers(1, 3))))
    scale = 10.0 ** rng.uniform(-35, 35)
    f = scale * (rng.standard_normal(shape) * 10.0 ** rng.uniform(-2, 2, size=shape[1:])
                 + rng.uniform(-5, 5) * rng.standard_normal(shape[1:]))
    x = torch.from_numpy(f)
    chunk = int(rng.choice([7, 600, 1 << 16]))
    a = f.reshape(n, -1)
    assert _rel_err(gram(x, chunk_features=chunk).numpy(), a @ a.T) <= 1e-6
    for center in (True, "auto"):
        got = gram(x, chunk_features=chunk, center=center).numpy()
        assert _rel_err(got, _ref_centred_gram64(f)) <= 1e-6, center


def test_float64_gram_beyond_float64_range_raises():
    """Features whose Gram overflows even float64 (values ~1e200) are refused with a ValueError that
    says so, not handed on as infinities."""
    x = torch.full((4, 10), 1e200, dtype=torch.float64) * torch.arange(1.0, 5.0, dtype=torch.float64)[:, None]
    for center in (False, True, "auto"):
        with pytest.raises(ValueError, match="exceeds float64's range"):
            gram(x, center=center)


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_tf32_gram_precision_takes_centred_grams(offset):
    """gram(precision="tf32") always centres the features first (TF32 rounding would lose an
    offset-dominated spread); on a CPU its products are float32, so it equals gram(center=True) bit for
    bit, and agrees with an independent float64 centred Gram, adversarial offset included."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, 40, 25, generator=g) * torch.exp(torch.randn(25, generator=g)) + offset
    k = gram(x, center="auto", precision="tf32")
    assert torch.equal(k, gram(x, center=True))
    f = x.reshape(300, -1).to(torch.float64)
    f = f - f.mean(dim=0)
    ref = (f @ f.T).numpy()
    err = np.abs(k.numpy() - ref).max() / np.abs(ref).max()
    assert err < 2e-6, err        # float32 products of 1000 features (measured: 3e-7 at both offsets)
    with pytest.raises(ValueError, match=r"extraction\.gram_precision"):
        gram(x, precision="bf16")

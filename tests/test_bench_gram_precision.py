"""benchmarks/bench_gram_precision.py emulates TF32 and bf16 matmul inputs by rounding float32 mantissas;
the rounding is checked against an independent float64 construction on random and adversarial values."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_gram_precision import round_mantissa  # noqa: E402


def reference(x: np.ndarray, bits: int) -> np.ndarray:
    """x (normal float32 values) rounded to `bits` explicit mantissa bits, to nearest with ties away from
    zero, in float64: x = m 2^e with 0.5 <= |m| < 1 has bits + 1 significant bits after the point."""
    m, e = np.frexp(x.astype(np.float64))
    q = np.ldexp(m, bits + 1)
    r = np.sign(q) * np.floor(np.abs(q) + 0.5)
    return np.ldexp(r, e - bits - 1)


@pytest.mark.parametrize("bits", [23, 10, 7])
def test_round_mantissa_matches_a_float64_reference(bits):
    rng = np.random.default_rng(bits)
    x = np.concatenate([
        rng.standard_normal(20000) * np.exp(rng.uniform(-30, 30, 20000)),          # random magnitudes
        [1.0, -1.0, 3.0, 0.1, -0.1, 1e-30, 3.0e38, -3.0e38],
    ]).astype(np.float32)
    if bits < 23:   # exact ties: the first dropped bit set, the rest clear, either sign
        ties = (np.arange(1, 2001, dtype=np.int64) << (23 - bits)) | (1 << (22 - bits)) | (127 << 23)
        tie_values = ties.astype(np.int32).view(np.float32)
        x = np.concatenate([x, tie_values, -tie_values])
    got = round_mantissa(torch.from_numpy(x), bits).numpy().astype(np.float64)
    ref = reference(x, bits)
    finite = np.isfinite(ref) & (np.abs(ref) <= np.finfo(np.float32).max)
    np.testing.assert_array_equal(got[finite], ref[finite])
    assert np.isinf(got[~finite]).all()    # rounding past float32's largest value overflows, as in hardware
    if bits < 23:
        assert (np.abs(got[-4000:]) > np.abs(x[-4000:])).all()          # every tie went away from zero

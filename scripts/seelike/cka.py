"""Linear CKA: Gram matrices, HSIC of every layer pair at once, and the minibatch estimator.

Numerics only (numpy + torch); no files.

Definitions (n examples in a minibatch, X the flattened per-example features of one layer):

* Gram ``K = X X^T`` (n, n). For token/spatial activations (n, t, d) this equals the sum of
  the per-position Grams; :func:`gram` computes it in float32 matrix products over feature
  chunks that are summed in float64 (float16 overflows in Gram matrices, one float32 sum over
  ~200k features loses digits); float64 features are centred in float64 and scaled by a power of
  two into float32's range before the cast.
* Unbiased HSIC (Song et al. 2012), via U-centring: zero the diagonal of K, then
  ``Ku_ij = K_ij - r_i/(n-2) - c_j/(n-2) + s/((n-1)(n-2))`` off the diagonal (r, c row and
  column sums, s the total of the zero-diagonal K), diagonal 0;
  ``HSIC_1(K, L) = <Ku, Lu>_F / (n (n-3))``. Needs n >= 4.
* Biased HSIC (Gretton et al. 2005): ``HSIC_0(K, L) = tr(K H L H) / (n-1)^2 = <HKH, HLH>_F / (n-1)^2``.
  Needs n >= 2.
* All pairs at once: the centred Grams, flattened, are the rows of G (L, n^2); ``G G^T`` holds
  the (unnormalised) HSIC of every pair. :func:`hsic_all_pairs` never materialises G: by symmetry
  ``<Kc, Lc> = 2 sum_{i>j} Kc_ij Lc_ij + sum_i Kc_ii Lc_ii``, so it centres only the strict lower
  triangle, a block of rows of every layer at a time, and accumulates ``G_blk G_blk^T``; the
  extra memory is ~16 MiB however large L and n are, and the Grams are read twice (row sums,
  then blocks).
* Minibatch CKA (Nguyen, Raghu, Kornblith 2021): per-minibatch HSIC matrices are averaged in
  float64, ``CKA_ij = mean_b HSIC_ij / sqrt(mean_b HSIC_ii * mean_b HSIC_jj)``. With one
  minibatch holding every example and the biased estimator this is the full-batch CKA of
  Kornblith et al. 2019.

Both estimators are invariant to shifting the features by a constant vector (U-centring and
double centring annihilate the terms ``a_i + a_j + c`` that a shift adds to K), so
``gram(x, center=True)`` -- the Gram of the features centred over the minibatch -- gives the
same HSIC in exact arithmetic and fewer rounding errors when the activations have large means.
``gram(x, center="auto")`` (what extraction stores) returns the same centred Gram at the cost of
an uncentred one: it centres the float64 Gram, reads the mean's share off it, and recomputes from
centred features only where the offset would cost float32 accuracy (see :data:`OFFSET_LIMIT`).

Self-HSIC is ``||Kc||^2 >= 0`` for both estimators in this form, so a non-positive accumulated
self-HSIC means a zero centred Gram (a layer constant over every minibatch; centred Grams at
rounding level are set to exactly 0 rather than passed on as noise) or HSIC values computed
elsewhere; :func:`cka_from_minibatch_hsic` reports it per pair and warns, never taking the square
root of a negative number.

Cross-model CKA: stack model A's and model B's Grams of the same minibatch into one
(La + Lb, n, n) array, call :func:`hsic_all_pairs`, and keep the off-diagonal block of
:func:`cka_from_minibatch_hsic`'s result.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .runtime import gram_matmul

ESTIMATORS = ("unbiased", "biased")
MIN_EXAMPLES = {"unbiased": 4, "biased": 2}

# ||centred Gram||_F <= _NULL_TOL * (scale of the Gram) counts as a zero centred Gram (rounding: ~1e-15).
_NULL_TOL = 1e-12

# float64 values of all layers' centred Gram rows per block in hsic_all_pairs (16 MiB)
_HSIC_BLOCK_VALUES = 1 << 21

OK = "ok"
NONPOSITIVE_SELF_HSIC = "nonpositive_self_hsic"

__all__ = [
    "ESTIMATORS", "MIN_EXAMPLES", "CKAResult", "NegativeHSICWarning", "gram", "cpu_products", "u_center",
    "double_center", "hsic_all_pairs", "cka_from_minibatch_hsic", "hsic_from_features", "cka_all_pairs_from_features",
    "student_t_quantile",
]


class NegativeHSICWarning(UserWarning):
    """The accumulated self-HSIC of a layer is <= 0, so CKA involving that layer is undefined."""


# --------------------------------------------------------------------------------------------
# Gram matrices
# --------------------------------------------------------------------------------------------

def gram_panels(n: int, d: int, device: torch.device) -> int:
    """Row-panel height for the lower-block-triangle Gram on CPU, 0 for one plain matmul.

    Row panel [p, q) is ``X[p:q] @ X[:q].T``, written straight into the output: with k panels
    (k + 1) / 2k of the multiply-adds of ``X X^T`` are done (2: 3/4, 4: 5/8, 8: 9/16), in matmuls
    still large enough to run at full BLAS speed; the lower triangle is then mirrored block by block.
    More panels save more multiply-adds but make each matmul smaller, so the panel count grows with n
    (2 below n = 512, 4 below 1024, 8 from 1024: a panel keeps at least 128 rows). Below n = 256 or
    d = 512 a Gram is too small for the saving to outweigh the extra calls, and GPUs run one matmul.
    benchmarks/bench_cka.py (n = 1024) and benchmarks/bench_extract.py (the Grams of extraction at
    b = 256) measure it.
    """
    if device.type != "cpu" or n < 256 or d < 512:
        return 0
    return -(-n // (2 if n < 512 else 4 if n < 1024 else 8))


@functools.lru_cache(maxsize=1)
def cpu_products() -> str:
    """What multiplies the Grams' float32 chunks on the CPU: "onednn" or "blas".

    "onednn": oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, ``a @ b.T`` of dense
    row-major operands), used on CPUs with AVX-512 (torch's ``get_cpu_capability()``) where this
    torch has it and a trial product on this CPU agrees with a float64 one (checked once per
    process). On the AVX-512 AMD EPYC VMs of benchmarks/README.md it runs the Grams' shapes (256 rows,
    thousands of features) at 2.1-2.3x the speed of torch's BLAS matmul, where MKL takes a slower
    code path than oneDNN's own kernels, at full float32 precision: float32 products with float32
    accumulation, like BLAS (CKA error against float64 in tests/test_cka.py). Strided operands are
    slow there, so :func:`gram` hands it contiguous chunks only.
    "blas": ``torch.mm`` (MKL / OpenBLAS) everywhere else. On an AVX2 EPYC (Zen 3) oneDNN's products
    were 2-15% slower than MKL's (256 x 65536: 144 against 170 GF/s) and their largest error 2-5x
    BLAS's (1.5e-6 against 3e-7 of the largest entry of a 1030 x 800 Gram), so a CPU without AVX-512
    keeps BLAS.
    """
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return "blas"
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return "blas"
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(24, 96, generator=gen)
        with torch.no_grad(), gram_matmul("fp32", "cpu"):
            got = op(a, a, None, "none", [], "").to(torch.float64)
        ref = a.to(torch.float64) @ a.to(torch.float64).T
        ok = got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
        return "onednn" if ok else "blas"
    except Exception:   # an op missing or refused by this build: BLAS
        return "blas"


def _product(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 ``a @ b.T`` (into ``out`` when given): oneDNN for contiguous CPU operands where
    :func:`cpu_products` says so, else ``torch.mm``. Called inside :func:`gram_matmul`."""
    if (a.device.type == "cpu" and a.is_contiguous() and b.is_contiguous()
            and cpu_products() == "onednn"):
        r = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        return r if out is None else out.copy_(r)
    return torch.mm(a, b.T) if out is None else torch.mm(a, b.T, out=out)


@functools.lru_cache(maxsize=4)
def _lower_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril_()


def flat_features(x: torch.Tensor) -> torch.Tensor:
    """(n, features) view of the per-example features of ``x`` (n, ...), without a copy when ``x`` is a
    permuted view of dense memory (the (n, h*w, c) token view of an NCHW feature map). The features come
    in memory order, not in the order of the dims: whatever is computed from them must not depend on the
    feature order (Grams, norms, finiteness do not)."""
    n = x.shape[0]
    if x.is_contiguous() or x.dim() < 3:
        return x.reshape(n, -1)
    y = x.permute(0, *sorted(range(1, x.dim()), key=lambda i: -x.stride(i)))
    return (y if y.is_contiguous() else x).reshape(n, -1)


#: ``gram(center="auto")`` recomputes a Gram from centred features when the features' mean carries
#: more than OFFSET_LIMIT times the energy of their spread about it (n ||mean||^2 >
#: OFFSET_LIMIT sum_i ||x_i - mean||^2): float32 products then lose the centred signal to the offset.
#: The CKA error of uncentred float32 Grams against float64 grows with that ratio (n = 256, 6 layers
#: of anisotropic features, d = 2048 and 8192, 3 seeds; largest error with oneDNN / BLAS products:
#: 5.5e-7 / 4.2e-7 at ratio 4, 1.8e-6 / 6.8e-7 at 6, 1.9e-6 / 8.9e-7 at 8, 2.5e-6 / 1.2e-6 at 10;
#: ~1e-8 from centred features at every ratio), so 4 keeps CKA within the 1e-6 goal; post-ReLU
#: features sit near 0.5 and are never centred. benchmarks/bench_cka.py compares both against a
#: float64 reference.
OFFSET_LIMIT = 4.0


def gram(x: torch.Tensor, chunk_features: int = 1 << 16, center: bool | str = False,
         precision: str = "fp32", offset_estimate: float | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, n) float64 Gram ``X X^T`` of the flattened per-example features of ``x``.

    x: (n, ...) tensor of any floating dtype (float16 / bfloat16 included) on any device.
    Features are processed ``chunk_features`` at a time: each chunk is cast to float32, multiplied
    in float32 at full precision (TF32 and any enclosing autocast are switched off for the call)
    and the chunk Grams are summed in float64. ``precision`` "tf32" multiplies in TF32 instead on
    CUDA GPUs that have it (:data:`seelike.runtime.GRAM_PRECISIONS`; config key
    ``extraction.gram_precision``, whose CKA error config/README.md documents), and always of centred
    features (``center`` "auto" becomes True): TF32 keeps 10 of float32's 23 mantissa bits, so a
    feature whose offset outweighs its spread would lose the spread to rounding (CKA error 1.2e-5 at
    an offset 15x the spread and b = 64, against 3.6e-6 centred; benchmarks/bench_gram_precision.py).

    ``center``: False, the Gram ``K = X X^T``; True, the Gram of the minibatch-centred features,
    ``H K H``, with each feature's mean subtracted before the products (one more pass over the
    features); "auto", the same ``H K H`` centred in float64 from ``K`` -- unless the features'
    mean outweighs their spread by more than :data:`OFFSET_LIMIT` (read off ``K``: ``sum(K) / n``
    against ``trace(K)``), where float32 products of uncentred features lose the signal and the
    Gram is recomputed from centred features. A sample of the features is read first: where its
    ratio exceeds the limit (the block outputs of a random-weight ResNet-50 on
    benchmarks/bench_taps.py's images sit at 6-7), the features are centred before the only
    product. ``offset_estimate``: that sample's ratio when the caller has it already
    (:func:`offset_ratio_estimate`), or a stand-in for it -- 0 goes straight to the uncentred product
    and its exact check, which is what a layer far below the limit gets anyway (GramReducer, for the
    minibatches after a layer's first); None reads the sample here. CKA with either estimator is the
    same for ``K`` and ``H K H`` in exact arithmetic. Returns a tensor on the device of ``x``: ``out``
    when given, a float64 (n, n) tensor there that the Gram is written into (GramReducer hands it the
    row of the shard's results that the Gram goes to, so the Gram is not copied there afterwards);
    the values are the same either way.

    float64 input is handled in float64 up to the cast: each chunk is centred there (``center`` True
    or "auto": float64 features are always centred before the cast, so an offset costs nothing and
    "auto" needs no uncentred pass), then scaled by a power of two that brings its largest magnitude
    into [0.5, 1) -- so that the float32 products neither overflow (values ~1e20) nor underflow
    (~1e-30) -- and its float32 Gram is scaled back exactly in float64. A Gram beyond float64's own
    range raises ValueError. float32 and narrower input (what extraction stores) takes the float32
    path described above, unchanged.
    """
    if center not in (True, False, "auto"):
        raise ValueError(f"gram: center must be True, False or 'auto', got {center!r}")
    if precision == "tf32" and center == "auto":
        center = True       # rounding to TF32 would lose an offset-dominated feature's spread
    if center == "auto" and isinstance(x, torch.Tensor) and x.dtype == torch.float64:
        center = True       # centring float64 chunks before the cast is as cheap as not centring them
    if center == "auto" and (offset_ratio_estimate(x) if offset_estimate is None else offset_estimate) > OFFSET_LIMIT:
        center = True       # offset-dominated: centre before the only product, not after a first one
    if out is not None and (out.dtype != torch.float64 or out.device != x.device
                            or tuple(out.shape) != (x.shape[0], x.shape[0])):
        raise ValueError(f"gram: out must be a float64 ({x.shape[0]}, {x.shape[0]}) tensor on {x.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    if center == "auto":
        k = _gram(x, chunk_features, False, precision, out)
        rows = k.sum(dim=1)
        # sum(K) = ||sum_i x_i||^2 = n^2 ||mean||^2 and trace(K) = sum_i ||x_i||^2; compared without
        # their difference, which cancels exactly when the offset dominates
        offset = float(rows.sum()) / k.shape[0]
        if offset * (1.0 + OFFSET_LIMIT) <= OFFSET_LIMIT * float(k.diagonal().sum()):
            return _centre_(k, rows)
    elif not center:
        return _gram(x, chunk_features, False, precision, out)
    # the float32 mean leaves a residual offset (terms a_i + a_j in the Gram): centring in float64
    # removes it, so that True and "auto" both return H K H
    k = _gram(x, chunk_features, True, precision, out)
    return _centre_(k, k.sum(dim=1))


#: Columns :func:`offset_ratio_estimate` reads: this many runs of _ESTIMATE_RUN contiguous features,
#: spread evenly over the features.
_ESTIMATE_RUNS, _ESTIMATE_RUN = 8, 64


def offset_ratio_estimate(x) -> float:
    """``n ||mean||^2 / sum_i ||x_i - mean||^2`` of a sample of the features of ``x`` (n, ...), in
    float64: runs of contiguous features spread over all of them, so that a layer whose offset
    dominates is centred before its only product. A sample that misjudges costs time, never
    accuracy: below :data:`OFFSET_LIMIT` "auto" still reads the exact ratio off the uncentred Gram,
    and above it the Gram of centred features is the more accurate one anyway. 0 for input
    that :func:`_gram` will reject or that has fewer than 2 examples."""
    if (not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 2 or not x.is_floating_point()
            or x[0].numel() == 0):
        return 0.0
    flat = flat_features(x)
    n, d = flat.shape
    if d <= _ESTIMATE_RUNS * _ESTIMATE_RUN:
        cols = flat
    else:
        starts = [round(i * (d - _ESTIMATE_RUN) / (_ESTIMATE_RUNS - 1)) for i in range(_ESTIMATE_RUNS)]
        cols = torch.cat([flat[:, s:s + _ESTIMATE_RUN] for s in starts], dim=1)
    with torch.no_grad():
        c = cols.to(torch.float64)
        mean = c.mean(dim=0)
        spread = float((c - mean).pow(2).sum())
        offset = float(mean.pow(2).sum()) * n
    if not (math.isfinite(spread) and math.isfinite(offset)):
        return 0.0          # NaN / Inf: the exact path decides (and propagates them)
    if spread == 0.0:
        return math.inf if offset > 0.0 else 0.0
    return offset / spread


def _centre_(k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``H K H`` of a symmetric float64 ``K`` with row sums ``rows``, in place, as
    ``K_ij - (a_i + a_j)`` with ``a = rowmean - mean / 2``: exactly symmetric, as the HSIC functions
    require."""
    n = k.shape[0]
    a = rows / n - rows.sum() / (2 * n * n)
    return k.sub_(a[:, None] + a[None, :])


def _gram(x: torch.Tensor, chunk_features: int, center: bool, precision: str = "fp32",
          dest: torch.Tensor | None = None) -> torch.Tensor:
    """The Gram (float64, into ``dest`` when given) of ``x``'s features, centred first if ``center``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gram: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"gram: expected an (n, ...) tensor with n >= 1 examples, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"gram: expected real features, got dtype {x.dtype}")
    if int(chunk_features) < 1:
        raise ValueError(f"gram: chunk_features must be >= 1, got {chunk_features}")
    n = x.shape[0]
    flat = flat_features(x)   # no copy of a transposed CNN token view: the Gram ignores feature order
    d = flat.shape[1]
    if d == 0:
        raise ValueError(f"gram: the examples have no features (shape {tuple(x.shape)})")
    chunk = int(chunk_features)
    wide = flat.dtype == torch.float64      # more range and precision than the float32 products
    finite = True                           # every float64 chunk finite (wide only)
    # oneDNN's products (cpu_products) want contiguous operands: a column chunk of wider features,
    # or a strided view, is copied into the staging buffer first (a copy costs far less than the
    # strided product)
    strided = (x.device.type == "cpu" and cpu_products() == "onednn"
               and (d > chunk or not flat.is_contiguous()))
    staged = center or flat.dtype != torch.float32 or strided
    if staged:
        # cast / centre each chunk into one reused float32 staging buffer of <= 64 MiB (a fresh
        # copy of a large chunk per call costs more in page faults than the arithmetic); each
        # chunk's view of it is contiguous
        chunk = min(chunk, max(512, (1 << 24) // n))
        stage = torch.empty(n * min(chunk, d), dtype=torch.float32, device=x.device)
    b = gram_panels(n, min(d, chunk), x.device)
    single = d <= chunk
    # With panels a float32 buffer receives the lower block triangle of each chunk's Gram and is
    # added to the float64 sum as a whole; the sum's upper triangle (never written: whatever the
    # buffer held) is overwritten by the mirror of the lower one at the end -- or, when the features
    # are one chunk, the buffer's before it is cast.
    buf = torch.empty(n, n, dtype=torch.float32, device=x.device) if b else None
    out = None
    with torch.no_grad(), gram_matmul(precision, x.device):
        for s in range(0, d, chunk):
            c = flat[:, s:s + chunk]
            shift = 0
            if staged:
                st = stage[:n * c.shape[1]].view(n, c.shape[1])
                if wide:
                    shift = _stage_float64_(c, st, center)
                    finite = finite and shift is not None
                    shift = shift or 0
                elif center and c.dtype == torch.float32:
                    torch.sub(c, c.mean(dim=0), out=st)
                else:
                    st.copy_(c)
                    if center:
                        # a float32 mean is enough: a residual offset adds a_i + a_j + const to
                        # the Gram, which both HSIC estimators ignore
                        st.sub_(st.mean(dim=0))
                c = st
            else:
                c = c.to(torch.float32)
            if b:
                for p in range(0, n, b):
                    q = min(n, p + b)
                    _product(c[p:q], c[:q], out=buf[p:q, :q])
                # one chunk: its lower triangle mirrored here, in float32 (half the bytes of mirroring
                # the float64 sum; the same values, which the cast keeps exactly)
                part = _symmetric_from_lower(buf, b) if single else buf
            else:
                part = _product(c, c)
            if shift:
                # the chunk was multiplied by 2**shift: its Gram by 4**shift, undone exactly in float64
                part = _ldexp_(part.to(torch.float64), -2 * shift)
            if out is None:
                out = part.to(torch.float64) if dest is None else dest.copy_(part)
            else:
                out += part
        if b and not single:
            out = _symmetric_from_lower(out, b)
            if dest is not None and out is not dest:
                out = dest.copy_(out)
    if wide and finite and not bool(torch.isfinite(out).all()):
        raise ValueError(f"gram: the Gram of these float64 features exceeds float64's range "
                         f"(largest |value| {float(flat.abs().amax()):.3g}); rescale them")
    return out


# A chunk of float64 features is scaled by 2**shift with |shift| <= _MAX_SHIFT (2**1000 is a float).
_MAX_SHIFT = 1000


def _stage_float64_(c: torch.Tensor, st: torch.Tensor, center: bool) -> int | None:
    """Write the float64 chunk ``c`` into the float32 ``st``: centred over the examples in float64
    (``center``), then multiplied by ``2**shift`` so that its largest magnitude lies in [0.5, 1) --
    float32 products of such values neither overflow nor underflow (beyond values negligible next
    to the largest) -- and cast. Returns ``shift``; None (and no scaling) for a chunk that is not
    finite, whose NaN/Inf must reach the Gram."""
    if center:
        c = c - c.mean(dim=0)
    lo, hi = (float(v) for v in torch.aminmax(c))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        st.copy_(c)
        return None
    top = max(-lo, hi)
    shift = 0 if top == 0.0 else min(_MAX_SHIFT, max(-_MAX_SHIFT, -math.frexp(top)[1]))
    if shift:
        c = c.mul_(2.0 ** shift) if center else c * 2.0 ** shift   # a power of two: exact in float64
    st.copy_(c)
    return shift


def _ldexp_(t: torch.Tensor, e: int) -> torch.Tensor:
    """``t * 2**e`` in place for float64 ``t``, in steps whose factors are floats (|e| may exceed 1023);
    exact unless the result leaves float64's range."""
    while e:
        step = max(-_MAX_SHIFT, min(_MAX_SHIFT, e))
        t.mul_(2.0 ** step)
        e -= step
    return t


def _symmetric_from_lower(k: torch.Tensor, b: int) -> torch.Tensor:
    """``k`` with its strict upper triangle replaced by the mirror of its lower one: up to n = 512 one
    ``where`` over the whole matrix into a new tensor (at n = 256 on 2 cores 59 us against 134 us for
    the block-by-block copies, whose small ops cost more than their bytes), above it
    :func:`_mirror_lower` in place. Exactly the same values either way."""
    n = k.shape[0]
    if n <= 512:
        return torch.where(_lower_mask(n), k, k.T)
    _mirror_lower(k, b)
    return k


def _mirror_lower(k: torch.Tensor, b: int) -> None:
    """Overwrite the strict upper triangle of the square ``k`` with its lower one, in place: exactly
    symmetric. Block by block (a transposed copy per off-diagonal panel, a ``where`` on each
    diagonal block) instead of one ``where`` over the whole matrix: the blocks stay in cache and no
    n x n mask or temporary is made, which matters next to a Gram at small d (see
    benchmarks/bench_cka.py)."""
    n = k.shape[0]
    for p in range(0, n, b):
        q = min(n, p + b)
        k[:p, p:q].copy_(k[p:q, :p].T)
        d = k[p:q, p:q]
        d.copy_(torch.where(_lower_mask(b)[:q - p, :q - p], d, d.T))


# --------------------------------------------------------------------------------------------
# Centring
# --------------------------------------------------------------------------------------------

def _as_square_stack(k, what: str) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.ndim < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"{what}: expected (..., n, n) square matrices, got shape {k.shape}")
    return k


def u_center(k: np.ndarray) -> np.ndarray:
    """U-centred copy of the (..., n, n) matrices ``k`` (Song et al. 2012), zero diagonal, float64.

    ``<u_center(K), u_center(L)>_F / (n (n-3))`` is the unbiased HSIC. Needs n >= 3 (the inner
    product needs n >= 4).
    """
    k = _as_square_stack(k, "u_center").copy()
    n = k.shape[-1]
    if n < 3:
        raise ValueError(f"u_center: needs n >= 3 examples (U-centring divides by n - 2), got n = {n}")
    diag = np.einsum("...ii->...i", k)  # writable view
    diag[...] = 0.0
    row = k.sum(axis=-1)
    col = k.sum(axis=-2)
    tot = row.sum(axis=-1)
    k -= row[..., :, None] / (n - 2)
    k -= col[..., None, :] / (n - 2)
    k += (tot / ((n - 1) * (n - 2)))[..., None, None]
    diag[...] = 0.0
    return k


def double_center(k: np.ndarray) -> np.ndarray:
    """``H K H`` for the (..., n, n) matrices ``k`` (H = I - 11^T/n), float64 copy."""
    k = _as_square_stack(k, "double_center").copy()
    if k.shape[-1] < 1:
        raise ValueError("double_center: empty matrices")
    row = k.mean(axis=-1)
    col = k.mean(axis=-2)
    tot = row.mean(axis=-1)
    k -= row[..., :, None]
    k -= col[..., None, :]
    k += tot[..., None, None]
    return k


# --------------------------------------------------------------------------------------------
# HSIC of every pair
# --------------------------------------------------------------------------------------------

def _check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown HSIC estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    return estimator


def _check_symmetric(k: torch.Tensor, rows: int = 16) -> None:
    """Cheap guard: Grams must be symmetric. Compares `rows` whole rows, spread evenly over the
    matrix, with the matching columns -- as many entry pairs as a random sample of 4096 at n = 256,
    but every column is visited and contiguous rows are read rather than scattered entries, which
    keeps the check cheap next to the HSIC that a CKA table computes once per minibatch (see
    benchmarks/bench_cka.py)."""
    n = k.shape[1]
    idx = torch.unique(torch.linspace(0, n - 1, min(rows, n), dtype=torch.float64).round().long())
    r, c = k.index_select(1, idx), k.index_select(2, idx).transpose(1, 2)
    scale = torch.maximum(r.abs().amax(dim=(1, 2)), k.diagonal(dim1=-2, dim2=-1).abs().amax(dim=1))
    bad = ((r - c).abs().amax(dim=(1, 2)) > 1e-6 * scale).numpy()   # NaN compares False: caught later
    if bad.any():
        raise ValueError(f"hsic_all_pairs: the Gram matrices of layer indices {np.flatnonzero(bad).tolist()} "
                         "are not symmetric")


def hsic_all_pairs(grams: np.ndarray, estimator: str = "unbiased") -> np.ndarray:
    """(L, L) float64 HSIC of every pair of the (L, n, n) Grams of one minibatch.

    ``estimator``: "unbiased" (Song et al. 2012; n >= 4) or "biased" (``tr(KHLH)/(n-1)^2``; n >= 2).
    Every pair comes from one accumulated product ``G G^T`` of the flattened centred Grams,
    formed a block of rows at a time from the lower triangle (float64 throughout); the Grams must
    be symmetric (checked on 16 rows against their columns) and are not modified. Raises ValueError for a
    bad shape, too few examples, an unknown estimator, non-symmetric or non-finite Grams.
    """
    _check_estimator(estimator)
    if isinstance(grams, torch.Tensor):
        grams = grams.detach().cpu().numpy()
    g = np.asarray(grams, dtype=np.float64)
    if g.ndim == 2:
        raise ValueError(f"hsic_all_pairs: expected a stack (L, n, n) of Grams, got one matrix of shape {g.shape}; "
                         "use grams[None]")
    if g.ndim != 3 or g.shape[1] != g.shape[2]:
        raise ValueError(f"hsic_all_pairs: expected (L, n, n) square Gram matrices, got shape {g.shape}")
    n_layers, n = g.shape[0], g.shape[1]
    need = MIN_EXAMPLES[estimator]
    if n < need:
        raise ValueError(f"hsic_all_pairs: the {estimator} HSIC estimator needs n >= {need} examples per minibatch, "
                         f"got n = {n}")
    if n_layers == 0:
        return np.zeros((0, 0))
    g = np.ascontiguousarray(g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # read-only arrays: k is never written
        k = torch.from_numpy(g)
    _check_symmetric(k)
    diag = k.diagonal(dim1=-2, dim2=-1)
    if estimator == "unbiased":
        row = k.sum(dim=-1) - diag                       # row sums of the zero-diagonal K
        half = (row.sum(dim=-1) / (2.0 * (n - 1) * (n - 2)))[:, None]
        a = row / (n - 2) - half                         # Ku_ij = K_ij - a_i - a_j  (i != j)
        cdiag = torch.zeros_like(diag)                   # U-centred diagonal: 0
        norm = n * (n - 3)
    else:
        row = k.mean(dim=-1)
        a = row - (row.mean(dim=-1) / 2.0)[:, None]      # (HKH)_ij = K_ij - a_i - a_j
        cdiag = diag - 2.0 * a
        norm = (n - 1) ** 2
    # <Kc, Lc> = 2 sum_{i>j} Kc_ij Lc_ij + sum_i Kc_ii Lc_ii: only the strict lower triangle is
    # centred, in blocks of rows [s, e) x columns [0, e) of ~2^21 float64 values (16 MiB) for all
    # layers: few enough operations that thread start-up does not dominate, small enough for cache.
    acc = torch.zeros(n_layers, n_layers, dtype=torch.float64)
    budget = _HSIC_BLOCK_VALUES / n_layers
    s = 0
    while s < n:
        rows = max(8, int((math.sqrt(s * s + 4.0 * budget) - s) / 2))   # rows * (s + rows) ~ budget
        e = min(n, s + rows)
        blk = k[:, s:e, :e] - a[:, s:e, None]
        blk -= a[:, None, :e]
        sq = blk[:, :, s:]                               # the (e-s) x (e-s) block on the diagonal
        sq.masked_fill_(torch.ones(e - s, e - s, dtype=torch.bool).triu_(), 0.0)
        flat = blk.reshape(n_layers, -1)
        acc.addmm_(flat, flat.T, alpha=2.0)
        s = e
    acc.addmm_(cdiag, cdiag.T)
    out = acc.numpy()
    if not np.isfinite(out).all():
        bad = ~np.isfinite(np.diagonal(out))
        layers = np.flatnonzero(bad).tolist() or sorted(set(np.argwhere(~np.isfinite(out))[:, 0].tolist()))
        raise ValueError(f"hsic_all_pairs: non-finite values in the Gram matrices of layer indices {layers}")
    # A layer whose centred Gram is zero up to rounding (features constant over the minibatch)
    # has HSIC exactly 0 with everything: rounding noise must not pass for a (tiny) signal. The
    # scale (sqrt(n ||a||^2 + ||diag K||^2), of the order of ||K||_F) costs no extra pass.
    scale_sq = (n * (a ** 2).sum(dim=-1) + (diag ** 2).sum(dim=-1)).numpy()
    null = np.diagonal(out) <= (_NULL_TOL ** 2) * scale_sq
    out = out / norm
    if null.any():
        out[null, :] = 0.0
        out[:, null] = 0.0
    return out


# --------------------------------------------------------------------------------------------
# Minibatch CKA
# --------------------------------------------------------------------------------------------

@dataclass
class CKAResult:
    """Minibatch CKA of every layer pair.

    cka: (L, L) float64; NaN only where ``status != "ok"``.
    se: jackknife (leave-one-minibatch-out) standard error, (L, L); NaN with < 2 minibatches or
        where a leave-one-out estimate is undefined.
    batch_std: sample std (ddof = 1) over minibatches of the per-minibatch CKA, ignoring minibatches
        whose self-HSIC for the pair is <= 0; NaN with < 2 usable minibatches.
    status: (L, L) str array: "ok" or "nonpositive_self_hsic".
    n_minibatches: number of minibatches accumulated.
    """

    cka: np.ndarray
    se: np.ndarray
    batch_std: np.ndarray
    status: np.ndarray
    n_minibatches: int

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided ``level`` confidence interval ``cka -+ t * se`` with Student's t quantile for
        ``n_minibatches - 1`` degrees of freedom (the jackknife's): with the demo's 8 minibatches
        t = 2.36, not the normal 1.96, which would make the interval 17% too narrow."""
        if self.n_minibatches < 2:
            nan = np.full_like(self.cka, np.nan)
            return nan, nan.copy()
        t = student_t_quantile(0.5 + level / 2, self.n_minibatches - 1)
        return self.cka - t * self.se, self.cka + t * self.se


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile ``p`` (0.5 <= p < 1) of Student's t distribution with ``dof`` >= 1 degrees of freedom:
    bisection on the CDF, whose density is integrated by Simpson's rule on the substitution
    x = tan(u) (a bounded integrand for every dof). Accurate to ~1e-10; no SciPy needed."""
    if not 0.5 <= p < 1.0:
        raise ValueError(f"student_t_quantile: p must be in [0.5, 1), got {p}")
    if int(dof) != dof or dof < 1:
        raise ValueError(f"student_t_quantile: dof must be a positive integer, got {dof}")
    nu = float(dof)
    log_c = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)

    def cdf_above_half(t: float) -> float:                # P(0 < T < t)
        u = np.linspace(0.0, math.atan(t), 2049)
        x = np.tan(u)
        f = np.exp(log_c - (nu + 1) / 2 * np.log1p(x * x / nu)) * (1.0 + x * x)   # density * dx/du
        h = u[1] - u[0]
        return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, 1.0
    while cdf_above_half(hi) < p - 0.5:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf_above_half(mid) < p - 0.5 else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def _cka_from_mean_hsic(h: np.ndarray) -> np.ndarray:
    """CKA from (..., L, L) HSIC; NaN where a self-HSIC is <= 0 (never sqrt of a negative)."""
    d = np.diagonal(h, axis1=-2, axis2=-1)
    pos = d > 0
    root = np.sqrt(np.where(pos, d, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = h / (root[..., :, None] * root[..., None, :])
    return np.where(pos[..., :, None] & pos[..., None, :], c, np.nan)


def cka_from_minibatch_hsic(hsic: np.ndarray) -> CKAResult:
    """Minibatch CKA with its spread from (m, L, L) per-minibatch HSIC matrices (float64 sums).

    Where the accumulated self-HSIC of a layer is <= 0 (possible for the unbiased estimator on
    tiny minibatches) CKA is undefined: ``status`` says "nonpositive_self_hsic" for every pair
    involving that layer, ``cka`` is NaN there only, and a :class:`NegativeHSICWarning` names the
    layer indices.
    """
    h = np.asarray(hsic, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3 or h.shape[1] != h.shape[2]:
        raise ValueError(f"cka_from_minibatch_hsic: expected (m, L, L) HSIC matrices, got shape {np.shape(hsic)}")
    m, n_layers = h.shape[0], h.shape[1]
    if m < 1:
        raise ValueError("cka_from_minibatch_hsic: no minibatches")
    if not np.isfinite(h).all():
        where = sorted(set(np.argwhere(~np.isfinite(h))[:, 0].tolist()))
        raise ValueError(f"cka_from_minibatch_hsic: non-finite HSIC values in minibatches {where}")

    total = h.sum(axis=0)
    mean = total / m
    self_h = np.diagonal(mean).copy()
    good = self_h > 0
    ok = good[:, None] & good[None, :]
    status = np.where(ok, OK, NONPOSITIVE_SELF_HSIC).astype(object)
    cka = _cka_from_mean_hsic(mean)
    if not good.all():
        bad = np.flatnonzero(~good).tolist()
        vals = ", ".join(f"{i}: {self_h[i]:.3g}" for i in bad)
        warnings.warn(
            f"CKA undefined for rows/columns {bad}: accumulated self-HSIC <= 0 ({vals}) over {m} minibatch(es): "
            "the layer's centred Gram is zero (features constant over the examples) or the estimate is "
            "too noisy (use larger minibatches); status 'nonpositive_self_hsic', value NaN",
            NegativeHSICWarning, stacklevel=2)

    # Spread of the per-minibatch CKA (NaN where that minibatch's self-HSIC is <= 0).
    per_batch = _cka_from_mean_hsic(h)
    usable = np.isfinite(per_batch).sum(axis=0)
    batch_std = np.full((n_layers, n_layers), np.nan)
    sel = usable >= 2
    if sel.any():
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            std = np.nanstd(per_batch, axis=0, ddof=1)
        batch_std[sel] = std[sel]

    # Jackknife over minibatches: leave each one out of the mean.
    se = np.full((n_layers, n_layers), np.nan)
    if m >= 2:
        loo = _cka_from_mean_hsic((total[None] - h) / (m - 1))
        defined = np.isfinite(loo).all(axis=0) & ok
        dev = loo - loo.mean(axis=0)
        with np.errstate(invalid="ignore"):
            jk = np.sqrt((m - 1) / m * (dev ** 2).sum(axis=0))
        se[defined] = jk[defined]

    return CKAResult(cka=cka, se=se, batch_std=batch_std, status=status, n_minibatches=m)


def _as_features(f, i: int) -> torch.Tensor:
    """A layer's features as a tensor: numpy arrays are wrapped without a copy (copied only when
    read-only, which torch cannot wrap)."""
    if isinstance(f, torch.Tensor):
        return f
    if isinstance(f, np.ndarray):
        return torch.from_numpy(f if f.flags.writeable else f.copy())
    raise TypeError(f"layer {i}: expected a torch.Tensor or numpy array of shape (n, ...), got {type(f).__name__}")


def hsic_from_features(features: Sequence, minibatch_size: int | None = None, estimator: str = "unbiased",
                       center: bool | str = True, chunk_features: int = 1 << 16) -> np.ndarray:
    """(m, L, L) HSIC of every pair of the given layers in each of the m minibatches.

    features: each (N, ...) torch tensor or numpy array, the same examples in the same order.
    Consecutive minibatches of ``minibatch_size`` examples (None: one minibatch of all N); N must be a
    multiple of it. Per minibatch every layer's Gram is taken with :func:`gram` (``center``) and the
    pairs with :func:`hsic_all_pairs`, as extraction and the CKA tables do from stored Grams.
    """
    _check_estimator(estimator)
    features = [_as_features(f, i) for i, f in enumerate(features)]
    if not features:
        raise ValueError("hsic_from_features: no layers given")
    n_total = features[0].shape[0]
    for i, f in enumerate(features):
        if f.shape[0] != n_total:
            raise ValueError(f"hsic_from_features: layer {i} has {f.shape[0]} examples, layer 0 has {n_total}")
    b = n_total if minibatch_size is None else int(minibatch_size)
    if b < MIN_EXAMPLES[estimator]:
        raise ValueError(f"hsic_from_features: minibatch_size {b} is too small for the {estimator} "
                         f"HSIC estimator (needs >= {MIN_EXAMPLES[estimator]})")
    if n_total % b:
        raise ValueError(f"hsic_from_features: {n_total} examples is not a multiple of minibatch_size {b}")
    per_batch = []
    for s in range(0, n_total, b):
        grams = np.empty((len(features), b, b))
        for i, f in enumerate(features):
            grams[i] = gram(f[s:s + b], chunk_features=chunk_features, center=center).cpu().numpy()
        per_batch.append(hsic_all_pairs(grams, estimator))
    return np.stack(per_batch)


def cka_all_pairs_from_features(features: Sequence, minibatch_size: int | None = None,
                                estimator: str = "unbiased", center: bool | str = True,
                                chunk_features: int = 1 << 16) -> CKAResult:
    """Minibatch CKA of every pair of the given layers (each (N, ...) torch tensor or numpy array, same
    examples in the same order): :func:`hsic_from_features` then :func:`cka_from_minibatch_hsic`.

    Consecutive minibatches of ``minibatch_size`` examples (None: one minibatch of all N);
    N must be a multiple of it. For cross-model CKA pass model A's layers then model B's and
    take the off-diagonal block.
    """
    return cka_from_minibatch_hsic(hsic_from_features(features, minibatch_size, estimator, center, chunk_features))

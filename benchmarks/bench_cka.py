"""Benchmark: all-pairs linear CKA, seelike vs pytorch-cka vs torch-cka, on identical features.

    python benchmarks/bench_cka.py            # full run (~10 min on 2 CPU cores)
    python benchmarks/bench_cka.py --quick    # tiny smoke run (seconds)

Needs `pip install pytorch-cka torch-cka` (the `bench` extra). Writes benchmarks/out/bench_cka.json.
Goal: all-pairs CKA within one model (12x12 and 24x24 layers) at least 2x faster than pytorch-cka.

Estimator: all three compute the *unbiased* HSIC of Song et al. 2012 over one batch holding all n
examples (pytorch-cka's `hsic`/`hsic_cross`, torch-cka's `CKA._HSIC` with a zeroed Gram diagonal),
so seelike runs with estimator="unbiased" and minibatch_size = n (one minibatch): same estimator.

Configurations (n examples; d features per layer; "within": L layers of one model against
themselves; "cross": 12 layers of model A against 12 layers of model B):
    within 12x12, within 24x24, cross 12x12, each for d = 768 and d = 38400 (50 tokens x 768).

Methods:
    seelike            gram() per layer (center=False) + hsic_all_pairs + cka_from_minibatch_hsic
    seelike+center     the same with gram(center=True) (features centred over the batch first)
    pytorch-cka        cka.cka_from_features(list_x, list_y), its batched public function
    torch-cka          torch_cka.CKA(...).compare(loader): hook-based and model/dataloader only, so
                       each model is a trivial nn.Module whose child modules return the stored
                       feature tensors (no copy); the DataLoader yields one batch of all n indices.

Reference: float64 throughout -- features centred in float64 (HSIC is shift invariant), float64
Grams, and the Song et al. trace formula evaluated for all pairs in float64 (independent of the
seelike code). Reported error: max |CKA - reference| over the L x L (or cross) matrix.

Timing: torch.set_num_threads(--threads) for everything; within one repeat the methods run
round-robin so that background load hits all of them alike; the median over repeats is reported.
torch-cka recomputes a Gram and two n^3 products for every layer pair, so it runs once per
configuration, and 24x24 at d = 38400 is extrapolated (4x its 12x12 time) unless --torch-cka-all.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")   # torch-cka draws a progress bar

import numpy as np
import torch
from torch import nn

from seelike.allocator import retain_freed_memory
from seelike.cka import cka_from_minibatch_hsic, gram, hsic_all_pairs
from seelike.fileio import write_json_atomic

OUT = Path(__file__).resolve().parent / "out"


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

def make_model_features(n_layers: int, n: int, d: int, seed: int) -> list[torch.Tensor]:
    """float32 (n, d) features of `n_layers` layers of a synthetic model.

    Each layer mixes a shared low-rank signal (rank 64) with fresh per-layer noise, drifting with
    depth so CKA falls off away from the diagonal; features have anisotropic scales, per-feature
    offsets and 0.5% "massive" dimensions with a large offset, as in transformer residual streams.
    """
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 64, generator=g) @ (torch.randn(64, d, generator=g) / 8.0)
    scale = torch.exp(0.5 * torch.randn(d, generator=g))
    offset = 1.5 * torch.randn(d, generator=g)
    offset[torch.randperm(d, generator=g)[: max(1, d // 200)]] += 20.0
    feats = []
    for layer in range(n_layers):
        a = 0.1 + 0.8 * layer / max(1, n_layers - 1)
        x = torch.randn(n, d, generator=g).mul_(a ** 0.5).add_(shared, alpha=(1 - a) ** 0.5)
        feats.append(x.mul_(scale).add_(offset))
    return feats


# ---------------------------------------------------------------------------------------------
# Float64 reference (independent of seelike)
# ---------------------------------------------------------------------------------------------

def reference_grams(feats: list[torch.Tensor]) -> list[np.ndarray]:
    out = []
    for f in feats:
        x = f.reshape(f.shape[0], -1).double()
        x -= x.mean(0)
        out.append((x @ x.T).numpy())
        del x
    return out


def reference_cka(grams_x: list[np.ndarray], grams_y: list[np.ndarray]) -> np.ndarray:
    """Unbiased CKA, Song et al. eq. (5) for every pair, float64."""
    n = grams_x[0].shape[0]

    def parts(gs):
        kt = np.stack(gs).copy()
        idx = np.arange(n)
        kt[:, idx, idx] = 0.0
        return kt.reshape(len(gs), -1), kt.sum(-1), kt.sum((-1, -2))

    def hsic(a, b):
        (fa, ra, ta), (fb, rb, tb) = a, b
        return (fa @ fb.T + np.outer(ta, tb) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ra @ rb.T) / (n * (n - 3))

    px, py = parts(grams_x), parts(grams_y)
    hxy = hsic(px, py)
    hxx = np.diag(hsic(px, px))
    hyy = np.diag(hsic(py, py))
    return hxy / np.sqrt(np.outer(hxx, hyy))


# ---------------------------------------------------------------------------------------------
# Methods: each takes (feats_x, feats_y, same) and returns the (Lx, Ly) CKA as float64 numpy
# ---------------------------------------------------------------------------------------------

def run_seelike(fx, fy, same, center=False):
    layers = fx if same else fx + fy
    n = fx[0].shape[0]
    grams = np.empty((len(layers), n, n))
    for i, f in enumerate(layers):
        grams[i] = gram(f, center=center).numpy()
    res = cka_from_minibatch_hsic(hsic_all_pairs(grams, "unbiased")[None])
    return res.cka if same else res.cka[: len(fx), len(fx):]


def run_seelike_center(fx, fy, same):
    return run_seelike(fx, fy, same, center=True)


def run_pytorch_cka(fx, fy, same):
    from cka import cka_from_features
    with torch.inference_mode():
        return cka_from_features(list(fx), list(fy)).double().numpy()


class _StoredFeature(nn.Module):
    def __init__(self, feat: torch.Tensor):
        super().__init__()
        self.feat = feat

    def forward(self, idx):
        return self.feat          # the batch is every example, in order


class FeatureModel(nn.Module):
    """A 'model' whose layer i outputs the stored features of layer i (for hook-based CKA tools)."""

    def __init__(self, feats):
        super().__init__()
        self.layers = nn.ModuleList(_StoredFeature(f) for f in feats)

    def forward(self, idx):
        for layer in self.layers:
            layer(idx)
        return idx


def run_torch_cka(fx, fy, same):
    import warnings
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA
    n = fx[0].shape[0]
    m1, m2 = FeatureModel(fx), FeatureModel(fy)
    names1 = [f"layers.{i}" for i in range(len(fx))]
    names2 = [f"layers.{i}" for i in range(len(fy))]
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=n, shuffle=False)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        c = CKA(m1, m2, model1_name="A", model2_name="B", model1_layers=names1, model2_layers=names2, device="cpu")
        c.compare(loader, loader)
        return c.export()["CKA"].double().numpy()


METHODS = {
    "seelike": run_seelike,
    "seelike+center": run_seelike_center,
    "pytorch-cka": run_pytorch_cka,
    "torch-cka": run_torch_cka,
}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def bench_config(name, fx, fy, same, ref, repeats, torch_cka_mode, methods):
    """Round-robin timing of every method; returns result records."""
    times = {m: [] for m in methods}
    errs = {}
    run_list = [m for m in methods if not (m == "torch-cka" and torch_cka_mode != "run")]
    for r in range(repeats):
        for m in run_list:
            if m == "torch-cka" and r > 0:
                continue          # once per configuration (see module docstring)
            gc.collect()
            t0 = time.perf_counter()
            out = METHODS[m](fx, fy, same)
            times[m].append(time.perf_counter() - t0)
            if m not in errs:
                errs[m] = float(np.nanmax(np.abs(out - ref)))
                if not np.isfinite(out).all():
                    errs[m] = float("nan")
            del out
    recs = []
    for m in methods:
        rec = {"config": name, "method": m, "times_s": times[m],
               "median_s": statistics.median(times[m]) if times[m] else None,
               "min_s": min(times[m]) if times[m] else None,
               "max_abs_err": errs.get(m), "note": ""}
        if m == "torch-cka" and torch_cka_mode != "run":
            rec["note"] = torch_cka_mode
        recs.append(rec)
    return recs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: n=128, d in {64, 640}, 1 repeat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5, help="repeats at d=768")
    ap.add_argument("--repeats-large", type=int, default=2, help="repeats at d=38400")
    ap.add_argument("--torch-cka-all", action="store_true", help="also run torch-cka 24x24 at d=38400 (~5 min)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", type=Path, default=OUT / "bench_cka.json")
    ap.add_argument("--dims", default=None, help="comma-separated subset of the feature sizes (768,38400)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc thresholds as they are (seelike's jobs raise them; see seelike.allocator)")
    args = ap.parse_args(argv)

    # As in seelike's job processes; every method runs in this process and gets the same allocator.
    retained = False if args.default_malloc else retain_freed_memory()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.quick:
        n, dims = 128, [(64, 1), (640, 1)]
    else:
        n, dims = args.n, [(768, args.repeats), (38400, args.repeats_large)]
        if args.dims:
            keep = {int(v) for v in args.dims.split(",")}
            dims = [(d, r) for d, r in dims if d in keep]

    records = []
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    # warm-up (MKL/OpenMP start-up, imports) on tiny data, untimed
    w = make_model_features(2, 16, 8, 0)
    for m in methods:
        METHODS[m](w, w, True)

    for d, repeats in dims:
        print(f"# d = {d}: generating features (n = {n})", file=sys.stderr, flush=True)
        a = make_model_features(24, n, d, seed=1)
        ref_a = reference_grams(a)
        big = d > 10000 and not args.quick
        for name, L in (("within 12x12", 12), ("within 24x24", 24)):
            ref = reference_cka(ref_a[:L], ref_a[:L])
            mode = "run"
            if big and L == 24 and not args.torch_cka_all:
                mode = "extrapolated"
            print(f"# d = {d}: {name}", file=sys.stderr, flush=True)
            recs = bench_config(name, a[:L], a[:L], True, ref, repeats, mode, methods)
            for rc in recs:
                rc["d"], rc["n"], rc["layers"] = d, n, f"{L}x{L}"
            records += recs
        del a[12:], ref_a[12:]
        gc.collect()
        b = make_model_features(12, n, d, seed=2)
        ref_b = reference_grams(b)
        ref = reference_cka(ref_a, ref_b)
        print(f"# d = {d}: cross 12x12", file=sys.stderr, flush=True)
        recs = bench_config("cross 12x12", a, b, False, ref, repeats, "run", methods)
        for rc in recs:
            rc["d"], rc["n"], rc["layers"] = d, n, "12x12"
        records += recs
        cka_range = (float(np.min(ref)), float(np.max(ref)))
        for rc in records:
            if rc["d"] == d:
                rc["reference_cka_range_cross"] = cka_range
        del a, b, ref_a, ref_b
        gc.collect()

    # extrapolate torch-cka 24x24 from its 12x12 time at the same d (cost ~ number of pairs)
    for rc in records:
        if rc["method"] == "torch-cka" and rc["note"] == "extrapolated":
            base = next(r for r in records if r["method"] == "torch-cka" and r["d"] == rc["d"]
                        and r["config"] == "within 12x12")
            rc["median_s"] = 4.0 * base["median_s"] if base["median_s"] else None
            rc["note"] = "not run: 4x its 12x12 time (pairs x4)"
    for rc in records:
        ref = next((r for r in records if r["method"] == "pytorch-cka" and r["d"] == rc["d"]
                    and r["config"] == rc["config"]), None)
        rc["speedup_vs_pytorch_cka"] = (ref["median_s"] / rc["median_s"]
                                        if ref and ref["median_s"] and rc["median_s"] else None)

    print_table(records)
    print(f"threads {args.threads}; load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
          f"(other processes on the machine slow every method, multi-threaded ones most)")
    meta = {
        "n_examples": n, "threads": args.threads, "quick": args.quick, "retain_freed_memory": retained,
        "estimator": "unbiased HSIC (Song et al. 2012), one batch of all n examples, for every method",
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "versions": _versions(), "total_wall_s": time.perf_counter() - t_start,
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
    }
    write_json_atomic(args.out, {"meta": meta, "results": records}, indent=1, nan_as_null=True)
    print(f"\nwrote {args.out} ({meta['total_wall_s']:.0f} s)")


def _versions():
    from importlib import metadata as md
    out = {}
    for p in ("pytorch-cka", "torch-cka", "seelike"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def print_table(records):
    hdr = (f"{'d':>6} {'config':<13} {'method':<15} {'median s':>9} {'min s':>8} {'vs pytorch-cka':>14} "
           f"{'max abs err':>11}  note")
    print(hdr)
    print("-" * len(hdr))
    for rc in records:
        t = f"{rc['median_s']:.3f}" if rc["median_s"] is not None else "-"
        tm = f"{rc['min_s']:.3f}" if rc.get("min_s") is not None else "-"
        s = f"{rc['speedup_vs_pytorch_cka']:.2f}x" if rc.get("speedup_vs_pytorch_cka") else "-"
        e = f"{rc['max_abs_err']:.1e}" if rc["max_abs_err"] is not None else "-"
        note = rc["note"] or (f"{len(rc['times_s'])} runs" if rc["times_s"] else "")
        print(f"{rc['d']:>6} {rc['config']:<13} {rc['method']:<15} {t:>9} {tm:>8} {s:>14} {e:>11}  {note}")


if __name__ == "__main__":
    main()

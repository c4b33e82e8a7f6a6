"""Benchmark: bytes on disk per example per layer of real shards against storing raw activations.

    python benchmarks/bench_storage.py            # full run (~1 min on 2 CPU cores)
    python benchmarks/bench_storage.py --quick    # the same at n = 128 (seconds)

Writes benchmarks/out/bench_storage.json.

Measured: the demo models of config/demo.yaml (architectures and kwargs read from it, one model
per distinct architecture, randomly initialised; the demo's extraction settings: `minibatches_per_shard` 4, `full_tokens` 8) are
extracted through `seelike.extract.extract_shard` on n = 512 synthetic images, once at the demo's
`cka.minibatch_size` (64) and once at the paper's 256. Every HDF5 dataset's bytes on disk are read
with h5py (`Dataset.id.get_storage_size()`; the store writes them uncompressed) and summed
per kind over all shards:
    grams     /layers/<l>/gram                 (m, b, b) float64, uncompressed
    pooled    /layers/<l>/pooled_cls + _mean   (n, d) float32 each, not compressed
    tokens    /layers/<l>/tokens               (k, t, d) float32, not compressed, k = full_tokens examples
    rest      logits, labels, plan arrays and HDF5 metadata (file size - the above)
"per example per layer" = bytes / (n * L) for grams and pooled; tokens are reported per stored
example per layer (bytes / (k * L)) and as a total, because only the plan's first k examples keep
them. Raw = what storing every example's activations would take: tokens x dim x 2 bytes (fp16) or
x 4 bytes (fp32), per layer from the layer's real shape, averaged over layers.
If results/extract/*/*/shard-*.h5 exist (a demo run), they are measured too (trained weights).

Analytic (the same accounting, no gzip), ViT-B/16 (12 blocks, d 768) and ViT-L/16 (24 blocks,
d 1024) at 224 px (t = 1 + 14*14 = 197 tokens), minibatch b = 256:
    grams   b * b * 8 bytes per minibatch and layer          = 8 b        bytes / example / layer
    pooled  CLS + token mean, float32                         = 2 * 4 d    bytes / example / layer
    raw     t * d * 2 (fp16), t * d * 4 (fp32)                             bytes / example / layer
    tokens  k * t * d * 4 bytes per layer for the whole plan (k = full_tokens = 64)
    per run (n = 10240, the paper config): n * L * (8 b + 8 d) + L * k * t * d * 4
The measured rows check the formula: measured grams are exactly 8 b bytes / example / layer and
pooled exactly 8 d (CLS + mean) or 4 d (spatial mean only).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DATASET_KEY, OUT, dataset_cfg, extract_spec, host_meta, make_model_dir, seelike_extract_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER = {"ViT-B/16": {"layers": 12, "d": 768, "t": 197}, "ViT-L/16": {"layers": 24, "d": 1024, "t": 197}}


def demo_models() -> dict:
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    out, seen = {}, set()
    for name, m in cfg["models"].items():   # one model per distinct architecture (the demo trains variants)
        key = json.dumps([m["arch"], m.get("kwargs", {})], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out[name] = (m["arch"], m.get("kwargs", {}))
    return out


def measure_shards(files: list[Path]) -> dict:
    """Bytes on disk by kind and per-layer shapes over the shards of one (model, dataset)."""
    import h5py

    acc = {"grams": 0, "pooled": 0, "tokens": 0, "file": 0}
    n = k = 0
    shapes, b = {}, None
    for p in files:
        acc["file"] += p.stat().st_size
        with h5py.File(p, "r") as f:
            layers = json.loads(f.attrs["layers"])
            n += len(f["plan/example_indices"])
            for l in layers:
                g = f[f"layers/{l}/gram"]
                b = g.shape[-1]
                acc["grams"] += g.id.get_storage_size()
                for key in ("pooled_cls", "pooled_mean"):
                    if key in f[f"layers/{l}"]:
                        acc["pooled"] += f[f"layers/{l}/{key}"].id.get_storage_size()
                if "tokens" in f[f"layers/{l}"]:
                    ds = f[f"layers/{l}/tokens"]
                    acc["tokens"] += ds.id.get_storage_size()
                    shapes[l] = ds.shape[1:]
                    if l == layers[0]:
                        k += ds.shape[0]
    L = len(layers)
    raw_elems = float(np.mean([t * d for t, d in shapes.values()]))
    rec = {
        "n_examples": n, "layers": L, "minibatch": b, "full_tokens": k, "shards": len(files),
        "bytes": acc,
        "grams_B_per_ex_layer": acc["grams"] / (n * L),
        "pooled_B_per_ex_layer": acc["pooled"] / (n * L),
        "rest_B_per_ex": (acc["file"] - acc["grams"] - acc["pooled"] - acc["tokens"]) / n,
        "tokens_B_per_stored_ex_layer": acc["tokens"] / (k * L) if k else None,
        "raw_fp16_B_per_ex_layer": 2 * raw_elems, "raw_fp32_B_per_ex_layer": 4 * raw_elems,
        "layer_shapes_t_d": {l: list(s) for l, s in shapes.items()},
    }
    rec["reduced_B_per_ex_layer"] = rec["grams_B_per_ex_layer"] + rec["pooled_B_per_ex_layer"]
    rec["raw_fp16_over_reduced"] = rec["raw_fp16_B_per_ex_layer"] / rec["reduced_B_per_ex_layer"]
    rec["raw_fp32_over_reduced"] = rec["raw_fp32_B_per_ex_layer"] / rec["reduced_B_per_ex_layer"]
    rec["formula_grams_B_per_ex_layer"] = 8.0 * b   # formula check: measured grams are exactly 8 b
    return rec


def rewrite_whatif(shard: Path, tmp: Path) -> dict:
    """Write the arrays of one real shard again through write_shard with compression="gzip" and with
    compression=None (the default); bytes and seconds of each (write_shard fsyncs, as extraction does)."""
    import h5py
    from seelike.store import write_shard

    with h5py.File(shard, "r") as f:
        datasets = [d for d in json.loads(f.attrs["datasets"]) if not d.startswith("plan/")]
        arrays = {d: f[d][()] for d in datasets}
        kw = dict(model=str(f.attrs["model"]), dataset=str(f.attrs["dataset"]), shard_index=int(f.attrs["shard_index"]),
                  n_shards=int(f.attrs["n_shards"]), plan=json.loads(f["plan/json"][()]),
                  plan_digest=str(f.attrs["plan_digest"]), layers=json.loads(f.attrs["layers"]),
                  example_indices=f["plan/example_indices"][()], minibatch_ids=f["plan/minibatch_ids"][()],
                  provenance=json.loads(f.attrs["provenance"]))
    out = {}
    for comp in ("gzip", None):
        p = tmp / f"whatif-{comp}.h5"
        times = []
        for _ in range(3):
            t = time.perf_counter()
            write_shard(p, arrays=arrays, compression=comp, **kw)
            times.append(time.perf_counter() - t)
        out[str(comp)] = {"bytes": p.stat().st_size, "seconds": float(np.median(times))}
        p.unlink()
    return out


def analytic(name, L, d, t, b=256, n=10240, k=64) -> dict:
    grams, pooled = 8 * b, 8 * d
    reduced = grams + pooled
    return {
        "model": name, "layers": L, "d": d, "tokens": t, "minibatch": b, "n_examples": n, "full_tokens": k,
        "grams_B_per_ex_layer": grams, "pooled_B_per_ex_layer": pooled, "reduced_B_per_ex_layer": reduced,
        "raw_fp16_B_per_ex_layer": 2 * t * d, "raw_fp32_B_per_ex_layer": 4 * t * d,
        "raw_fp16_over_reduced": 2 * t * d / reduced, "raw_fp32_over_reduced": 4 * t * d / reduced,
        "tokens_B_per_stored_ex_layer": 4 * t * d,
        "run_reduced_GB": n * L * reduced / 1e9, "run_tokens_GB": L * k * t * d * 4 / 1e9,
        "run_raw_fp16_GB": n * L * 2 * t * d / 1e9, "run_raw_fp32_GB": n * L * 4 * t * d / 1e9,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 128 instead of 512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--minibatches", default="64,256", help="minibatch sizes to extract at")
    ap.add_argument("--full-tokens", type=int, default=8, help="demo config: 8")
    ap.add_argument("--minibatches-per-shard", type=int, default=4, help="demo config: 4")
    ap.add_argument("--no-results", action="store_true", help="skip shards found under results/extract")
    ap.add_argument("--out", type=Path, default=OUT / "bench_storage.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from seelike.data import dataset_fingerprint, dataset_size
    from seelike.plan import make_plan

    n = 128 if args.quick else args.n
    bs = [int(x) for x in args.minibatches.split(",") if x]
    if args.quick:
        bs = [b for b in bs if b <= n] or [64]
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="seelike-bench-storage-"))
    measured = []
    try:
        models = demo_models()
        ds_cfg = dataset_cfg(max(n, 256))
        cards = {nm: make_model_dir(tmp / "models", nm, a, kw, seed=i) for i, (nm, (a, kw)) in enumerate(models.items())}
        for b in bs:
            plan = make_plan(f"{DATASET_KEY}:{dataset_fingerprint(ds_cfg)}",
                             np.arange(dataset_size(ds_cfg, "analysis")), n, b, args.minibatches_per_shard, 0)
            for nm in models:
                out_dir = tmp / f"b{b}" / nm
                spec = extract_spec(nm, cards[nm], ds_cfg, plan, out_dir, args.full_tokens)
                print(f"# extracting {nm} at b = {b}", file=sys.stderr, flush=True)
                seelike_extract_model(spec, plan)
                shards = sorted(out_dir.glob("shard-*.h5"))
                rec = measure_shards(shards)
                rec.update({"model": nm, "source": "random init, demo arch", "arch": models[nm][0]})
                rec["compression_whatif_shard0"] = rewrite_whatif(shards[0], tmp)
                measured.append(rec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_results:
        for d in sorted(glob.glob(str(REPO / "results" / "extract" / "*" / "*"))):
            files = sorted(Path(d).glob("shard-*.h5"))
            if not files:
                continue
            try:
                rec = measure_shards(files)
            except Exception as e:   # a demo run rewriting its results
                print(f"# skipped {d}: {e}", file=sys.stderr)
                continue
            rec.update({"model": Path(d).name, "source": f"{Path(d).relative_to(REPO)} (demo run, trained)",
                        "arch": None})
            measured.append(rec)
    paper = [analytic(name, **{"L": v["layers"], "d": v["d"], "t": v["t"]}) for name, v in PAPER.items()]
    print_tables(measured, paper)
    meta = dict(host_meta(args.threads), quick=args.quick, n_examples=n, minibatches=bs, full_tokens=args.full_tokens,
                minibatches_per_shard=args.minibatches_per_shard, total_wall_s=time.perf_counter() - t_start,
                formula=("grams 8b + pooled 8d bytes / example / layer (b minibatch, d width); raw t*d*2 (fp16), "
                         "t*d*4 (fp32); tokens k*t*d*4 per layer per plan"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "measured": measured, "analytic": paper}, indent=1, default=str))
    print(f"\nwrote {args.out} ({meta['total_wall_s']:.0f} s)")


def print_tables(measured, paper):
    print("Measured shards: bytes on disk per example per layer (grams + pooled), vs raw activations")
    hdr = (f"{'model':<13} {'source':<28} {'L':>3} {'b':>4} {'n':>5} {'grams':>7} {'pooled':>7} {'reduced':>8} "
           f"{'raw fp16':>9} {'raw fp32':>9} {'fp16/red':>8} {'fp32/red':>8} {'tokens/ex/L':>11} {'tok total':>10} "
           f"{'file/ex':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in measured:
        tok = r["tokens_B_per_stored_ex_layer"]
        print(f"{r['model']:<13} {r['source'][:28]:<28} {r['layers']:>3} {r['minibatch']:>4} {r['n_examples']:>5} "
              f"{r['grams_B_per_ex_layer']:>7.0f} {r['pooled_B_per_ex_layer']:>7.0f} {r['reduced_B_per_ex_layer']:>8.0f} "
              f"{r['raw_fp16_B_per_ex_layer']:>9.0f} {r['raw_fp32_B_per_ex_layer']:>9.0f} "
              f"{r['raw_fp16_over_reduced']:>7.1f}x {r['raw_fp32_over_reduced']:>7.1f}x "
              f"{(tok or 0):>11.0f} {r['bytes']['tokens'] / 1e6:>8.2f}MB {r['bytes']['file'] / r['n_examples']:>8.0f}")
    print("(bytes per example per layer unless noted; tokens/ex/L: float32 full tokens per stored example\n"
          " per layer, only the plan's first full_tokens examples; file/ex: whole shard files / n, all layers)")
    print("\nWhat-if: shard 0 of each model written again with write_shard(compression='gzip') and without (the default)")
    print(f"{'model':<13} {'b':>4} {'gzip bytes':>11} {'none bytes':>11} {'gzip s':>7} {'none s':>7}")
    for r in measured:
        w = r.get("compression_whatif_shard0")
        if w:
            print(f"{r['model']:<13} {r['minibatch']:>4} {w['gzip']['bytes']:>11} {w['None']['bytes']:>11} "
                  f"{w['gzip']['seconds']:>7.3f} {w['None']['seconds']:>7.3f}")
    print("\nAnalytic, minibatch 256, 224 px (no gzip): bytes per example per layer, and per run of n = 10240")
    hdr = (f"{'model':<9} {'L':>3} {'d':>5} {'t':>4} {'grams':>6} {'pooled':>7} {'reduced':>8} {'raw fp16':>9} "
           f"{'raw fp32':>9} {'fp16/red':>8} {'fp32/red':>8} {'run red GB':>10} {'tokens GB':>9} {'raw16 GB':>9} {'raw32 GB':>9}")
    print(hdr)
    print("-" * len(hdr))
    for r in paper:
        print(f"{r['model']:<9} {r['layers']:>3} {r['d']:>5} {r['tokens']:>4} {r['grams_B_per_ex_layer']:>6} "
              f"{r['pooled_B_per_ex_layer']:>7} {r['reduced_B_per_ex_layer']:>8} {r['raw_fp16_B_per_ex_layer']:>9} "
              f"{r['raw_fp32_B_per_ex_layer']:>9} {r['raw_fp16_over_reduced']:>7.1f}x {r['raw_fp32_over_reduced']:>7.1f}x "
              f"{r['run_reduced_GB']:>10.2f} {r['run_tokens_GB']:>9.2f} {r['run_raw_fp16_GB']:>9.1f} {r['run_raw_fp32_GB']:>9.1f}")
    print("(tokens GB: full_tokens = 64 examples, float32, all layers; run: 10240 examples, the paper config)")


if __name__ == "__main__":
    main()

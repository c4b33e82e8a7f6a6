"""Benchmark: extraction throughput against a bare forward pass of the same model and batch size.

    python benchmarks/bench_extract.py              # full run (~5-8 min on 2 idle cores)
    python benchmarks/bench_extract.py --threads 1  # on a busy machine (460 s at load 3-7)
    python benchmarks/bench_extract.py --quick      # tiny smoke run (~30 s)

Writes benchmarks/out/bench_extract.json. Goals, at the default minibatch size (`cka.minibatch_size` = 256):

* CPU (this benchmark): extraction's overhead over the bare forward beyond the Grams' own flop share
  ("GOAL - Gram flops", percentage points) at most 10 points, for every family (ViT, CNN, MLP-Mixer).
  Exact Grams of every layer are 26-35% of a ResNet-50 forward's flops at b = 256, so a flat 25%
  cannot hold for CNNs on a CPU: even at the forward's flop rate the Grams alone would exceed it.
* GPU (gpu_check.py): extraction at most 25% over the bare forward. This benchmark still prints
  GOAL against 25% for reference.

For each model config, with the same weights, images and minibatch size b (`--threads` torch
threads, default 2; on a busy machine use 1, see bench_pipeline.py):

* bare          `model(x)` under `torch.no_grad()` on the shard's images, already rendered and
                batched in memory (no data loading, no hooks): the floor.
* extract_shard `seelike.extract.extract_shard(spec, 0)` on a one-shard plan of k minibatches:
                the whole job as the `extract` rule runs it -- model built from its card, data
                loading (the synthetic images rendered on the fly), layer taps, NaN check, one
                Gram per layer and minibatch, pooled CLS / mean features, full tokens of the
                first `full_tokens` examples, logits, the HDF5 write (uncompressed)
                with fsync and provenance. Overhead = extract_shard / bare - 1.
* breakdown     extract_shard's loop on one minibatch, re-run with the package's own pieces and
                timed `--breakdown-reps` times each (default: as many as fit BREAKDOWN_SECONDS of
                forward passes, 5 to 15: 15 for resnet18_32, 5 for the other configs),
                min kept (robust to other processes; resnet18_32's GOAL - Gram flops on 2026-12-05:
                7.1-13.5 points in 5 runs with 5 repeats, 6.2-9.9 in 9 runs with 15); the
                bare forward, the forward with taps and the streamed forward alternate.
                "streamed": the forward as extraction runs it (LayerTaps handing each layer to a
                LayerStream that NaN-checks it and feeds GramReducer and PooledReducer inside its
                hook; full tokens, once per plan, left out). "steady/mb" = (streamed + logits +
                data loading per minibatch) / bare forward - 1: the overhead a shard of many
                minibatches tends to. The steps are also timed one by one on activations kept
                from a forward with taps (columns hooks, Gram, NaN chk, pooled; their sum is
                "parts"): they explain the streamed time, within a few points of it either way
                (they read every layer back from memory, the streamed forward reduces it while
                the forward's own work waits). Fixed per-shard costs are timed apart: the startup
                (`seelike.extract.checkpoint_verified` around the model build, as extract_shard
                starts: the checkpoint hashed in a thread while the single-threaded build runs,
                joined when the build ends, so that what the hash takes beyond the build counts in
                full, where extraction, which joins after its last minibatch, runs it beside the data
                loading and the forward) and write_shard of an 8-minibatch shard's
                arrays (this shard's Grams, pooled features and logits repeated to 8 minibatches);
                "at k=8" adds them to 8 minibatches, the paper config's shard.
* GOAL          "at k=8" without data loading. The goal names taps, Grams and HDF5 writes; the
                bare forward runs on images already in memory, and loading them costs any loop
                over the dataset the same (column "data").
* Gram flops    the Grams' floating-point operations as % of the forward's (see `arithmetic`).
* GOAL - Gram flops  the CPU goal's figure: GOAL minus Gram flops, in percentage points -- what
                extraction adds beyond the Grams' flops at the forward's flop rate (taps, NaN check,
                pooled features, logits, fixed per-shard costs, and the Grams running slower or
                faster per flop than the forward). Goal: at most 10 points.

Allocator: like an extraction job, the benchmark first raises glibc's malloc thresholds
(`seelike.allocator.retain_freed_memory`), which the bare forward in the same process gets too;
with glibc's defaults every minibatch's activations are fresh page-faulting mmaps, which makes both
the bare forward and extraction up to 2x slower on a 2-core VM. `--default-malloc` measures without it.

Timings: bare and extract_shard alternate within each repeat (background load hits both alike);
medians over repeats, wall and process CPU time. images/s = k * b / seconds.

Configs (full mode; b = 256 everywhere, the default `cka.minibatch_size` of the paper config;
random weights, family as the model card records it):
    vit_tiny_32   vit_tiny_patch16_224(img_size=32, patch_size=4): 12 blocks, 65 tokens, d 192;
                  k = 2 minibatches (512 images), 3 repeats
    resnet18_32   timm resnet18 at 32 px (8 units, 8x8x64 .. 1x1x512); k = 4, 3 repeats
    vit_b16_64    vit_base_patch16_224 (ViT-B/16 itself: 12 blocks, d 768) at 64 px: 17 tokens;
                  k = 1, 3 repeats
    resnet50_64   timm resnet50 (16 bottleneck units, the paper's R50 geometry) at 64 px:
                  16x16x256 .. 2x2x2048; k = 2, 3 repeats
    mixer_b16_64  timm mixer_b16_224 (Mixer-B/16 itself: 12 blocks, d 768, token MLP 384, channel MLP
                  3072) at 64 px: 16 tokens, no CLS; k = 1, 3 repeats
The paper's models at 224 px take 30-75 s per minibatch of 256 on 2 cores, too slow to repeat here,
so the last three run at 64 px. The overhead ratio carries over: per layer the Gram costs
2 b^2 t d flops against the forward's ~24 b t d^2 (+ 4 b t^2 d attention) for a ViT block and
~2 b h w (c_in c_mid + 9 c_mid^2 + c_mid c_out) for a bottleneck unit whose Gram costs
2 b^2 h w c_out -- both linear in the number of positions (t, h w), so the Gram / forward ratio of
ViT-B/16 and ResNet-50 at 64 px is that at 224 px (for the ViT up to the attention term:
b / (12 d + 2 t) = 2.8% at t = 17, 2.7% at t = 197). A Mixer block's forward costs
16 b t d^2 (channel MLP) + 4 b t d t_mlp (token MLP, t_mlp = 384 whatever t is), both linear in t
too: ratio 1.5 b / (16 d + 4 t_mlp) = 2.8% at any resolution.
Run only when named (`--configs resnet50_224` ...), one minibatch, 1 repeat:
    resnet50_224  timm resnet50 at 224 px: 56x56x256 .. 7x7x2048
    bit_r50x1_224 timm resnetv2_50x1_bit (BiT-R50x1, the paper's CNN: GroupNorm, weight standardisation)
                  at 224 px
At 224 px a bare forward of 256 images takes 8-17 s (ResNet-50, BiT-R50x1) on 2 cores. The Grams keep
their flop share, while what does not grow with the positions (a layer's pooled features and its b x b
Gram written to HDF5, the model build, the checkpoint's sha256) shrinks against the forward.
--quick: vit, resnet and mixer at 32 px with demo widths, b = 64, k = 2, 1 repeat.
--configs picks a subset (comma separated).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seelike.allocator import retain_freed_memory  # noqa: E402
from seelike.fileio import write_json_atomic  # noqa: E402
from bench_pipeline import DATASET_KEY, OUT, dataset_cfg, extract_spec, host_meta, load_avg, make_model_dir  # noqa: E402

# name -> (arch, kwargs, input size, k minibatches, repeats)
FULL = {
    "vit_tiny_32": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "num_classes": 10}, 32, 2, 3),
    "resnet18_32": ("resnet18", {"num_classes": 10}, 32, 4, 3),
    "vit_b16_64": ("vit_base_patch16_224", {"img_size": 64, "num_classes": 10}, 64, 1, 3),
    "resnet50_64": ("resnet50", {"num_classes": 10}, 64, 2, 3),
    "mixer_b16_64": ("mixer_b16_224", {"img_size": 64, "num_classes": 10}, 64, 1, 3),
}
#: run only when named in --configs: the paper's CNN geometry at its own resolution, one minibatch of 256
#: (a bare forward takes 8-17 s on 2 cores)
PAPER_SIZE = {
    "resnet50_224": ("resnet50", {"num_classes": 10}, 224, 1, 1),
    "bit_r50x1_224": ("resnetv2_50x1_bit", {"num_classes": 10}, 224, 1, 1),
}
QUICK = {
    "vit_demo_32": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 6,
                                             "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 10}, 32, 2, 1),
    "resnet_demo_32": ("resnet18", {"num_classes": 10, "channels": [32, 64, 128, 256]}, 32, 2, 1),
    "mixer_demo_32": ("seelike_mixer", {"img_size": 32, "num_classes": 10}, 32, 2, 1),   # patch 4, 6 blocks, d 96
}
#: the breakdown's default repeats: as many as fit this many seconds of its forward passes (3 a repeat:
#: bare, with taps, streamed), at least BREAKDOWN_REPS[0] and at most BREAKDOWN_REPS[1]
BREAKDOWN_SECONDS, BREAKDOWN_REPS = 12.0, (5, 15)
#: CPU goal: GOAL - Gram flops at most this many percentage points, for every family
CPU_GOAL_POINTS = 10.0
#: GPU goal (gpu_check.py), printed here for reference: GOAL at most this many percent
GPU_GOAL_PCT = 25.0


def timed2(fn):
    """(wall seconds, process CPU seconds) of fn()."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def render_batches(ds_cfg, plan):
    """The shard's minibatches as in-memory tensors (what `bare` runs on)."""
    from seelike.data import open_dataset

    ds = open_dataset(ds_cfg, "analysis")
    idx = plan.shard(0).example_indices
    b = plan.minibatch_size
    items = ds.__getitems__([int(i) for i in idx])
    x = torch.stack([it[0] for it in items])
    return [x[s:s + b] for s in range(0, len(x), b)]


def bare_forward(model, batches):
    with torch.no_grad():
        for x in batches:
            model(x)


def data_only(ds_cfg, plan):
    from torch.utils.data import DataLoader, Subset
    from seelike.data import open_dataset

    ds = open_dataset(ds_cfg, "analysis")
    loader = DataLoader(Subset(ds, [int(i) for i in plan.shard(0).example_indices]), batch_size=plan.minibatch_size,
                        shuffle=False, num_workers=0)
    for _ in loader:
        pass


def arithmetic(model, x, acts) -> dict:
    """Floating-point operations of one minibatch: the forward's matmuls and convolutions (torch's
    FlopCounterMode) and the Grams as seelike.cka.gram computes them (2 b^2 D for a plain product;
    with row panels only the lower block triangle, the panels chosen exactly as gram chooses them).
    Their ratio is the Gram cost a forward pass cannot hide: the floor of the goal's reading if both
    ran at the same flop rate."""
    from torch.utils.flop_counter import FlopCounterMode
    from seelike.cka import gram_panels

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    n, chunk = x.shape[0], 1 << 16                      # gram's default chunk_features
    gram_flops = 0
    for a in acts.values():
        d = a[0].numel()
        p = gram_panels(n, min(d, chunk), torch.device("cpu"))
        entries = sum((min(n, s + p) - s) * min(n, s + p) for s in range(0, n, p)) if p else n * n
        gram_flops += 2 * d * entries
    fwd = int(fc.get_total_flops())
    return {"forward_flops": fwd, "gram_flops": int(gram_flops), "gram_flops_pct_of_forward": 100.0 * gram_flops / fwd}


def breakdown(card_path, plan, x, full_tokens, shard_file, reps):
    """extract_shard's per-minibatch steps on one minibatch x, each timed `reps` times with the
    package's own pieces (reducers made once, as extract_shard makes them per shard, with room for
    every repeat); min and median per step. The bare forward and the forward with taps alternate.
    Fixed costs: model build, and write_shard of the arrays of the shard extract_shard wrote (read
    back), as extraction writes them."""
    import h5py
    from seelike.cka import gram
    from seelike.extract import (GramReducer, LayerStream, PooledReducer, TokenReducer, check_finite, checkpoint_verified,
                                 select_layers)
    from seelike.models import LayerTaps, ModelCard, build_model, verify_checkpoint
    from seelike.store import write_shard

    card = ModelCard.load(card_path)
    model, t_build = timed(lambda: build_model(card, Path(card_path).parent, device="cpu", verify=False))
    _, t_verify = timed(lambda: verify_checkpoint(Path(card_path).parent / card.checkpoint, card.sha256))

    def startup():
        # as extract_shard starts: the checkpoint hashed in a thread while the model is built, joined
        # here (extraction joins after its last minibatch: there the rest of the hash runs beside the
        # data loading and the forward instead of being waited for)
        with checkpoint_verified(card, card_path):
            return build_model(card, Path(card_path).parent, device="cpu", verify=False)

    t_startup = min(timed(startup)[1] for _ in range(3))
    layer_specs = select_layers(model, card, False)
    layers = [l["name"] for l in layer_specs]
    sp = plan.shard(0)
    n = x.shape[0]
    idx, pos = sp.example_indices[:n], np.arange(n)
    steps = ("bare", "forward_with_taps", "streamed", "check_finite", "gram", "pooled", "tokens", "logits",
             "gram_products")
    t = {k: [] for k in steps}
    tc = {k: [] for k in steps}                            # process CPU time of the same calls

    def clock(key, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        t[key].append(time.perf_counter() - w0)
        tc[key].append(time.process_time() - c0)
        return out

    # Reducers as extract_shard makes them: once per shard, with room reserved for its minibatches
    # (here one per repeat), so that each repeat times a minibatch in the steady state of a shard
    streamed_reducers = [GramReducer(layers, minibatches=reps), PooledReducer(layers, card.num_prefix_tokens, examples=reps * n)]
    stream = LayerStream(layers, streamed_reducers)
    with torch.no_grad():
        model(x)                                           # warm-up
        for _ in range(reps):
            clock("bare", lambda: model(x))
            with LayerTaps(model, layer_specs, card.num_prefix_tokens) as taps:
                taps.clear()
                out = clock("forward_with_taps", lambda: model(x))
                acts = {l: taps.outputs[l] for l in layers}
                taps.clear()
            # the forward as extraction runs it: each tapped layer NaN-checked and reduced (Gram,
            # pooled features) inside its hook, then dropped (full tokens, once per plan, left out)
            with LayerTaps(model, layer_specs, card.num_prefix_tokens, consume=stream):
                for r in streamed_reducers:
                    r.begin(pos, idx)
                stream.begin(idx)
                clock("streamed", lambda: model(x))
                stream.end()
    del streamed_reducers, stream
    flops = arithmetic(model, x, acts)
    kept = {"gram": GramReducer(layers, minibatches=reps + 1),
            "pooled": PooledReducer(layers, card.num_prefix_tokens, examples=(reps + 1) * n)}
    for _ in range(reps + 1):                              # first round: warm-up, dropped below
        clock("check_finite", lambda: check_finite(acts, idx))
        for name, r in (("gram", kept["gram"]), ("pooled", kept["pooled"]),
                        ("tokens", TokenReducer(layers, full_tokens, 0))):
            r.begin(pos, idx)
            clock(name, lambda: [r.consume(l, acts[l]) for l in layers])   # what each layer's hook does
        clock("logits", lambda: out.float().cpu().numpy())
        # Not part of extraction: the Grams' products alone (uncentred, no offset pre-check, not kept),
        # so that "gram" - "gram_products" is what centring offset-dominated layers costs
        clock("gram_products", lambda: [gram(acts[l]) for l in layers])
    for k in steps[3:]:                                  # the steps timed on kept activations
        t[k], tc[k] = t[k][1:], tc[k][1:]
    del acts, model, kept
    gc.collect()

    with h5py.File(shard_file, "r") as f:
        kw = dict(model=str(f.attrs["model"]), dataset=str(f.attrs["dataset"]), shard_index=0, n_shards=1,
                  plan=json.loads(f["plan/json"][()]), plan_digest=str(f.attrs["plan_digest"]),
                  layers=json.loads(f.attrs["layers"]), example_indices=f["plan/example_indices"][()],
                  minibatch_ids=f["plan/minibatch_ids"][()], provenance=json.loads(f.attrs["provenance"]),
                  arrays={d: f[d][()] for d in json.loads(f.attrs["datasets"]) if not d.startswith("plan/")})
    tmp_out = Path(shard_file).with_name("rewrite.h5")

    def write(**shard):
        # as the extract rule writes: a new file (Snakemake removes a job's old outputs before it
        # runs), so the old one's unlink, 10 ms for 49 MB on this VM's ext4 with discard, is not timed
        tmp_out.unlink(missing_ok=True)
        return timed(lambda: write_shard(tmp_out, **shard))[1]

    writes = [write(**kw) for _ in range(2)]
    # the same shard without the full tokens (which only the plan's first shard holds)
    kw["arrays"] = {d: a for d, a in kw["arrays"].items() if not d.endswith("/tokens")}
    writes_nt = [write(**kw) for _ in range(2)]
    # ... and as a shard of the paper config's 8 minibatches: every per-minibatch array (Grams, pooled
    # features, logits, labels, the plan's rows) repeated up to 8 minibatches' rows
    k = len(np.unique(kw["minibatch_ids"]))                 # (the plan's minibatch ids are per example)
    kw8 = dict(kw, example_indices=_rows_at(kw["example_indices"], k, 8),
               minibatch_ids=np.repeat(np.arange(8), len(kw["minibatch_ids"]) // k),
               arrays={d: _rows_at(a, k, 8) for d, a in kw["arrays"].items()})
    if any(len(a) * k != len(b) * 8 for a, b in zip(kw8["arrays"].values(), kw["arrays"].values())):
        raise AssertionError("an array of the 8-minibatch shard does not have 8 minibatches' rows")
    writes_8 = [write(**kw8) for _ in range(3)]
    tmp_out.unlink()
    return {**flops, "per_minibatch_min_s": {k: min(v) for k, v in t.items()},
            "per_minibatch_median_s": {k: statistics.median(v) for k, v in t.items()},
            "per_minibatch_min_cpu_s": {k: min(v) for k, v in tc.items()},
            "reps": reps, "build_model_s": t_build, "verify_checkpoint_s": t_verify,
            "startup_s": t_startup, "hdf5_write_s": min(writes),
            "hdf5_write_without_tokens_s": min(writes_nt), "hdf5_write_at_8_s": min(writes_8)}


def _rows_at(a: np.ndarray, k: int, minibatches: int) -> np.ndarray:
    """A shard array of k minibatches (its first axis k minibatches' rows: Grams, pooled features,
    logits) repeated or cut to ``minibatches`` minibatches' rows."""
    a = np.asarray(a)
    rows = len(a) * minibatches // k
    return np.concatenate([a] * -(-minibatches // k))[:rows]


def breakdown_repeats(bare_s_per_minibatch: float) -> int:
    """The breakdown's default repeat count for a config whose bare forward of one minibatch takes
    ``bare_s_per_minibatch``: the min over repeats estimates each step's floor, which needs more
    samples where a step is short next to the interruptions of a shared VM."""
    lo, hi = BREAKDOWN_REPS
    return max(lo, min(hi, int(BREAKDOWN_SECONDS / (3 * max(bare_s_per_minibatch, 1e-3)))))


def bench_config(name, arch, kwargs, size, k, repeats, b, full_tokens, tmp: Path, breakdown_reps: int | None):
    from seelike.data import dataset_fingerprint, dataset_size
    from seelike.extract import extract_shard
    from seelike.models import ModelCard, build_model
    from seelike.plan import make_plan

    n = k * b
    ds_cfg = dataset_cfg(max(n, 256))
    ds_cfg["image_size"] = size
    card_path = make_model_dir(tmp / "models", name, arch, kwargs, seed=0, input_size=(3, size, size))
    card = ModelCard.load(card_path)
    plan = make_plan(f"{DATASET_KEY}:{dataset_fingerprint(ds_cfg)}", np.arange(dataset_size(ds_cfg, "analysis")),
                     n, b, k, 0)
    batches = render_batches(ds_cfg, plan)
    model = build_model(card, card_path.parent, device="cpu")
    spec = extract_spec(name, card_path, ds_cfg, plan, tmp / "extract" / name, full_tokens)

    # warm-up, untimed: one forward of a full minibatch (thread pools, oneDNN primitives for this shape)
    with torch.no_grad():
        model(batches[0])
    rec = {"config": name, "family": card.family, "arch": arch, "kwargs": kwargs, "image_size": size, "minibatch": b, "k": k,
           "layers": len(card.layers), "bare_s": [], "extract_shard_s": [], "bare_cpu_s": [],
           "extract_shard_cpu_s": [], "load": []}
    for r in range(repeats):
        rec["load"].append(load_avg())
        print(f"# {name}: repeat {r} (load {rec['load'][-1]})", file=sys.stderr, flush=True)
        gc.collect()
        w, c = timed2(lambda: bare_forward(model, batches))
        rec["bare_s"].append(w)
        rec["bare_cpu_s"].append(c)
        gc.collect()
        w, c = timed2(lambda: extract_shard(spec, 0))
        rec["extract_shard_s"].append(w)
        rec["extract_shard_cpu_s"].append(c)
    del model
    gc.collect()
    rec["data_loading_s"] = timed(lambda: data_only(ds_cfg, plan))[1]
    shard_file = Path(spec["out"].format(shard=0))
    rec["shard_bytes"] = shard_file.stat().st_size
    print(f"# {name}: breakdown", file=sys.stderr, flush=True)
    if breakdown_reps is None:
        breakdown_reps = breakdown_repeats(statistics.median(rec["bare_s"]) / k)
    rec["breakdown"] = bd = breakdown(card_path, plan, batches[0], full_tokens, shard_file, breakdown_reps)
    bare, ext = statistics.median(rec["bare_s"]), statistics.median(rec["extract_shard_s"])
    m = bd["per_minibatch_min_s"]
    # Steady state per minibatch (min over repeats: robust to other processes): what the loop adds to
    # the bare forward -- hooks, NaN check, Gram, pooled features, logits, data loading. Full tokens
    # are kept for the plan's first `full_tokens` examples only: a per-plan cost, listed apart.
    # The streamed forward (extraction's own loop: hooks, NaN check, Gram and pooled features of each
    # layer while its output is fresh in cache) is the steady state; the steps timed one by one on
    # activations kept from an earlier forward ("parts") explain it.
    steady = m["streamed"] + m["logits"] + rec["data_loading_s"] / k
    parts = (m["forward_with_taps"] + m["check_finite"] + m["gram"] + m["pooled"] + m["logits"]
             + rec["data_loading_s"] / k)
    rec.update({
        "bare_median_s": bare, "extract_shard_median_s": ext,
        "bare_img_s": n / bare, "extract_img_s": n / ext,
        "overhead_pct": 100.0 * (ext / bare - 1.0),
        "overhead_cpu_pct": 100.0 * (statistics.median(rec["extract_shard_cpu_s"])
                                     / statistics.median(rec["bare_cpu_s"]) - 1.0),
        "overhead_vs_loader_plus_forward_pct": 100.0 * (ext / (bare + rec["data_loading_s"]) - 1.0),
        "per_minibatch_overhead_pct": 100.0 * (steady / m["bare"] - 1.0),
        "per_minibatch_overhead_cpu_pct": 100.0 * ((sum(bd["per_minibatch_min_cpu_s"][kk] for kk in (
            "streamed", "logits")) + rec["data_loading_s"] / k)
            / bd["per_minibatch_min_cpu_s"]["bare"] - 1.0),
        "per_minibatch_overhead_excl_data_pct": 100.0 * ((steady - rec["data_loading_s"] / k) / m["bare"] - 1.0),
        "per_minibatch_parts_overhead_excl_data_pct": 100.0 * ((parts - rec["data_loading_s"] / k) / m["bare"] - 1.0),
        "streamed_pct_of_bare": 100.0 * (m["streamed"] / m["bare"] - 1.0),
        "hooks_pct_of_bare": 100.0 * (m["forward_with_taps"] / m["bare"] - 1.0),
        "gram_pct_of_bare": 100.0 * m["gram"] / m["bare"],
        "gram_flops_pct_of_forward": bd["gram_flops_pct_of_forward"],
        "check_finite_pct_of_bare": 100.0 * m["check_finite"] / m["bare"],
        "pooled_pct_of_bare": 100.0 * m["pooled"] / m["bare"],
        "fixed_per_shard_s": bd["startup_s"] + bd["hdf5_write_at_8_s"],
        # a shard of the paper config's 8 minibatches, fixed costs included: the startup (model build
        # while the checkpoint is hashed) and the write of its Grams, pooled features and logits; full
        # tokens, once per plan, left out
        "overhead_at_8_per_shard_pct": 100.0 * ((8 * steady + bd["startup_s"] + bd["hdf5_write_at_8_s"])
                                                / (8 * m["bare"]) - 1.0),
        "tokens_write_once_per_plan_s": bd["hdf5_write_s"] - bd["hdf5_write_without_tokens_s"],
    })
    # The goal's reading: what taps, Grams and HDF5 writes (and the model build) add to the bare
    # forward of a shard of 8 minibatches. Data loading is left out: the bare forward runs on
    # images already in memory, and any loop over the dataset loads them alike (reported apart).
    rec["goal_pct"] = 100.0 * ((8 * (steady - rec["data_loading_s"] / k) + bd["startup_s"] + bd["hdf5_write_at_8_s"])
                               / (8 * m["bare"]) - 1.0)
    rec["data_loading_pct_of_bare"] = 100.0 * rec["data_loading_s"] / k / m["bare"]
    # The CPU goal's reading: the overhead beyond the Grams' own flop share, in percentage points.
    rec["goal_minus_gram_flops_pts"] = rec["goal_pct"] - rec["gram_flops_pct_of_forward"]
    rec["cpu_goal_met"] = bool(rec["goal_minus_gram_flops_pts"] <= CPU_GOAL_POINTS)
    rec["gpu_goal_25pct_met_on_cpu"] = bool(rec["goal_pct"] <= GPU_GOAL_PCT)
    shutil.rmtree(tmp / "extract", ignore_errors=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minibatch", type=int, default=256)
    ap.add_argument("--full-tokens", type=int, default=64)
    ap.add_argument("--configs", default=None, help=f"comma-separated subset of {', '.join(FULL)} (also {', '.join(PAPER_SIZE)}, "
                    f"{', '.join(QUICK)})")
    ap.add_argument("--repeats", type=int, default=None, help="override every config's repeat count")
    ap.add_argument("--breakdown-reps", type=int, default=None,
                    help=f"repeats of each step in the breakdown (min kept); default: as many as fit "
                         f"{BREAKDOWN_SECONDS:g} s of its forward passes, {BREAKDOWN_REPS[0]} to {BREAKDOWN_REPS[1]}")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc thresholds as they are (extraction jobs raise them; see seelike.allocator)")
    ap.add_argument("--out", type=Path, default=OUT / "bench_extract.json")
    args = ap.parse_args(argv)

    # As in an extraction job (seelike.submit.Step): freed activations stay in the process. Bare and
    # extraction run in this one process, so the bare forward gets the same allocator.
    retained = False if args.default_malloc else retain_freed_memory()
    torch.set_num_threads(args.threads)
    configs = QUICK if args.quick else FULL
    b = 64 if args.quick else args.minibatch
    ft = 8 if args.quick else args.full_tokens
    if args.configs:
        known = {**FULL, **PAPER_SIZE, **QUICK}
        unknown = [c for c in args.configs.split(",") if c and c not in known]
        if unknown:
            ap.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
        configs = {c: known[c] for c in args.configs.split(",") if c}
    t_start, load_start = time.perf_counter(), os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="seelike-bench-extract-"))
    records = []
    try:
        for name, (arch, kw, size, k, reps) in configs.items():
            records.append(bench_config(name, arch, kw, size, k, args.repeats or reps, b, ft, tmp,
                                        1 if args.quick else args.breakdown_reps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = dict(host_meta(args.threads), quick=args.quick, minibatch_size=b, full_tokens=ft, retain_freed_memory=retained,
                goal=(f"CPU: extraction overhead beyond the Grams' own flop share (GOAL - Gram flops) at most "
                      f"{CPU_GOAL_POINTS:g} percentage points at the default minibatch size, for every family; "
                      f"GPU (gpu_check.py): at most {GPU_GOAL_PCT:g}% over the bare forward"),
                cpu_goal_points=CPU_GOAL_POINTS, gpu_goal_pct=GPU_GOAL_PCT,
                cpu_goal_met_by_family={fam: all(r["cpu_goal_met"] for r in records if r["family"] == fam)
                                        for fam in sorted({r["family"] for r in records})},
                total_wall_s=time.perf_counter() - t_start, load_average_start=load_start,
                load_average_end=os.getloadavg())
    print_table(records, meta)
    write_json_atomic(args.out, {"meta": meta, "results": records}, indent=1, nan_as_null=True)
    print(f"\nwrote {args.out} ({meta['total_wall_s']:.0f} s)")


def print_table(records, meta: dict):
    hdr = (f"{'config':<14} {'family':<6} {'b':>4} {'k':>2} {'bare img/s':>10} {'extract img/s':>13} {'overhead':>9} "
           f"{'cpu ovh':>8} {'steady/mb':>9} {'excl data':>9} {'parts':>6} {'at k=8':>7} {'hooks':>6} {'Gram':>6} {'NaN chk':>7} "
           f"{'pooled':>6} {'data':>6} {'GOAL':>6}  {'<=25% (GPU)':<11} {'Gram flops':>10} {'GOAL-Gram':>9}  CPU goal <=10 pts")
    print(hdr)
    print("-" * len(hdr))
    for r in records:
        ok = "met" if r["gpu_goal_25pct_met_on_cpu"] else "NOT met"
        ok_cpu = "met" if r["cpu_goal_met"] else "NOT met"
        print(f"{r['config']:<14} {r['family']:<6} {r['minibatch']:>4} {r['k']:>2} {r['bare_img_s']:>10.1f} {r['extract_img_s']:>13.1f} "
              f"{r['overhead_pct']:>8.1f}% {r['overhead_cpu_pct']:>7.1f}% {r['per_minibatch_overhead_pct']:>8.1f}% "
              f"{r['per_minibatch_overhead_excl_data_pct']:>8.1f}% {r['per_minibatch_parts_overhead_excl_data_pct']:>5.1f}% "
              f"{r['overhead_at_8_per_shard_pct']:>6.1f}% {r['hooks_pct_of_bare']:>5.1f}% {r['gram_pct_of_bare']:>5.1f}% "
              f"{r['check_finite_pct_of_bare']:>6.1f}% {r['pooled_pct_of_bare']:>5.1f}% "
              f"{r['data_loading_pct_of_bare']:>5.1f}% {r['goal_pct']:>5.1f}%  {ok:<11} "
              f"{r['gram_flops_pct_of_forward']:>9.1f}% {r['goal_minus_gram_flops_pts']:>5.1f} pts  {ok_cpu}")
    print("overhead: extract_shard of a k-minibatch shard (model build, data, hooks, reductions, HDF5 write) / bare\n"
          "  forward of the same k minibatches - 1, medians over repeats (wall; cpu ovh: process CPU time);\n"
          "steady/mb: per minibatch, min over repeats: (streamed forward -- every layer NaN-checked, its Gram and\n"
          "  pooled features taken inside its hook, as extraction runs -- + logits + data loading) / bare forward - 1;\n"
          "  excl data: the same without data loading; parts: excl data, with the steps timed one by one on kept\n"
          "  activations instead of the streamed forward (forward with taps + NaN check + Gram + pooled + logits);\n"
          "  at k=8: with the fixed per-shard costs (model build, checkpoint sha256, HDF5 write without the\n"
          "  once-per-plan full tokens)\n"
          "  spread over the paper config's 8 minibatches per shard;\n"
          "hooks, Gram, NaN chk, pooled, data: each step's time as % of the bare forward (per minibatch, min);\n"
          "GOAL: what the goal names -- taps, Grams, HDF5 writes (+ model build) -- over the bare forward of an\n"
          "  8-minibatch shard: 'at k=8' without data loading, which the in-memory bare forward does not do;\n"
          "Gram flops: the Grams' floating-point operations as % of the forward's (matmuls and convolutions):\n"
          "  the Grams' share at the forward's flop rate (seelike's panels do 3/4 of the plain 2 b^2 D at b = 256;\n"
          "  an ideal symmetric product would do 1/2);\n"
          "GOAL-Gram: GOAL - Gram flops, percentage points: the overhead beyond the Grams' own flop share. CPU goal:\n"
          f"  at most {CPU_GOAL_POINTS:g} points for every family; '<=25% (GPU)': GOAL against the GPU goal, for reference")
    fams = sorted({r["family"] for r in records})
    print("CPU goal by family: " + ", ".join(
        f"{fam} {'met' if all(r['cpu_goal_met'] for r in records if r['family'] == fam) else 'NOT met'}"
        f" (max {max(r['goal_minus_gram_flops_pts'] for r in records if r['family'] == fam):.1f} pts)" for fam in fams))
    print("\nper-minibatch steps, seconds (min over the breakdown's repeats), and fixed costs per shard:")
    keys = ["bare", "forward_with_taps", "streamed", "check_finite", "gram", "pooled", "tokens", "logits",
            "gram_products"]
    short = {"forward_with_taps": "fwd+taps", "check_finite": "NaN check", "tokens": "tokens*",
             "gram_products": "(products)"}
    print(f"{'config':<14} {'reps':>4} " + " ".join(f"{short.get(k, k)[:13]:>13}" for k in keys)
          + f" {'data/mb':>8} {'build':>6} {'sha256':>6} {'startup':>7} {'hdf5 write':>10} {'w/o tokens':>10}"
          f" {'at k=8':>7}")
    for r in records:
        m, bd = r["breakdown"]["per_minibatch_min_s"], r["breakdown"]
        print(f"{r['config']:<14} {bd['reps']:>4} " + " ".join(f"{m[k]:>13.3f}" for k in keys)
              + f" {r['data_loading_s'] / r['k']:>8.3f} {bd['build_model_s']:>6.3f} {bd['verify_checkpoint_s']:>6.3f}"
                f" {bd['startup_s']:>7.3f} {bd['hdf5_write_s']:>10.3f} {bd['hdf5_write_without_tokens_s']:>10.3f}"
                f" {bd['hdf5_write_at_8_s']:>7.3f}")
    print("(* tokens: the first full_tokens examples of the plan only, a once-per-plan cost. (products): not part\n"
          " of extraction -- the Grams' products alone, uncentred and without the offset pre-check of\n"
          " gram(center='auto'); 'gram' minus it is what the pre-check and centring offset-dominated layers cost.\n"
          " build, sha256: the model build and the checkpoint's hash, each alone; startup: both as extraction\n"
          " starts, the hash in a thread while the model is built (min of 3); hdf5 write: this shard's arrays\n"
          " (k minibatches); w/o tokens: without the full tokens; at k=8: without them, as a shard of 8 minibatches.)")
    print(f"Grams' products: {meta['gram_products']} (torch CPU capability {meta['cpu_capability']}); "
          f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: the vision pass against the Grams' pass and a bare forward, seconds per minibatch.

    python benchmarks/bench_taps.py            # ViT-S/16 and ResNet-50 at 224 px, the demo ViT and ResNet (~8 min on 2 cores)
    python benchmarks/bench_taps.py --quick    # the demo's models only (about a minute)

A model's extraction is two passes over the same plan (seelike.extract._reduce_shard, spec kind
"activations" and "vision"); this times each over the same model, minibatches and images (random
weights: timing does not depend on them):

    forward      model(x) under no_grad, nothing tapped
    Grams' pass  kind "activations": every layer's output tapped and NaN-checked, its Gram, pooled
                 features and full tokens reduced, the logits kept
    vision pass  kind "vision": every layer tapped and NaN-checked, and only the vision reducers
                 `seelike.analyses.reducers.vision_reducers` builds from the model's taps (ViTs:
                 attention distances of every image, attention maps of the first k_a, per-head Grams,
                 norm ratios, localization per-position Grams; CNNs: norm ratios and localization).
                 Its receptive-field gradients (the reducer's result(): one forward with gradients
                 and a backward pass per chosen layer, over the plan's first receptive_field.n_images
                 images, in the shards holding them) are timed apart: column "RF s", per pass.

The taps are those the workflow gives the model: config/config.yaml's for the 224 px cases (vit_b16's
for ViT-S/16, r50x1's for ResNet-50), config/demo.yaml's for the demo models (`vit`, `resnet`),
through seelike.registry.extraction_taps; full tokens are the config's extraction.full_tokens. Every
minibatch of the benchmark's shard is inside localization's n_images (the paper's 2048 of 10240), so
the localization Grams are counted on every minibatch: an upper bound for the pass as a whole.

The loop is extraction's own (the same reducers, hooks, finiteness check and result()s; data loading
and the HDF5 write are left out, they are the same for both passes), with the allocator setting of
seelike's job processes (`seelike.allocator.retain_freed_memory`; `--default-malloc` switches it off).
Methods run round-robin within
a repeat so background load hits all alike; the median over repeats is reported. Goal: the vision
pass (receptive fields apart) costs at most 1.5x the Grams' pass per minibatch: one more forward pass
by design, its reductions at most 50% over the Grams' pass. Writes benchmarks/out/bench_taps.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import seelike.models.archs  # noqa: F401
from seelike.allocator import retain_freed_memory
from seelike.analyses.reducers import ReceptiveFieldReducer, vision_reducers
from seelike.extract import Batch, GramReducer, LayerStream, PooledReducer, TokenReducer, attached
from seelike.fileio import write_json_atomic
from seelike.models.card import ModelCard
from seelike.models.layers import LayerTaps, detect_family, enumerate_layers

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parents[1]
GOAL = 1.5   # vision pass / Grams' pass, per minibatch, receptive fields apart
CASES = {   # config: whose taps and full_tokens (config file, model)
    "vit_small_patch16_224": dict(arch="vit_small_patch16_224", kwargs={}, size=224, batch=32,
                                  config=("paper", "vit_b16")),
    "resnet50": dict(arch="resnet50", kwargs={}, size=224, batch=32, config=("paper", "r50x1")),
    "demo_vit": dict(arch="vit_tiny_patch16_224", size=32, batch=64, config=("demo", "vit"),
                     kwargs=dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0,
                                 num_classes=10)),
    "demo_resnet": dict(arch="resnet18", size=32, batch=64, config=("demo", "resnet"),
                        kwargs=dict(num_classes=10, channels=[32, 64, 128, 256])),
}
QUICK = ("demo_vit", "demo_resnet")


def workflow_taps(which: str, model: str, _cache={}) -> tuple[dict, int]:
    """(the vision pass's taps, extraction.full_tokens) the workflow gives `model` in config/config.yaml
    ("paper") or config/demo.yaml ("demo")."""
    from seelike import registry

    if which not in _cache:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_storage import demo_setup, paper_config

        if which == "paper":
            with tempfile.TemporaryDirectory(prefix="seelike-bench-taps-") as tmp:
                _cache[which] = paper_config(Path(tmp))
        else:
            _cache[which] = demo_setup()[0]
    cfg = _cache[which]
    return registry.extraction_taps(cfg, model), int(cfg["extraction"]["full_tokens"])


def make_case(name: str, batch: int | None = None):
    import timm

    c = dict(CASES[name])
    if batch:
        c["batch"] = batch
    torch.manual_seed(0)
    model = timm.create_model(c["arch"], **c["kwargs"]).eval()
    family = detect_family(model)
    layers = enumerate_layers(model, family)
    card = ModelCard(name=name, arch=c["arch"], kwargs={}, family=family, source={"kind": "recipe"},
                     checkpoint="w.safetensors", sha256="0" * 64, layers=layers,
                     num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
                     input_size=[3, c["size"], c["size"]], num_classes=1000, pretrained_cfg={})
    x = torch.randn(c["batch"], 3, c["size"], c["size"])
    taps, full_tokens = workflow_taps(*c["config"])
    return model, card, layers, x, taps, full_tokens


def run_pass(kind: str, model, card, layers, x, taps: dict, full_tokens: int, minibatches: int) -> tuple[float, float]:
    """One shard (shard 0) of `minibatches` minibatches of x through extraction's loop for pass `kind`
    ("activations" or "vision"), reducers built as seelike.extract._reduce_shard builds them, then every
    reducer's result(). Returns (seconds of everything but the receptive fields, seconds of the
    receptive-field reducer's result())."""
    t0 = time.perf_counter()
    names = [l["name"] for l in layers]
    vision = kind == "vision"
    if vision:
        reducers = vision_reducers(taps, model=model, card=card, model_name=card.name, layer_specs=layers,
                                   shard_offset=0, device=x.device, minibatches=minibatches)
    else:
        reducers = [GramReducer(names, minibatches=minibatches),
                    PooledReducer(names, card.num_prefix_tokens, examples=minibatches * len(x)),
                    TokenReducer(names, full_tokens, 0)]
    n = len(x)
    logits = []
    stream = LayerStream(names, reducers)    # each layer checked and reduced inside its hook, as in extraction
    with LayerTaps(model, layers, card.num_prefix_tokens, consume=stream), attached(reducers, model), torch.no_grad():
        for mb in range(minibatches):
            pos = np.arange(mb * n, (mb + 1) * n)
            for r in reducers:
                r.begin(pos, pos)
            stream.begin(pos)
            out = model(x)
            stream.end()
            batch = Batch(mb, pos, pos, card.num_prefix_tokens, inputs=x)
            for r in reducers:
                r.update(batch)
            if not vision:
                logits.append(out.float().cpu().numpy())
    rf = 0.0
    for r in reducers:
        t = time.perf_counter()
        r.result()
        if isinstance(r, ReceptiveFieldReducer):
            rf += time.perf_counter() - t
    return time.perf_counter() - t0 - rf, rf


def bare_forward(model, x, minibatches: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(minibatches):
            model(x).float().cpu().numpy()
    return time.perf_counter() - t0, 0.0


def bench(name: str, repeats: int, minibatches: int, batch: int | None = None) -> dict:
    model, card, layers, x, taps, k = make_case(name, batch)
    methods = {"forward": lambda: bare_forward(model, x, minibatches),
               "grams": lambda: run_pass("activations", model, card, layers, x, taps, k, minibatches),
               "vision": lambda: run_pass("vision", model, card, layers, x, taps, k, minibatches)}
    for fn in methods.values():   # warm-up
        fn()
    times = {m: [] for m in methods}
    rf_times = []
    for _ in range(repeats):
        for m, fn in methods.items():
            s, rf = fn()
            times[m].append(s / minibatches)
            if m == "vision":
                rf_times.append(rf)
    med = {m: statistics.median(v) for m, v in times.items()}
    low = {m: min(v) for m, v in times.items()}
    rf = taps.get("receptive_field")
    rf_images = min(int(rf["n_images"]), minibatches * len(x)) if rf else 0
    rf_s = statistics.median(rf_times) if rf else None
    return {"case": name, "arch": CASES[name]["arch"], "image_size": CASES[name]["size"], "batch": len(x),
            "minibatches_per_shard": minibatches, "taps_from": list(CASES[name]["config"]), "taps": taps,
            "full_tokens": k, "seconds_per_minibatch": med, "all_seconds_per_minibatch": times,
            "vision_over_grams": med["vision"] / med["grams"], "vision_over_forward": med["vision"] / med["forward"],
            "grams_over_forward": med["grams"] / med["forward"], "min_seconds_per_minibatch": low,
            "vision_over_grams_min": low["vision"] / low["grams"], "vision_over_forward_min": low["vision"] / low["forward"],
            "receptive_field": {"images": rf_images, "layers": rf["layers"] if rf else None,
                                "seconds": rf_s, "all_seconds": rf_times,
                                "seconds_per_image": rf_s / rf_images if rf else None,
                                "per_image_over_forward_per_image":
                                    (rf_s / rf_images) / (med["forward"] / len(x)) if rf else None},
            "goal": f"vision pass / Grams' pass <= {GOAL}", "goal_met": med["vision"] / med["grams"] <= GOAL}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the demo's small models only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minibatches", type=int, default=4, help="minibatches per shard (the reducers' setup is per shard)")
    ap.add_argument("--batch", type=int, help="override every case's batch size")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), help="default: all (--quick: the demo's)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="glibc's default malloc thresholds instead of the job processes' setting")
    ap.add_argument("--out", default=str(OUT / "bench_taps.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)
    retained = False if args.default_malloc else retain_freed_memory()
    cases = args.cases or (QUICK if args.quick else tuple(CASES))
    load0 = os.getloadavg()[0]
    print("seconds per minibatch (median over repeats; reducers set up once per shard of "
          f"{args.minibatches} minibatches); (min): the ratio of the fastest repeats; RF s: the vision pass's "
          "receptive-field gradients, per pass (median)")
    print(f"{'case':24s} {'batch':>5s} {'forward s':>10s} {'Grams s':>8s} {'vision s':>9s} "
          f"{'vis/Grams':>9s} {'vis/fwd':>8s} {'Grams/fwd':>9s} {'(min) vis/Grams':>15s} {'RF s':>7s} {'RF imgs':>7s} "
          f"{'goal':>5s}", flush=True)
    rows = []
    for c in cases:
        r = bench(c, args.repeats, args.minibatches, args.batch)
        rows.append(r)
        s, rf = r["seconds_per_minibatch"], r["receptive_field"]
        rf_s = f"{rf['seconds']:7.2f}" if rf["seconds"] is not None else f"{'-':>7s}"
        print(f"{r['case']:24s} {r['batch']:5d} {s['forward']:10.3f} {s['grams']:8.3f} {s['vision']:9.3f} "
              f"{r['vision_over_grams']:9.2f} {r['vision_over_forward']:8.2f} {r['grams_over_forward']:9.2f} "
              f"{r['vision_over_grams_min']:15.2f} {rf_s} {rf['images']:7d} {'met' if r['goal_met'] else 'NOT':>5s}", flush=True)
    out = Path(args.out)
    write_json_atomic(out, {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                        "threads": args.threads, "torch": torch.__version__},
                            "retain_freed_memory": retained,
                            "load_average": {"start": load0, "end": os.getloadavg()[0]},
                            "repeats": args.repeats, "goal": f"vision pass / Grams' pass <= {GOAL}",
                            "results": rows}, nan_as_null=True)
    print(f"load average: {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

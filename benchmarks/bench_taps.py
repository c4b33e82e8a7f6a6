"""Benchmark: extraction time per minibatch with every vision tap on, with them off, and a bare forward pass.

    python benchmarks/bench_taps.py            # ViT-S/16 and ResNet-50 at 224 px, the demo ViT (a few minutes on 2 cores)
    python benchmarks/bench_taps.py --quick    # small models only (seconds)

Three ways over the same model, batch and images (random weights: timing does not depend on them):

    forward    model(x) under no_grad, nothing tapped
    taps off   what extraction does without `analyses:`: the layers' outputs tapped, their Grams,
               pooled features and full tokens reduced (seelike.extract's reducers)
    taps on    the same plus every vision reducer extraction switches on for the model
               (seelike.analyses.reducers: attention distances and maps, per-head Grams, norm ratios,
               per-position Grams for localization)

The loop is extraction's own (the same reducers, hooks and finiteness check; data loading and the
HDF5 write are left out, they do not change with the taps). Methods run round-robin within a repeat so
background load hits all alike; the median over repeats is reported. Goal: "taps on" costs at most
50% more than "taps off". Writes benchmarks/out/bench_taps.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import seelike.models.archs  # noqa: F401
from seelike.analyses.reducers import vision_reducers
from seelike.extract import Batch, GramReducer, LayerStream, PooledReducer, TokenReducer, attached
from seelike.models.card import ModelCard
from seelike.models.layers import LayerTaps, detect_family, enumerate_layers

OUT = Path(__file__).resolve().parent / "out"
ALL_TAPS = {"attention_distance": {"n_images": 10**9}, "attention_maps": {"n_images": 8}, "heads": {"blocks": 3},
            "norm_ratio": {}, "localization": {"positions": [[0.1, 0.1], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1],
                                                             [0.9, 0.9]], "n_images": 10**9, "layer": None}}
CASES = {
    "vit_small_patch16_224": dict(arch="vit_small_patch16_224", kwargs={}, size=224, batch=32),
    "resnet50": dict(arch="resnet50", kwargs={}, size=224, batch=32),
    "demo_vit": dict(arch="vit_tiny_patch16_224", size=32, batch=64,
                     kwargs=dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0,
                                 num_classes=10)),
    "demo_resnet": dict(arch="resnet18", size=32, batch=64, kwargs=dict(num_classes=10, channels=[32, 64, 128, 256])),
}
QUICK = ("demo_vit", "demo_resnet")


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
    taps = {k: v for k, v in ALL_TAPS.items()
            if family == "vit" or k in ("norm_ratio", "localization")}
    return model, card, layers, x, taps


def run_extraction(model, card, layers, x, taps: dict | None, minibatches: int) -> None:
    """`minibatches` minibatches of x through extraction's loop, as one shard, and the reducers' results."""
    names = [l["name"] for l in layers]
    reducers = [GramReducer(names), PooledReducer(names, card.num_prefix_tokens), TokenReducer(names, 8, 0)]
    if taps:
        reducers += vision_reducers(taps, model=model, card=card, model_name=card.name, layer_specs=layers,
                                    shard_offset=0, device=x.device)
    n = len(x)
    stream = LayerStream(names, reducers)    # each layer checked and reduced inside its hook, as in extraction
    with LayerTaps(model, layers, card.num_prefix_tokens, consume=stream), attached(reducers, model), torch.no_grad():
        for mb in range(minibatches):
            idx = np.arange(mb * n, (mb + 1) * n)
            for r in reducers:
                r.begin(idx, idx)
            stream.begin(idx)
            out = model(x)
            stream.end()
            batch = Batch(mb, idx, idx, card.num_prefix_tokens, inputs=x)
            for r in reducers:
                r.update(batch)
            out.float().cpu().numpy()
    for r in reducers:
        r.result()


def bare_forward(model, x, minibatches: int) -> None:
    with torch.no_grad():
        for _ in range(minibatches):
            model(x).float().cpu().numpy()


def bench(name: str, repeats: int, minibatches: int, batch: int | None = None) -> dict:
    model, card, layers, x, taps = make_case(name, batch)
    methods = {"forward": lambda: bare_forward(model, x, minibatches),
               "taps off": lambda: run_extraction(model, card, layers, x, None, minibatches),
               "taps on": lambda: run_extraction(model, card, layers, x, taps, minibatches)}
    for fn in methods.values():   # warm-up
        fn()
    times = {m: [] for m in methods}
    for _ in range(repeats):
        for m, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[m].append((time.perf_counter() - t0) / minibatches)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {"case": name, "arch": CASES[name]["arch"], "image_size": CASES[name]["size"], "batch": len(x),
            "minibatches_per_shard": minibatches, "taps": sorted(taps), "seconds_per_minibatch": med,
            "all_seconds_per_minibatch": times, "taps_on_over_off": med["taps on"] / med["taps off"],
            "taps_off_over_forward": med["taps off"] / med["forward"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the demo's small models only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--minibatches", type=int, default=4, help="minibatches per shard (the reducers' setup is per shard)")
    ap.add_argument("--batch", type=int, help="override every case's batch size")
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), help="default: all (--quick: the demo's)")
    ap.add_argument("--out", default=str(OUT / "bench_taps.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.cases or (QUICK if args.quick else tuple(CASES))
    print("seconds per minibatch (median over repeats; reducers set up once per shard of "
          f"{args.minibatches} minibatches)")
    print(f"{'case':24s} {'batch':>5s} {'forward s':>10s} {'taps off s':>11s} {'taps on s':>10s} "
          f"{'on/off':>7s} {'off/fwd':>8s}", flush=True)
    rows = []
    for c in cases:
        r = bench(c, args.repeats, args.minibatches, args.batch)
        rows.append(r)
        s = r["seconds_per_minibatch"]
        print(f"{r['case']:24s} {r['batch']:5d} {s['forward']:10.3f} {s['taps off']:11.3f} {s['taps on']:10.3f} "
              f"{r['taps_on_over_off']:7.2f} {r['taps_off_over_forward']:8.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "threads": args.threads, "torch": torch.__version__},
                               "repeats": args.repeats, "results": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the pipeline question users face -- CKA of every pair of 4 models on 4096 examples.

    python benchmarks/bench_pipeline.py                # full run, 1 round (~3-4 min on 2 idle cores)
    python benchmarks/bench_pipeline.py --repeats 4    # what benchmarks/README.md reports
    python benchmarks/bench_pipeline.py --threads 1 --repeats 2   # on a busy machine
    python benchmarks/bench_pipeline.py --quick        # tiny smoke run (~30 s)

Needs `pip install pytorch-cka` (the `bench` extra). Writes benchmarks/out/bench_pipeline.json.
Goal: the 10 CKA tables (6 cross-model pairs, 4 within-model) at least 3x faster in wall time than
pytorch-cka pair by pair, with the same values.

Compared, on the same 4 models (randomly initialised timm models, weights fixed by a seed and saved
as seelike model cards), the same images (the synthetic 32 px dataset of seelike.data, rendered on
the fly by both) in the same order and the same minibatches:

(a) seelike: `make_plan`, the split's images rendered once into a file (the `render` rule; each
    pytorch-cka pair renders them again through its DataLoader, as a user's loop would), then per
    model every shard through `seelike.extract.extract_shard` (real
    HDF5 shards: Grams, pooled CLS/mean features, logits, `full_tokens` full token maps) and
    `seelike.manifest.write_manifest` (validates every shard, sha256), then
    `seelike.cka_tables.cka_table` for the 6 cross-model pairs and the 4 within-model tables, all
    from the stored Grams (each table re-validates the shards it reads, as the cka rule does).
    This is what the `extract` and `cka` rules run, called inline (no Snakemake, no submitit).
(b) pytorch-cka: `cka.compute_cka(model_x, model_y, loader, layers=..., model2_layers=...)` once
    per pair (its model-pair API: hooks, a forward pass of both models over the DataLoader for
    every pair; one forward when both are the same model object, used for the within tables).
    Models are built once outside the timed region (in seelike, building the model from its card
    is inside `extract_shard` and counted).

Estimator: pytorch-cka sums the *unbiased* HSIC (Song et al. 2012) of every minibatch and takes
CKA = sum HSIC_xy / sqrt(sum HSIC_xx * sum HSIC_yy), clipped to [0, 1] -- the minibatch CKA of
Nguyen et al. 2021. seelike's `estimator: unbiased` is the same estimator (mean instead of sum:
the same ratio), so those two are compared value by value; seelike's `biased` tables are timed
too and their distance to pytorch-cka is reported only to show the size of the estimator choice.

Layers: every block (ViT/Mixer) or residual unit (ResNet) the model card lists; pytorch-cka hooks
the same modules (it flattens the NCHW / token maps; seelike takes token layout; same Gram).

Timing: wall and process CPU time (all threads) of each step. Other processes on a small
machine inflate wall time, and with 2 torch threads on 2 busy cores every parallel region waits
for a descheduled thread (small ops were 10-30x slower at load 6); `--threads 1` and the CPU-time
rows are then the reliable figures. Round r runs seelike, then pytorch-cka; medians over rounds.
Full mode took 383 s for 2 rounds at --threads 1 (load 3-5), 772 s for 1 round at 2 threads
(load 6-8).

Sizes (full mode): n = 4096 examples (the goal's size), minibatch 256 (the paper config's
`cka.minibatch_size`), 8 minibatches per shard (paper config), full_tokens 64 (paper config),
`--threads` torch threads (default 2). Models at 32 px (paper-sized models at 224 px would take hours on 2 cores):
    vit_tiny   vit_tiny_patch16_224(img_size=32, patch_size=8): 12 blocks, d 192, 17 tokens
    vit_p4     vit_tiny_patch16_224(img_size=32, patch_size=4, embed_dim=96, depth=6, heads 3,
               mlp_ratio 2): 6 blocks, d 96, 65 tokens
    resnet18   timm resnet18 at 32 px, the demo's widths (channels 32, 64, 128, 256): 8 units,
               8x8x32 .. 1x1x256
    mixer      seelike_mixer(img_size=32, patch_size=8, embed_dim=96, num_blocks=6): 16 tokens
(resnet18 at full width and the Mixer at patch 4 make a full run take about 13.5 min at load 4-8.)
--quick: n = 256, minibatch 64, the demo-sized models (6 blocks, d 96, patch 8; resnet18 with
channels 32..256).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")   # seelike's and pytorch-cka's progress bars

import numpy as np
import torch

from seelike.allocator import retain_freed_memory  # noqa: E402
from seelike.fileio import write_json_atomic  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"

DATASET_KEY = "synth"


def dataset_cfg(n_analysis: int) -> dict:
    return {"kind": "synthetic", "n_classes": 10, "image_size": 32, "seed": 0,
            "splits": {"train": 16, "test": 16, "analysis": int(n_analysis)}}


FULL_MODELS = {
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "num_classes": 10}),
    "vit_p4": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6,
                                        "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 10}),
    "resnet18": ("resnet18", {"num_classes": 10, "channels": [32, 64, 128, 256]}),
    "mixer": ("seelike_mixer", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "num_blocks": 6,
                                "mlp_ratio": [0.5, 2.0], "num_classes": 10}),
}
QUICK_MODELS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 6,
                                     "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 10}),
    "vit_p4": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4,
                                        "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 10}),
    "resnet": ("resnet18", {"num_classes": 10, "channels": [32, 64, 128, 256]}),
    "mixer": ("seelike_mixer", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "num_blocks": 6,
                                "mlp_ratio": [0.5, 2.0], "num_classes": 10}),
}


# ---------------------------------------------------------------------------------------------
# Shared helpers (also imported by bench_extract.py and bench_storage.py)
# ---------------------------------------------------------------------------------------------

def make_model_dir(out_dir: Path, name: str, arch: str, kwargs: dict, seed: int, input_size=(3, 32, 32)):
    """A randomly initialised timm model saved as a seelike model card + checkpoint. Returns the card path."""
    import seelike.models.archs  # noqa: F401  (registers seelike_mixer)
    from seelike.models import CARD_FILENAME, CHECKPOINT_FILENAME, create_timm_model, make_card, save_checkpoint
    from seelike.train_data import synthetic_preprocessing

    torch.manual_seed(seed)
    model = create_timm_model(arch, dict(kwargs), pretrained=False).eval()
    out_dir = Path(out_dir) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(model, out_dir / CHECKPOINT_FILENAME)
    # The card records the preprocessing training on synthetic images records (full image, mean = std
    # = 0.5), so extraction reads the dataset's own tensors, exactly as for a model the workflow
    # trained, and pytorch-cka gets the same pixels; here the "recipe" is a random initialisation.
    card = make_card(name, arch, kwargs, {"kind": "recipe", "recipe": {"benchmark": "random init", "seed": seed}},
                     model, ckpt, input_size=list(input_size), pretrained_cfg=synthetic_preprocessing(input_size[-1]))
    return card.save(out_dir / CARD_FILENAME)


def extract_spec(name: str, card_path: Path, ds_cfg: dict, plan, out_dir: Path, full_tokens: int,
                 rendered: Path | None = None) -> dict:
    """What `seelike step extract` hands each shard's job of the Grams' pass (seelike.specs.extract_spec,
    then specs.shard_job_spec), for a model and a synthetic dataset outside results/: the card, shards
    and rendered split where the benchmark keeps them, data loaded in the job's own process."""
    from seelike import config as sc
    from seelike import specs
    from seelike.models import ModelCard

    card = ModelCard.load(card_path)
    model = {"arch": card.arch, "kwargs": card.kwargs,
             "source": {"kind": "local_file", "path": str(Path(card_path).parent / card.checkpoint)}}
    cfg = sc.load({"run_name": "bench", "device": "cpu", "precision": "fp32", "datasets": {DATASET_KEY: ds_cfg},
                   "models": {name: model}, "analysis": {"dataset": DATASET_KEY, "split": "analysis",
                                              "n_examples": int(plan.n_examples), "seed": 0},
                   "extraction": {"full_tokens": int(full_tokens), "num_workers": 0},
                   "cka": {"minibatch_size": int(plan.minibatch_size)}}, check_timm=False)
    spec = specs.extract_spec(cfg, name)
    del spec["plan_file"]
    spec.pop("rendered", None)
    spec.update(card=str(card_path), out_dir=str(out_dir))
    if rendered is not None:
        spec["rendered"] = str(rendered)
    return specs.shard_job_spec(spec, plan.to_dict())


def seelike_extract_model(spec: dict, plan) -> Path:
    """Every shard of one model, then the manifest: what `seelike step extract` does, inline."""
    from seelike import provenance
    from seelike.extract import extract_shard
    from seelike.manifest import write_manifest

    out_dir = Path(spec["out"]).parent
    files = [Path(extract_shard(spec, s)) for s in range(plan.n_shards)]
    manifest = out_dir / "manifest.json"
    write_manifest(manifest, model=spec["model"], dataset=spec["dataset_key"], plan=plan.to_dict(),
                   plan_digest=plan.digest(), shard_files=files,
                   provenance=provenance.collect(spec["provenance_config"], inputs=[spec["card"]]))
    return manifest


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def versions() -> dict:
    from importlib import metadata as md
    out = {}
    for p in ("seelike", "pytorch-cka", "torch", "timm", "h5py", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def host_meta(threads: int) -> dict:
    """The machine a benchmark ran on, with what decides the Grams' CPU products (seelike.cka.cpu_products:
    oneDNN on AVX-512 CPUs, BLAS elsewhere)."""
    from seelike.cka import cpu_products

    return {"threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gram_products": cpu_products(),
            "versions": versions()}


# ---------------------------------------------------------------------------------------------
# The two pipelines
# ---------------------------------------------------------------------------------------------

def table_matrix(table) -> np.ndarray:
    lx, ly = table.index_x.max() + 1, table.index_y.max() + 1
    m = np.full((lx, ly), np.nan)
    m[table.index_x.to_numpy(), table.index_y.to_numpy()] = table.cka.to_numpy()
    return m


def run_seelike(names, cards, ds_cfg, n, b, k, full_tokens, work: Path, estimators=("unbiased", "biased")):
    """Returns (timings dict, {estimator: {(x, y): matrix}}, bytes on disk)."""
    from seelike.cka_tables import cka_table
    from seelike.data import dataset_fingerprint, dataset_size, rendered_split_name, write_rendered_split
    from seelike.manifest import load_manifest
    from seelike.plan import make_plan

    if work.exists():
        shutil.rmtree(work)
    t = {"extract_s": {}, "cka_s": {}, "extract_cpu_s": {}, "cka_cpu_s": {}}
    t0, c0 = time.perf_counter(), time.process_time()
    plan = make_plan(f"{DATASET_KEY}:{dataset_fingerprint(ds_cfg)}", np.arange(dataset_size(ds_cfg, "analysis")),
                     n, b, k, 0)
    t["plan_s"] = time.perf_counter() - t0
    # the render rule: the split's images, rendered once for every model's extraction
    rendered = write_rendered_split(ds_cfg, "analysis", work / "data" / rendered_split_name(ds_cfg, "analysis"))
    t["render_s"] = time.perf_counter() - t0 - t["plan_s"]
    manifests = {}
    for name in names:
        t1, c1 = time.perf_counter(), time.process_time()
        spec = extract_spec(name, cards[name], ds_cfg, plan, work / "extract" / name, full_tokens, rendered)
        manifests[name] = seelike_extract_model(spec, plan)
        t["extract_s"][name] = time.perf_counter() - t1
        t["extract_cpu_s"][name] = time.process_time() - c1
    t_extract_done, c_extract_done = time.perf_counter(), time.process_time()
    mats = {}
    for est in estimators:
        mats[est] = {}
        for i, x in enumerate(names):
            for y in names[i:]:
                t1, c1 = time.perf_counter(), time.process_time()
                mx = load_manifest(manifests[x])
                my = None if x == y else load_manifest(manifests[y])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    table = cka_table(mx, my, est)
                mats[est][(x, y)] = table_matrix(table)
                t["cka_s"][f"{est}:{x}__{y}"] = time.perf_counter() - t1
                t["cka_cpu_s"][f"{est}:{x}__{y}"] = time.process_time() - c1
    t["extract_total_s"] = t_extract_done - t0
    t["extract_total_cpu_s"] = c_extract_done - c0
    t["cka_total_s"] = {est: sum(v for kk, v in t["cka_s"].items() if kk.startswith(est + ":")) for est in estimators}
    for w in ("", "_cpu"):
        tab = t[f"cka{w}_s"]
        t[f"cka_total{w}_s"] = {est: sum(v for kk, v in tab.items() if kk.startswith(est + ":")) for est in estimators}
        t[f"cka_cross{w}_s"] = {est: sum(v for kk, v in tab.items() if kk.startswith(est + ":")
                                         and kk.split(":")[1].split("__")[0] != kk.split("__")[1]) for est in estimators}
    nbytes = sum(p.stat().st_size for p in work.rglob("*.h5"))
    return t, mats, nbytes


def run_pytorch_cka(names, cards, ds_cfg, plan_indices, b):
    """Pair by pair with pytorch-cka's compute_cka; returns (timings, {(x, y): matrix})."""
    from cka import compute_cka
    from torch.utils.data import DataLoader, Subset
    from seelike.data import open_dataset
    from seelike.models import ModelCard, build_model

    models, layers = {}, {}
    for name in names:          # untimed: pytorch-cka users hold the model objects already
        card = ModelCard.load(cards[name])
        models[name] = build_model(card, Path(cards[name]).parent, device="cpu")
        layers[name] = [l["module"] for l in card.layers]
    ds = open_dataset(ds_cfg, "analysis")
    loader = DataLoader(Subset(ds, [int(i) for i in plan_indices]), batch_size=b, shuffle=False, num_workers=0)
    t, mats = {"pair_s": {}, "pair_cpu_s": {}}, {}
    for i, x in enumerate(names):
        for y in names[i:]:
            t1, c1 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = compute_cka(models[x], models[y], loader, layers=layers[x], model2_layers=layers[y],
                                  device="cpu", progress=False)[0]
            mats[(x, y)] = res.double().numpy()
            t["pair_s"][f"{x}__{y}"] = time.perf_counter() - t1
            t["pair_cpu_s"][f"{x}__{y}"] = time.process_time() - c1
    for w in ("", "_cpu"):
        tab = t[f"pair{w}_s"]
        t[f"total{w}_s"] = sum(tab.values())
        t[f"cross{w}_s"] = sum(v for kk, v in tab.items() if kk.split("__")[0] != kk.split("__")[1])
    del models
    gc.collect()
    return t, mats


def compare(mats_a: dict, mats_b: dict) -> dict:
    diffs, clipped, worst = [], 0, None
    for key, a in mats_a.items():
        bm = mats_b[key]
        d = np.abs(a - bm)
        clipped += int(((a < -1e-9) | (a > 1 + 1e-9)).sum())   # pytorch-cka clips to [0, 1]
        m = float(np.nanmax(d))
        if worst is None or m > worst[1]:
            worst = ("__".join(key), m)
        diffs.append(m)
    return {"max_abs_diff": max(diffs), "worst_pair": worst[0], "seelike_values_outside_0_1": clipped,
            "per_pair_max": {"__".join(k): float(np.nanmax(np.abs(mats_a[k] - mats_b[k]))) for k in mats_a}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n=256, minibatch 64, demo-sized models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--minibatch", type=int, default=256)
    ap.add_argument("--minibatches-per-shard", type=int, default=8)
    ap.add_argument("--full-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of (seelike, pytorch-cka); medians reported (one round ~6-9 min in full mode)")
    ap.add_argument("--workdir", type=Path, default=None, help="where cards and shards go (default: a temp dir)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc thresholds as they are (extraction jobs raise them; see seelike.allocator)")
    ap.add_argument("--out", type=Path, default=OUT / "bench_pipeline.json")
    args = ap.parse_args(argv)

    # seelike's extraction jobs keep freed memory for reuse (seelike.allocator); this process runs
    # both sides, so pytorch-cka's forward passes get the same allocator -- the conservative choice.
    retained = False if args.default_malloc else retain_freed_memory()
    torch.set_num_threads(args.threads)
    # as a job's submission does: seelike's own thread pools (shard hashing) follow the job's threads
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.quick:
        n, b, k, ft, model_defs = 256, 64, 2, 8, QUICK_MODELS
    else:
        n, b, k, ft, model_defs = args.n, args.minibatch, args.minibatches_per_shard, args.full_tokens, FULL_MODELS
    names = list(model_defs)
    ds_cfg = dataset_cfg(max(n, 256))
    tmp = Path(tempfile.mkdtemp(prefix="seelike-bench-pipeline-", dir=args.workdir))
    t_start, load_start = time.perf_counter(), os.getloadavg()
    try:
        cards = {name: make_model_dir(tmp / "models", name, arch, kw, seed=i)
                 for i, (name, (arch, kw)) in enumerate(model_defs.items())}
        layer_counts = {}
        from seelike.models import ModelCard
        for name in names:
            c = ModelCard.load(cards[name])
            layer_counts[name] = len(c.layers)
        # warm-up (imports, thread pools, first-call costs), untimed: one tiny round of each
        from seelike.plan import make_plan
        wb = 8
        wcfg = dataset_cfg(max(n, 256))
        run_seelike(names[:1], cards, wcfg, 2 * wb, wb, 1, 1, tmp / "warm", estimators=("unbiased",))
        run_pytorch_cka(names[:1], cards, wcfg, np.arange(2 * wb), wb)

        rounds = []
        for r in range(args.repeats):
            rec = {"round": r, "load_before": load_avg()}
            print(f"# round {r}: seelike (n={n}, b={b}) load {rec['load_before']}", file=sys.stderr, flush=True)
            st, smats, nbytes = run_seelike(names, cards, ds_cfg, n, b, k, ft, tmp / "work")
            rec["seelike"] = st
            rec["shard_bytes"] = nbytes
            rec["load_mid"] = load_avg()
            print(f"# round {r}: pytorch-cka  load {rec['load_mid']}", file=sys.stderr, flush=True)
            plan = make_plan(f"{DATASET_KEY}:x", np.arange(ds_cfg["splits"]["analysis"]), n, b, k, 0)
            pt, pmats = run_pytorch_cka(names, cards, ds_cfg, plan.indices_array, b)
            rec["pytorch_cka"] = pt
            rec["load_after"] = load_avg()
            rec["diff_unbiased"] = compare(smats["unbiased"], pmats)
            rec["diff_biased"] = compare(smats["biased"], pmats)
            rounds.append(rec)
            del smats, pmats
            gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = lambda xs: statistics.median(xs)  # noqa: E731
    summary = {"scope": {}, "goal": "seelike >= 3x faster than pytorch-cka pair by pair (all 10 tables)"}
    for clock, w in (("wall", ""), ("cpu", "_cpu")):
        s_ex = med([r["seelike"][f"extract_total{w}_s"] for r in rounds])
        s_all = med([r["seelike"][f"cka_total{w}_s"]["unbiased"] for r in rounds])
        s_cross = med([r["seelike"][f"cka_cross{w}_s"]["unbiased"] for r in rounds])
        p_all = med([r["pytorch_cka"][f"total{w}_s"] for r in rounds])
        p_cross = med([r["pytorch_cka"][f"cross{w}_s"] for r in rounds])
        summary["scope"][clock] = {
            "6 cross pairs + 4 within": {"seelike_s": s_ex + s_all, "pytorch_cka_s": p_all,
                                         "speedup": p_all / (s_ex + s_all)},
            "6 cross pairs only": {"seelike_s": s_ex + s_cross, "pytorch_cka_s": p_cross,
                                   "speedup": p_cross / (s_ex + s_cross)},
        }
        summary[f"seelike_extract{w}_s"] = s_ex
        summary["seelike_render_s"] = med([r["seelike"]["render_s"] for r in rounds])
        summary[f"seelike_extract_per_model{w}_s"] = {nm: med([r["seelike"][f"extract{w}_s"][nm] for r in rounds])
                                                     for nm in names}
        summary[f"seelike_cka_tables_unbiased{w}_s"] = s_all
        summary[f"seelike_cka_tables_biased{w}_s"] = med([r["seelike"][f"cka_total{w}_s"]["biased"] for r in rounds])
        summary[f"pytorch_cka_pair{w}_s"] = {kk: med([r["pytorch_cka"][f"pair{w}_s"][kk] for r in rounds])
                                            for kk in rounds[0]["pytorch_cka"]["pair_s"]}
    summary.update({
        "max_abs_diff_unbiased": max(r["diff_unbiased"]["max_abs_diff"] for r in rounds),
        "worst_pair_unbiased": rounds[-1]["diff_unbiased"]["worst_pair"],
        "seelike_unbiased_values_outside_0_1": rounds[-1]["diff_unbiased"]["seelike_values_outside_0_1"],
        "max_abs_diff_biased_vs_pytorch_cka": max(r["diff_biased"]["max_abs_diff"] for r in rounds),
        "shard_bytes_total": rounds[-1]["shard_bytes"],
        "load_during": [[r["load_before"], r["load_mid"], r["load_after"]] for r in rounds],
    })
    summary["goal_met"] = summary["scope"]["wall"]["6 cross pairs + 4 within"]["speedup"] >= 3.0

    print_table(summary, names, layer_counts, n, b, len(rounds))
    meta = dict(host_meta(args.threads), quick=args.quick, n_examples=n, minibatch_size=b, retain_freed_memory=retained,
                minibatches_per_shard=k, full_tokens=ft, repeats=len(rounds),
                models={nm: {"arch": a, "kwargs": kw, "layers": layer_counts[nm]} for nm, (a, kw) in model_defs.items()},
                estimator=("pytorch-cka: unbiased HSIC (Song et al. 2012) summed over minibatches, CKA clipped to "
                           "[0, 1]; compared with seelike estimator 'unbiased' (same minibatches, same order)"),
                total_wall_s=time.perf_counter() - t_start, load_average_start=load_start,
                load_average_end=os.getloadavg())
    write_json_atomic(args.out, {"meta": meta, "summary": summary, "rounds": rounds}, indent=1, nan_as_null=True)
    print(f"\nwrote {args.out} ({meta['total_wall_s']:.0f} s)")


def print_table(s, names, layer_counts, n, b, repeats):
    print(f"\nCKA of every pair of {len(names)} models ({', '.join(f'{m} [{layer_counts[m]} layers]' for m in names)}), "
          f"n = {n}, minibatch {b}, median of {repeats} round(s)")
    hdr = f"{'scope':<26} {'clock':<5} {'seelike s':>10} {'pytorch-cka s':>14} {'speedup':>8}"
    print(hdr)
    print("-" * len(hdr))
    for clock in ("wall", "cpu"):
        for scope, v in s["scope"][clock].items():
            print(f"{scope:<26} {clock:<5} {v['seelike_s']:>10.1f} {v['pytorch_cka_s']:>14.1f} {v['speedup']:>7.2f}x")
    print("(cpu: process CPU time, all threads -- less sensitive than wall time to other processes on the machine)")
    print(f"\nseelike: plan, render ({s['seelike_render_s']:.1f} s) and extraction {s['seelike_extract_s']:.1f} s wall ("
          + ", ".join(f"{m} {t:.1f}" for m, t in s["seelike_extract_per_model_s"].items())
          + f"); 10 CKA tables from stored Grams: unbiased {s['seelike_cka_tables_unbiased_s']:.1f} s, "
            f"biased {s['seelike_cka_tables_biased_s']:.1f} s")
    print("pytorch-cka per pair, wall s: " + ", ".join(f"{k} {v:.1f}" for k, v in s["pytorch_cka_pair_s"].items()))
    print(f"max |CKA seelike(unbiased) - pytorch-cka| = {s['max_abs_diff_unbiased']:.2e} "
          f"(worst pair {s['worst_pair_unbiased']}; seelike values outside [0, 1], which pytorch-cka clips: "
          f"{s['seelike_unbiased_values_outside_0_1']})")
    print(f"max |CKA seelike(biased) - pytorch-cka| = {s['max_abs_diff_biased_vs_pytorch_cka']:.2e} "
          "(different estimators; for scale only)")
    print(f"goal (>= 3x wall, all 10 tables): {'met' if s['goal_met'] else 'NOT met'}; "
          f"load average before/mid/after each round {s['load_during']}, now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

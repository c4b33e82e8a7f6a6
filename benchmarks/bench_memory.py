"""Benchmark: peak memory of extraction against a bare forward pass of the same model and batch.

    python benchmarks/bench_memory.py              # b = 64, four models at 224 px (~4 min on 2 cores)
    python benchmarks/bench_memory.py --batch 256  # the paper config's minibatch (each ViT-B/16 forward: minutes)
    python benchmarks/bench_memory.py --quick      # tiny models at 32 px, b = 16 (~30 s)
    python benchmarks/bench_memory.py --batch 256 --repeats 3 --cases bare,extract,vision   # medians of 3 runs

Writes benchmarks/out/bench_memory.json. Goal (issue 14): peak extraction memory at most 1.3x the
bare forward's peak, plus the store's buffers.

Measure: peak resident set size (VmHWM of /proc/self/status, the kernel's high-water mark of the
process's RSS: every byte torch, numpy and h5py touched, weights and data included), each case in a
fresh subprocess so no case inherits another's high-water mark (getrusage's ru_maxrss would: Linux
carries it over exec from the forking parent). Every subprocess first
sets the allocator of seelike's job processes (`seelike.allocator.retain_freed_memory`) and torch's
threads, then builds the model from its card (`seelike.models.build_model`, as extraction does) and
records the RSS high-water mark then ("model"), before any forward pass.

Cases, with the same random weights (timm's initialisation, `make_model_dir`) and b images:

* bare      `model(x)` under `torch.no_grad()` on b rendered synthetic images already in memory.
* held      the same forward with `LayerTaps` holding every tapped layer's output until it ends:
            what extraction held before it reduced each layer inside its hook (for comparison).
* extract   `seelike.extract.extract_shard(spec, 0)` on a one-minibatch plan of the same b images:
            data loading, the finite check, a Gram per layer, pooled features, the first 16
            examples' tokens, logits, the HDF5 write, the checkpoint's sha256 in a thread.
* vision    the model's vision pass over the same minibatch (`extract_shard` of a spec of kind
            "vision"): every tap config/config.yaml's analyses give a model of its family
            (`seelike.registry.extraction_taps`, image counts capped at b; head CKA's heads for a
            ViT), the receptive fields' backward passes included. Not run by default (`--cases`).

Columns: peak RSS in GB; "model" = the bare case's RSS once the model is built and the batch loaded,
before the forward (the checkpoint's tensors are memory-mapped, so the weights page in during the
forward and count in "fwd"); "fwd" = peak - model; ratio = extract / bare peak; formula = the per-family estimate of config/README.md ("Extraction memory"),
`formula_bytes` below, and its error against the measured extract peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

from seelike.fileio import write_json_atomic  # noqa: E402

GB = 1e9
FULL_TOKENS = 16     # extraction.full_tokens of the config
# name: (timm arch, kwargs, family). Random weights, 1000 classes, 224 px.
MODELS = {
    "vit_b16": ("vit_base_patch16_224", {}, "vit"),
    "bit_r50x1": ("resnetv2_50x1_bit", {}, "cnn"),
    "mixer_b16": ("mixer_b16_224", {}, "mixer"),
    "vit_b32": ("vit_base_patch32_224", {}, "vit"),
}
QUICK = {
    "vit_tiny": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, "vit"),
    "resnet18": ("resnet18", {"channels": [16, 32, 64, 128]}, "cnn"),
}


# ----------------------------------------------------------------------------- formula

#: the process's runtime after `import torch, timm` on the development VM (measured: 0.54 + 0.20 GB)
RUNTIME_BYTES = int(0.74 * GB)
#: float32 elements of the forward's working set per example, in units of t x d (ViT, Mixer) or of
#: the largest stage-output map (CNN); fitted to the extraction peaks (medians of repeated runs) of
#: the table in benchmarks/README.md at b = 64 and 256
WORK_FACTOR = {"vit": 21, "mixer": 16, "cnn": 6}


def formula_bytes(model, card, family: str, b: int, full_tokens: int) -> dict:
    """config/README.md's peak estimate of an extraction job on a CPU ("Extraction memory"), in bytes.

    peak = R + 1.25 P + I + W + S: R the runtime (RUNTIME_BYTES), P the parameters (4 bytes each; the
    0.25 P is the kernels' weight scratch), I the minibatch's input twice (the loaded items and the
    batch: 2 x b x 3 x H x W x 4), W the forward's working set, S the store's buffers (the first
    `full_tokens` examples' tokens of every layer). Per family, t tokens, d width, h heads:
        vit    W = 4 b t (21 d + h t)        MLP, qkv and residual tensors, one block's attention scores
        mixer  W = 4 b t (16 d)
        cnn    W = 4 b (6 S1)                S1: elements of the largest stage-output map of one example
    Extraction's own addition, one tapped layer and its Gram's float32 chunk, is inside W's slack.
    """
    import torch

    from seelike.models import LayerTaps

    c, h, w = (int(v) for v in card.input_size)
    with torch.no_grad(), LayerTaps(model, card.layers, card.num_prefix_tokens) as taps:
        model(torch.zeros(1, c, h, w, device=next(model.parameters()).device))
        shapes = {k: tuple(v.shape[1:]) for k, v in taps.outputs.items()}
    per_example = sum(int(np.prod(sh)) for sh in shapes.values())
    params = sum(p.numel() for p in model.parameters()) * 4
    inputs = 2 * b * c * h * w * 4
    if family == "cnn":
        s1 = max(int(np.prod(sh)) for sh in shapes.values())
        work = 4 * b * WORK_FACTOR["cnn"] * s1
    else:
        t, d = shapes[card.layers[-1]["name"]]
        work = 4 * b * t * WORK_FACTOR[family] * d
        if family == "vit":
            work += 4 * b * int(model.blocks[0].attn.num_heads) * t * t
    store = 4 * min(full_tokens, b) * per_example
    fixed = RUNTIME_BYTES + params + params // 4 + inputs
    return {"runtime": RUNTIME_BYTES, "params": params, "inputs": inputs, "work": work, "store": store,
            "bare": fixed + work, "total": fixed + work + store}


# ----------------------------------------------------------------------------- one case, in its own process

def _maxrss() -> int:
    """The process's peak resident set size so far, in bytes: VmHWM of /proc/self/status. Not
    getrusage's ru_maxrss, which Linux carries over exec from the forked parent (here the benchmark's
    own process, torch and models loaded)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024                          # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(args) -> None:
    import torch

    from seelike.allocator import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(args.threads)
    from bench_pipeline import extract_spec
    from seelike.data import open_dataset, rendered_split_name
    from seelike.models import LayerTaps, ModelCard, build_model
    from seelike.plan import Plan

    work = Path(args.work)
    card_path = work / "models" / args.model / "card.json"
    card = ModelCard.load(card_path)
    cfg = json.loads((work / "dataset.json").read_text())
    rendered = work / rendered_split_name(cfg, "analysis")
    plan = Plan.from_dict(json.loads((work / "plan.json").read_text()))
    out = {"case": args.case, "model": args.model}
    if args.case in ("extract", "vision"):
        from seelike.extract import extract_shard

        out["start_bytes"] = _maxrss()   # before the model is built: extract_shard builds it
        spec = extract_spec(args.model, card_path, cfg, plan, work / "shards" / args.model, full_tokens=FULL_TOKENS,
                            rendered=rendered)
        if args.case == "vision":
            spec = vision_spec(spec, args.model, card_path, cfg, args.batch, work / "vision" / args.model)
            out["taps"] = sorted(spec["taps"])
        extract_shard(spec, 0)
    else:
        model = build_model(card, card_path.parent, device=torch.device("cpu"), verify=False)
        ds = open_dataset(cfg, "analysis", rendered=rendered)
        x = torch.stack([ds[i][0] for i in range(args.batch)])
        out["model_bytes"] = _maxrss()
        with torch.no_grad():
            if args.case == "bare":
                model(x)
            else:
                with LayerTaps(model, card.layers, card.num_prefix_tokens) as taps:
                    model(x)
                    out["held_bytes"] = sum(t.numel() * t.element_size() for t in taps.outputs.values())
    out["peak_bytes"] = _maxrss()
    print("RESULT " + json.dumps(out))


def vision_spec(spec: dict, name: str, card_path: Path, ds_cfg: dict, b: int, out_dir: Path) -> dict:
    """The model's vision pass over the same minibatch, with every tap config/config.yaml's analyses
    give a model of its family (seelike.registry.extraction_taps; image counts capped at b)."""
    import yaml

    from seelike import config as sc
    from seelike import registry, specs
    from seelike.models import ModelCard

    analyses = yaml.safe_load((HERE.parent / "config" / "config.yaml").read_text())["analyses"]
    analyses["attention_distance"]["less_data"] = []           # the paper's in1k ViTs are not here
    heads = analyses.pop("head_cka", {})                         # it pairs the ViT with a CNN not built here
    for key in ("attention_distance", "localization", "receptive_field", "attention_maps"):
        if "n_images" in analyses.get(key, {}):
            analyses[key]["n_images"] = min(analyses[key]["n_images"], b)
    card = ModelCard.load(card_path)
    raw = {"run_name": "bench_memory", "device": "cpu", "precision": "fp32",
           "datasets": {"synth": ds_cfg}, "analysis": {"dataset": "synth", "n_examples": b, "seed": 0},
           "models": {name: {"arch": card.arch, "kwargs": card.kwargs,
                             "source": {"kind": "local_file", "path": str(Path(card_path).parent / card.checkpoint)}}},
           "cka": {"minibatch_size": b}, "analyses": analyses, "executor": {"default": "inline"}}
    cfg = sc.load(raw, check_timm=False)
    taps = registry.extraction_taps(cfg, name)
    if heads.get("enabled", True) and cfg["models"][name]["family"] == "vit":   # head_cka's own tap
        taps["heads"] = {"blocks": int(heads.get("blocks", 3))}
    return specs.shard_job_spec(specs.vision_pass(spec, out_dir, taps), spec["plan"])


def run_case(args, model: str, case: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--case", case, "--model", model, "--work", str(work),
           "--batch", str(args.batch), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "scripts"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{model} {case} failed:\n{r.stderr[-3000:]}")
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def prepare(work: Path, models: dict, b: int, size: int) -> None:
    import torch  # noqa: F401

    from bench_pipeline import make_model_dir
    from seelike.data import dataset_fingerprint, rendered_split_name, write_rendered_split
    from seelike.plan import make_plan

    cfg = {"kind": "synthetic", "n_classes": 10, "image_size": size, "seed": 0,
           "splits": {"train": 16, "test": 16, "analysis": b}}
    (work / "dataset.json").write_text(json.dumps(cfg))
    write_rendered_split(cfg, "analysis", work / rendered_split_name(cfg, "analysis"))
    plan = make_plan(f"synth:{dataset_fingerprint(cfg)}", np.arange(b), b, b, 1, 0)
    (work / "plan.json").write_text(json.dumps(plan.to_dict()))
    for name, (arch, kwargs, _) in models.items():
        make_model_dir(work / "models", name, arch, dict(kwargs, num_classes=10 if size == 32 else 1000), seed=0,
                       input_size=(3, size, size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="minibatch size b (default 64; --quick 16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=None, help="comma separated subset")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=1,
                    help="fresh processes per case; the table gives the median peak and the range")
    ap.add_argument("--cases", default="bare,held,extract",
                    help="comma separated subset of bare, held, extract, vision (the vision pass, receptive fields included)")
    ap.add_argument("--out", default=str(HERE / "out" / "bench_memory.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 16 if args.quick else 64
    if args.child:
        return child(args)

    import torch

    models = QUICK if args.quick else MODELS
    if args.models:
        models = {k: models[k] for k in args.models.split(",")}
    size = 32 if args.quick else 224
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as tmp:
        work = Path(tmp)
        prepare(work, models, args.batch, size)
        from seelike.models import ModelCard, build_model

        for name, (_arch, _kw, family) in models.items():
            card_path = work / "models" / name / "card.json"
            model = build_model(ModelCard.load(card_path), card_path.parent, device=torch.device("cpu"), verify=False)
            est = formula_bytes(model, ModelCard.load(card_path), family, args.batch, FULL_TOKENS)
            del model
            r = {"model": name, "family": family, "b": args.batch, "size": size, "formula": est}
            for case in args.cases.split(","):
                runs = [run_case(args, name, case, work) for _ in range(args.repeats)]
                peaks = sorted(x["peak_bytes"] for x in runs)
                res = dict(runs[0], peak_bytes=int(np.median(peaks)), peaks=peaks)
                r[case] = res
                print(f"  {name} {case}: peak {res['peak_bytes'] / GB:.2f} GB"
                      + (f" (median of {len(peaks)}: {', '.join(f'{v / GB:.2f}' for v in peaks)})" if len(peaks) > 1 else ""),
                      flush=True)
            for case in {"bare", "held", "extract", "vision"} - set(r):
                r[case] = {"peak_bytes": float("nan"), "model_bytes": float("nan"), "held_bytes": float("nan")}
            r["ratio"] = r["extract"]["peak_bytes"] / r["bare"]["peak_bytes"]
            r["formula_error"] = est["total"] / r["extract"]["peak_bytes"] - 1
            r["formula_error_bare"] = est["bare"] / r["bare"]["peak_bytes"] - 1
            rows.append(r)
    hdr = (f"{'model':<11} {'b':>4} {'model GB':>8} {'bare':>6} {'fwd':>6} {'held':>6} {'held GB':>7} "
           f"{'extract':>7} {'fwd':>6} {'ratio':>6} {'f.bare':>6} {'err':>5} {'f.ext':>6} {'err':>5} {'vision':>6} {'v/bare':>6}")
    print(f"\npeak RSS (GB), {size} px, random weights, {args.threads} threads; fwd = peak - model")
    print(hdr)
    for r in rows:
        m = r["bare"]["model_bytes"] / GB
        bare, held, ext = (r[c]["peak_bytes"] / GB for c in ("bare", "held", "extract"))
        print(f"{r['model']:<11} {r['b']:>4} {m:>8.2f} {bare:>6.2f} {bare - m:>6.2f} {held:>6.2f} "
              f"{r['held']['held_bytes'] / GB:>7.2f} {ext:>7.2f} {ext - m:>6.2f} {r['ratio']:>6.2f} "
              f"{r['formula']['bare'] / GB:>6.2f} {r['formula_error_bare']:>+5.0%} "
              f"{r['formula']['total'] / GB:>6.2f} {r['formula_error']:>+5.0%} "
              f"{r['vision']['peak_bytes'] / GB:>6.2f} {r['vision']['peak_bytes'] / r['bare']['peak_bytes']:>6.2f}")
    print("held GB: bytes of the tapped layers' outputs held at once in the 'held' case; f.bare / f.ext: the "
          "formula without / with the store's buffers, err against the measured bare / extract peak; vision: the "
          "vision pass over the same minibatch (the paper config's taps, receptive fields included), v/bare its "
          "peak over the bare forward's")
    if args.repeats > 1:
        print(f"peaks: medians of {args.repeats} fresh processes per case; ranges (GB):")
        for r in rows:
            print(f"  {r['model']:<11} " + "  ".join(
                f"{c} {min(r[c]['peaks']) / GB:.2f}-{max(r[c]['peaks']) / GB:.2f}" for c in ("bare", "held", "extract", "vision")
                if "peaks" in r[c]))
    write_json_atomic(args.out, {"machine": "2-core CPU VM, no GPU", "threads": args.threads, "batch": args.batch,
                                 "size": size, "repeats": args.repeats,
                                 "measure": "VmHWM of a fresh subprocess per case (median over repeats)",
                                 "rows": rows}, indent=1, nan_as_null=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

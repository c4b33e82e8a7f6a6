"""Benchmark: bytes on disk of real shards of both extraction passes, by kind of dataset, against the disk formula.

    python benchmarks/bench_storage.py            # demo models + ViT-B/16 and BiT-R50x1 at 224 px (~3 min, 2 cores)
    python benchmarks/bench_storage.py --quick    # demo models at n = 128 only (about a minute)

Writes benchmarks/out/bench_storage.json and prints three tables: measured vs formula per kind,
a gzip what-if, and the formula's projection for every model of config/config.yaml.

A model's extraction is two passes over one plan (seelike.extract.extract_shard): the Grams' pass
(spec kind "activations": Grams, pooled features, full tokens, logits, labels) and, when a vision
analysis covers the model, the vision pass (kind "vision", taps from seelike.registry.extraction_taps:
attention distances of every image, attention maps, per-head Grams, norm ratios, localization Grams,
receptive-field sums); each pass's shards carry the plan arrays and metadata. Both are measured and
modelled; a model's bytes are the sum.

Measured (random weights, shards written by `seelike.extract.extract_shard` with the Grams' spec and
the vision spec, every dataset's bytes read with h5py `Dataset.id.get_storage_size()`, metadata =
file size - arrays):
  * one model per distinct architecture of config/demo.yaml at its n_examples, cka.minibatch_size,
    full_tokens and minibatches_per_shard, each with the taps the demo config gives it (no taps: no
    vision pass);
  * ViT-B/16 (vit_base_patch16_224) and BiT-R50x1 (resnetv2_50x1_bit) at 224 px, 1000 classes, on
    --paper-n synthetic images (32) at b = --paper-b (16), k = --paper-k (8), one minibatch per shard,
    with the taps config/config.yaml gives vit_b16 and r50x1 (receptive fields of every layer).
If results/extract/*/*/shard-*.h5 and .../vision/shard-*.h5 exist (a demo run), they are measured too
(no formula row).

The formula (`formula`), bytes of one model's extraction; n examples (a multiple of b), m = n / b
minibatches, layers l = 1..L with t_l tokens (ViT: prefix included; CNN: h*w) and width d_l, p prefix
tokens, C classes, k = extraction.full_tokens, S = ceil(m / minibatches_per_shard) shards per pass,
H x W the input image, h_j the heads of attention block j:
  Grams' pass
    grams           8 n b L                    (m, b, b) float64 per layer
    pooled          4 n sum_l d_l  (x 2 if p > 0: CLS + token mean, float32)
    tokens          4 min(k, n) sum_l t_l d_l  float32
    logits          4 n C;   labels + plan     24 n (three int64 per example)
  vision pass (only with taps)
    attention dist. 12 n sum_j h_j + 32 m sum_j h_j + 8 m (blocks) + 8 S (blocks)   per image (n, 3, h)
                    float32; per minibatch sums (m, 4, h) float64 and counts; a depth index per shard
    receptive field S_rf (8 H W + 40) per chosen layer + 8 S_rf   (H, W) float64 sums, grid, centre, index;
                    chosen layers: receptive_field.layers (auto: 4, all: L); S_rf = the shards holding
                    the plan's first min(n_rf, n) images
    localization    ceil(min(n_loc, n) / b) b^2 (4 Q + 8 P)   Q grid cells of the layer (float32),
                    P input positions (distinct grid cells, float64); n_loc = analyses.localization.n_images
    heads           8 n b sum(heads of the first B_h blocks)  (analyses.head_cka.blocks = B_h)
    attention maps  4 k_a (sum over blocks of heads t^2 + 3 H W) + 8 k_a   k_a = analyses.attention_maps.n_images
    other           norm ratios 88 B per residual sublayer and the token geometry 56 B, per shard
    plan            16 n (example indices, minibatch ids: int64)
  both passes
    metadata        per shard: plan JSON + 6300 B, and 610 B of HDF5 header per dataset (datasets
                    counted by `expected_datasets`: per pass, over its shards)
The model's t_l, d_l, C, heads and Q come from one forward pass of a blank image (the meta device for
the projection: no weights, no memory); taps from seelike.registry.extraction_taps.
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
from bench_pipeline import DATASET_KEY, OUT, host_meta  # noqa: E402
from seelike.fileio import write_json_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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


KINDS = ("grams", "pooled", "tokens", "logits", "labels_plan", "attention_distance", "receptive_field",
         "localization", "heads", "attention_maps", "other_reductions", "metadata")


def kind_of(key: str) -> str:
    """The formula's kind of one stored dataset path (seelike/store.py and analyses/reducers.py layouts)."""
    parts = key.split("/")
    if parts[0] == "layers":
        last = parts[-1] if len(parts) == 3 else "/".join(parts[2:])
        return {"gram": "grams", "pooled_cls": "pooled", "pooled_mean": "pooled", "tokens": "tokens",
                "positions/gram": "localization"}.get(last, "other_reductions")
    if key.startswith("reductions/localization/"):
        return "localization"
    if key.startswith("reductions/heads/"):
        return "heads"
    if key.startswith("reductions/attention_maps/"):
        return "attention_maps"
    if key.startswith("reductions/attention_distance/"):
        return "attention_distance"
    if key.startswith("reductions/receptive_field/"):
        return "receptive_field"
    if key.startswith("reductions/"):
        return "other_reductions"
    if key == "logits":
        return "logits"
    if key in ("labels", "plan/example_indices", "plan/minibatch_ids"):
        return "labels_plan"
    return "metadata"          # plan/json


def measure_shards(files: list[Path]) -> dict:
    """Bytes on disk of every kind of dataset (KINDS) summed over the shards of one pass of one (model,
    dataset); metadata = file sizes - every array's storage (HDF5 headers, attributes, the plan JSON).
    The per-example figures (Grams, pooled, tokens, raw activations) are the Grams' pass's (None for a
    vision pass)."""
    import h5py

    acc = {k: 0 for k in KINDS}
    n = k = 0
    shapes, b, n_datasets, plan_json, kinds = {}, None, 0, 0, set()
    file_bytes = 0
    for p in files:
        file_bytes += p.stat().st_size
        with h5py.File(p, "r") as f:
            kinds.add(str(f.attrs.get("kind", "activations")))
            layers = json.loads(f.attrs["layers"])
            n += len(f["plan/example_indices"])
            plan_text = f["plan/json"][()]
            b = int(json.loads(plan_text)["minibatch_size"])
            plan_json += len(plan_text)
            keys = []
            f.visititems(lambda key, obj: keys.append(key) if isinstance(obj, h5py.Dataset) else None)
            n_datasets += len(keys)
            for key in keys:
                if key != "plan/json":
                    acc[kind_of(key)] += f[key].id.get_storage_size()
            for l in layers:
                if f"layers/{l}/tokens" in f:
                    ds = f[f"layers/{l}/tokens"]
                    shapes[l] = ds.shape[1:]
                    if l == layers[0]:
                        k += ds.shape[0]
    if len(kinds) != 1:
        raise ValueError(f"shards of more than one pass measured together: {sorted(kinds)}")
    kind = kinds.pop()
    acc["metadata"] = file_bytes - sum(v for kk, v in acc.items() if kk != "metadata")
    L = len(layers)
    raw_elems = float(np.mean([t * d for t, d in shapes.values()])) if shapes else float("nan")
    rec = {
        "pass": kind, "n_examples": n, "layers": L, "minibatch": b, "full_tokens": k, "shards": len(files),
        "datasets_per_shard": n_datasets / len(files), "datasets": n_datasets,
        "plan_json_bytes_per_shard": plan_json / len(files), "bytes": dict(acc, file=file_bytes),
    }
    if kind == "activations":
        rec.update({
            "grams_B_per_ex_layer": acc["grams"] / (n * L),
            "pooled_B_per_ex_layer": acc["pooled"] / (n * L),
            "tokens_B_per_stored_ex_layer": acc["tokens"] / (k * L) if k else None,
            "raw_fp16_B_per_ex_layer": 2 * raw_elems, "raw_fp32_B_per_ex_layer": 4 * raw_elems,
            "layer_shapes_t_d": {l: list(s) for l, s in shapes.items()},
        })
        rec["reduced_B_per_ex_layer"] = rec["grams_B_per_ex_layer"] + rec["pooled_B_per_ex_layer"]
        rec["raw_fp16_over_reduced"] = rec["raw_fp16_B_per_ex_layer"] / rec["reduced_B_per_ex_layer"]
        rec["raw_fp32_over_reduced"] = rec["raw_fp32_B_per_ex_layer"] / rec["reduced_B_per_ex_layer"]
    return rec


def combine(activations: dict, vision: dict | None) -> dict:
    """One model's record: the Grams' pass's, its bytes summed with the vision pass's (kept under "passes")."""
    rec = dict(activations)
    rec["passes"] = {"activations": {k: activations[k] for k in ("shards", "datasets", "bytes")}}
    if vision:
        rec["passes"]["vision"] = {k: vision[k] for k in ("shards", "datasets", "bytes")}
        rec["bytes"] = {k: activations["bytes"][k] + vision["bytes"][k] for k in activations["bytes"]}
    return rec


# ----------------------------------------------------------------------------- the disk formula

#: HDF5 metadata of a shard beyond its arrays and the plan JSON: SHARD_BYTES per shard (superblock,
#: root group, the attributes: provenance, the list of datasets) and HEADER_BYTES per stored dataset
#: (object header, its share of the groups), fitted by least squares on the shards of both passes of
#: the demo models at n = 128. Only shards of tiny models notice them.
SHARD_BYTES = 6300
HEADER_BYTES = 610


def model_dims(model, family: str, input_size, name: str = "model") -> dict:
    """What the formula needs of one model, read off one forward pass of a blank image (on the meta
    device for paper-sized models): per tapped layer (tokens t, width d), prefix tokens p, classes C,
    heads per attention block, attention blocks, and Q (grid cells of the localization layer: the last
    layer with at least 2 x 2 positions, as seelike.analyses.reducers picks it)."""
    from seelike.models import LayerTaps, enumerate_layers
    from seelike.models.residual import NoAttentionError, attention_modules, residual_branches

    layers = enumerate_layers(model, family, sublayers=False)
    p = int(getattr(model, "num_prefix_tokens", 0) or 0)
    dev = next(model.parameters()).device
    with LayerTaps(model, layers, p) as taps, torch.no_grad():
        out = model(torch.zeros((1, *input_size), device=dev))
        td = [(int(taps.outputs[l["name"]].shape[1]), int(taps.outputs[l["name"]].shape[2])) for l in layers]
    try:
        attn = attention_modules(model, name)
    except NoAttentionError:
        attn = []
    q = next((t - (p if t > p else 0) for t, _ in reversed(td) if t - p >= 4), 0)
    try:
        branches = len(residual_branches(model, family, name))
    except ValueError:
        branches = 0
    return {"layers_t_d": td, "layer_names": [l["name"] for l in layers], "branches": branches, "p": p,
            "classes": int(out.shape[-1]), "input_size": [int(v) for v in input_size],
            "heads": [a["num_heads"] for a in attn], "Q": q}


def _shards_holding(first: int, n: int, b: int, mb_per_shard: int) -> int:
    """Shards of a plan (n examples, minibatch b) that hold any of its first `first` examples."""
    return -(-min(int(first), n) // (b * mb_per_shard)) if first else 0


def _rf_layers(dims: dict, taps: dict) -> int:
    from seelike.analyses.receptive_field import choose_layers

    rf = taps.get("receptive_field")
    return len(choose_layers(dims["layer_names"], rf["layers"])) if rf else 0


def formula(dims: dict, *, n: int, b: int, k: int, mb_per_shard: int, taps: dict, plan_json_bytes: float) -> dict:
    """Bytes of one model's extraction by kind, both passes (see the module docstring), and each pass's
    total ("activations_total", "vision_total"; the vision pass only with taps). n examples (a multiple
    of b), minibatch b, k = extraction.full_tokens, taps = seelike.registry.extraction_taps of the model."""
    from seelike.analyses import geometry

    td, p, C = dims["layers_t_d"], dims["p"], dims["classes"]
    L = len(td)
    m = -(-n // b)
    S = -(-m // mb_per_shard)
    kk = min(k, n)
    H = dims["heads"]
    hw = int(np.prod(dims["input_size"][1:]))
    out = {
        "grams": 8 * n * b * L,                                        # (m, b, b) float64 per layer
        "pooled": 4 * n * sum(d for _, d in td) * (2 if p else 1),     # mean (+ CLS) float32
        "tokens": 4 * kk * sum(t * d for t, d in td),                  # first k examples, float32
        "logits": 4 * n * C,
        "labels_plan": 8 * n * 3 + (8 * n * 2 if taps else 0),        # labels, example indices, minibatch ids
    }                                                                  # (int64); the vision pass: the plan's two
    out["attention_distance"] = 0
    if "attention_distance" in taps and H:
        out["attention_distance"] = 12 * n * sum(H) + 32 * m * sum(H) + 8 * m * len(H) + 8 * S * len(H)
    out["receptive_field"] = 0
    if "receptive_field" in taps:
        s_rf = _shards_holding(taps["receptive_field"]["n_images"], n, b, mb_per_shard)
        out["receptive_field"] = s_rf * (_rf_layers(dims, taps) * (8 * hw + 40) + 8)
    loc = taps.get("localization")
    out["localization"] = 0
    if loc:
        m_loc = -(-min(int(loc["n_images"]), n) // b)
        side = int(round(np.sqrt(dims["Q"])))                           # square grids (square inputs)
        P = len(geometry.cells_from_fractions(loc["positions"], (side, side)))   # distinct cells
        out["localization"] = m_loc * b * b * (4 * dims["Q"] + 8 * P)   # layer float32 (Q), input float64 (P)
    out["heads"] = 8 * n * b * sum(H[:int(taps["heads"]["blocks"])]) if "heads" in taps else 0
    out["attention_maps"] = 0
    if "attention_maps" in taps and H:
        ka = min(int(taps["attention_maps"]["n_images"]), n)
        t = td[-1][0]
        out["attention_maps"] = 4 * ka * (sum(H) * t * t + int(np.prod(dims["input_size"]))) + 8 * ka
    other = 0
    if ("attention_distance" in taps or "attention_maps" in taps) and H:
        other += S * 8 * (2 + 2 + 3)                                   # token geometry: grid, cell, input size
    if "norm_ratio" in taps:
        other += S * dims["branches"] * 8 * (5 * 2 + 1)                 # 5 x 2 sums + index per residual sublayer
    out["other_reductions"] = other
    ds = expected_datasets(dims, taps, k, n=n, b=b, mb_per_shard=mb_per_shard)
    meta = {kind: (S * (plan_json_bytes + SHARD_BYTES) + HEADER_BYTES * count) if count else 0
            for kind, count in ds.items()}
    out["metadata"] = sum(meta.values())
    out["total"] = sum(out.values())
    act = ("grams", "pooled", "tokens", "logits")
    out["activations_total"] = sum(out[kk_] for kk_ in act) + 24 * n + meta["activations"]
    out["vision_total"] = out["total"] - out["activations_total"]
    return out


def expected_datasets(dims: dict, taps: dict, k: int, *, n: int, b: int, mb_per_shard: int) -> dict:
    """Datasets of each pass, summed over its shards (for the header term), {"activations": .., "vision": ..}.
    Grams' pass, per shard: per layer a Gram and pooled features (1-2), logits, labels, plan (3); tokens
    per layer in the shards holding the first k examples. Vision pass (none without taps), per shard: plan
    (3), the token geometry (3), per block 4 attention-distance arrays, per head-Gram block 2, per
    residual sublayer 6 norm-ratio arrays, localization 7; attention maps (3) and receptive fields (4 per
    layer + count) in the shards holding their images."""
    L, p, H = len(dims["layers_t_d"]), dims["p"], dims["heads"]
    m = -(-n // b)
    S = -(-m // mb_per_shard)
    act = S * (L * (1 + (2 if p else 1)) + 5) + L * _shards_holding(k, n, b, mb_per_shard)
    if not taps:
        return {"activations": act, "vision": 0}
    per_shard = 3
    if ("attention_distance" in taps or "attention_maps" in taps) and H:
        per_shard += 3
    if "attention_distance" in taps and H:
        per_shard += 4 * len(H)
    if "heads" in taps:
        per_shard += 2 * int(taps["heads"]["blocks"])
    if "norm_ratio" in taps:
        per_shard += 6 * dims["branches"]
    if taps.get("localization"):
        per_shard += 1 + 6
    vis = S * per_shard
    if "attention_maps" in taps and H:
        vis += 3 * _shards_holding(taps["attention_maps"]["n_images"], n, b, mb_per_shard)
    if "receptive_field" in taps:
        vis += (4 * _rf_layers(dims, taps) + 1) * _shards_holding(taps["receptive_field"]["n_images"], n, b,
                                                                  mb_per_shard)
    return {"activations": act, "vision": vis}


def rewrite_whatif(shard: Path, tmp: Path) -> dict:
    """Write the arrays of one real shard again through write_shard with compression="gzip" and with
    compression=None (the default); bytes and seconds of each (write_shard fsyncs, as extraction does)."""
    import h5py
    from seelike.store import write_shard

    with h5py.File(shard, "r") as f:
        datasets = [d for d in json.loads(f.attrs["datasets"]) if not d.startswith("plan/")]
        arrays = {d: f[d][()] for d in datasets}
        kw = dict(kind=str(f.attrs.get("kind", "activations")), model=str(f.attrs["model"]), dataset=str(f.attrs["dataset"]), shard_index=int(f.attrs["shard_index"]),
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


def demo_setup() -> tuple[dict, dict]:
    import yaml
    from seelike import config

    return config.load(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()), check_timm=False), demo_models()


def paper_config(tmp: Path) -> dict:
    """config/config.yaml, loaded with folders of empty files named like images standing for ImageNet (the
    config counts images by name, never decodes them): the models, their sweeps and taps as the workflow sees them."""
    import yaml
    from seelike import config

    def folder(root: Path, classes: int, per_class: int) -> str:
        for c in range(classes):
            (root / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (root / f"c{c:04d}" / f"{i:05d}.JPEG").touch()
        return str(root)

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["datasets"]["imagenet_val"]["root"] = folder(tmp / "val", 1000, 11)
    raw["datasets"]["imagenet_train"]["root"] = folder(tmp / "train", 10, 3500)
    return config.load(raw, check_timm=False)


def meta_model(m: dict):
    """A config model on the meta device (no memory, no weights): a hub model by its timm name (its tag's
    class count), a recipe by arch and kwargs."""
    from seelike.models import create_timm_model
    from seelike.models.build import import_timm

    with torch.device("meta"):
        if m["source"]["kind"] == "timm_hub":
            return import_timm().create_model(m["source"]["timm_name"], pretrained=False).eval()
        return create_timm_model(m["arch"], dict(m.get("kwargs") or {}), pretrained=False).eval()


def projection(cfg: dict) -> list[dict]:
    """The formula at the config's own n_examples, minibatch, full_tokens and taps, for every model."""
    from seelike import registry
    from seelike.plan import make_plan

    n, b = int(cfg["analysis"]["n_examples"]), int(cfg["cka"]["minibatch_size"])
    k, mps = int(cfg["extraction"]["full_tokens"]), int(cfg["extraction"]["minibatches_per_shard"])
    plan_json = len(json.dumps(make_plan("imagenet_val:x", np.arange(n), n, b, mps, 0).to_dict(), sort_keys=True))
    rows = []
    for name, m in cfg["models"].items():
        model = meta_model(m)
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        dims = model_dims(model, m["family"], size, name)
        taps = registry.extraction_taps(cfg, name)
        f = formula(dims, n=n, b=b, k=k, mb_per_shard=mps, taps=taps, plan_json_bytes=plan_json)
        rows.append({"model": name, "retrained": m["source"]["kind"] == "recipe", "family": m["family"],
                     "L": len(dims["layers_t_d"]), "d_max": max(d for _, d in dims["layers_t_d"]),
                     "t_max": max(t for t, _ in dims["layers_t_d"]), "classes": dims["classes"], "Q": dims["Q"],
                     "taps": sorted(taps), "n": n, "b": b, "k": k, "bytes": f})
    return rows


def measure_model(tmp: Path, label: str, arch: str, kwargs: dict, taps: dict, *, n: int, b: int, k: int, mps: int,
                  image_size: int, seed: int) -> dict:
    """Extract one randomly initialised model through seelike.extract (real shards): its Grams' pass and,
    with taps, its vision pass; measure every kind of dataset of both, and the formula for the same
    model, settings and taps."""
    from bench_pipeline import extract_spec, make_model_dir, seelike_extract_model
    from seelike import specs
    from seelike.data import dataset_fingerprint, dataset_size
    from seelike.models import ModelCard, build_model
    from seelike.plan import make_plan

    ds_cfg = {"kind": "synthetic", "n_classes": 10, "image_size": image_size, "seed": 0,
              "splits": {"train": 16, "test": 16, "analysis": n}}
    size = (3, image_size, image_size)
    card = make_model_dir(tmp / "models", label, arch, kwargs, seed=seed, input_size=size)
    plan = make_plan(f"{DATASET_KEY}:{dataset_fingerprint(ds_cfg)}", np.arange(dataset_size(ds_cfg, "analysis")),
                     n, b, mps, 0)
    out_dir = tmp / f"{label}-b{b}"
    spec = extract_spec(label, card, ds_cfg, plan, out_dir, k)     # kind "activations": the Grams' pass
    print(f"# extracting {label} ({arch}, {image_size} px) at n = {n}, b = {b}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    seelike_extract_model(spec, plan)
    wall = {"activations": time.perf_counter() - t0}
    shards = sorted(out_dir.glob("shard-*.h5"))
    act = measure_shards(shards)
    vis, vshards = None, []
    if taps:   # the vision pass (seelike.specs.vision_extract_spec): the same plan, its own shards
        vdir = out_dir / "vision"
        vspec = specs.shard_job_spec(specs.vision_pass(spec, vdir, taps), spec["plan"])
        print(f"# extracting {label}: vision pass ({', '.join(sorted(taps))})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        seelike_extract_model(vspec, plan)
        wall["vision"] = time.perf_counter() - t0
        vshards = sorted(vdir.glob("shard-*.h5"))
        vis = measure_shards(vshards)
    rec = combine(act, vis)
    c = ModelCard.load(card)
    model = build_model(c, card.parent, device="cpu", verify=False)
    dims = model_dims(model, c.family, size, label)
    f = formula(dims, n=n, b=b, k=k, mb_per_shard=mps, taps=taps, plan_json_bytes=act["plan_json_bytes_per_shard"])
    rec.update({"model": label, "arch": arch, "image_size": image_size, "taps": sorted(taps), "extract_wall_s": wall,
                "formula_bytes": f,
                "formula_datasets": expected_datasets(dims, taps, k, n=n, b=b, mb_per_shard=mps),
                "formula_over_measured": f["total"] / rec["bytes"]["file"],
                "formula_over_measured_by_pass": {
                    "activations": f["activations_total"] / act["bytes"]["file"],
                    "vision": f["vision_total"] / vis["bytes"]["file"] if vis else None}})
    rec["compression_whatif_shard0"] = rewrite_whatif(shards[0], tmp)
    if vshards:
        rec["compression_whatif_vision_shard0"] = rewrite_whatif(vshards[0], tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="demo models only, n = 128; no 224 px models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paper-n", type=int, default=32, help="examples for the 224 px paper architectures")
    ap.add_argument("--paper-b", type=int, default=16, help="their minibatch size")
    ap.add_argument("--paper-k", type=int, default=8, help="their full_tokens")
    ap.add_argument("--no-results", action="store_true", help="skip shards found under results/extract")
    ap.add_argument("--out", type=Path, default=OUT / "bench_storage.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from seelike import registry

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="seelike-bench-storage-"))
    measured = []
    try:
        demo_cfg, models = demo_setup()
        n = 128 if args.quick else int(demo_cfg["analysis"]["n_examples"])
        b = int(demo_cfg["cka"]["minibatch_size"])
        k = int(demo_cfg["extraction"]["full_tokens"])
        mps = int(demo_cfg["extraction"]["minibatches_per_shard"])
        for i, (nm, (arch, kw)) in enumerate(models.items()):
            rec = measure_model(tmp, nm, arch, kw, registry.extraction_taps(demo_cfg, nm), n=n, b=b, k=k, mps=mps,
                                image_size=int(demo_cfg["datasets"]["synth"]["image_size"]), seed=i)
            rec["source"] = "demo arch, random init, demo taps"
            measured.append(rec)
        paper_cfg = paper_config(tmp / "folders")
        if not args.quick:
            for nm in ("vit_b16", "r50x1"):
                m = paper_cfg["models"][nm]
                arch = m["source"]["timm_name"].split(".")[0]
                taps = registry.extraction_taps(paper_cfg, nm)
                rec = measure_model(tmp, nm, arch, {"num_classes": 1000}, taps, n=args.paper_n, b=args.paper_b,
                                    k=args.paper_k, mps=1, image_size=224, seed=10)
                rec["source"] = "paper arch 224 px, random init, paper taps"
                measured.append(rec)
        proj = projection(paper_cfg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_results:
        for d in sorted(glob.glob(str(REPO / "results" / "extract" / "*" / "*"))):
            files = sorted(Path(d).glob("shard-*.h5"))
            vfiles = sorted((Path(d) / "vision").glob("shard-*.h5"))
            if not files:
                continue
            try:
                rec = combine(measure_shards(files), measure_shards(vfiles) if vfiles else None)
            except Exception as e:   # a demo run rewriting its results
                print(f"# skipped {d}: {e}", file=sys.stderr)
                continue
            rec.update({"model": Path(d).name, "source": f"{Path(d).relative_to(REPO)} (demo run, trained)", "arch": None})
            measured.append(rec)
    print_tables(measured, proj)
    meta = dict(host_meta(args.threads), quick=args.quick, total_wall_s=time.perf_counter() - t_start,
                header_bytes=HEADER_BYTES, shard_bytes=SHARD_BYTES, formula=FORMULA)
    write_json_atomic(args.out, {"meta": meta, "measured": measured, "projection": proj}, indent=1, nan_as_null=True)
    print(f"\nwrote {args.out} ({meta['total_wall_s']:.0f} s)")


FORMULA = ("Grams' pass: grams 8nbL; pooled 4n sum(d_l) (x2 with a CLS token); tokens 4k sum(t_l d_l); logits 4nC; "
           "labels+plan 24n. Vision pass: attention distances 12n sum_j h_j + 32m sum_j h_j + 8m B + 8S B; "
           "receptive fields S_rf (8HW + 40) per chosen layer + 8 S_rf; localization ceil(min(n_loc,n)/b) b^2 (4Q + 8P); "
           "heads 8nb sum(heads of the first B_h blocks); attention maps 4k_a(sum_blocks heads t^2 + 3HW) + 8k_a; "
           "norm ratios 88 B per sublayer and geometry 56 B per shard; plan 16n. Both: metadata S (plan JSON "
           "+ 6300 B) + 610 B per dataset")


def print_tables(measured, proj):
    short = {"grams": "grams", "pooled": "pooled", "tokens": "tokens", "logits": "logits", "labels_plan": "lab+plan",
             "attention_distance": "attn dist", "receptive_field": "RF", "localization": "loc", "heads": "heads",
             "attention_maps": "maps", "other_reductions": "other", "metadata": "meta"}
    print("Measured shards of both passes against the formula, MB (measured / formula per kind)")
    hdr = f"{'model':<9} {'px':>3} {'n':>4} {'b':>3} {'k':>3} {'L':>3} " + " ".join(f"{v:>13}" for v in short.values()) + \
          f" {'total':>15} {'f/m':>5} {'Grams f/m':>9} {'vision f/m':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in measured:
        f = r.get("formula_bytes")
        cells = []
        for kind in short:
            mv = r["bytes"][kind] / 1e6
            cells.append(f"{mv:>6.2f}/{f[kind] / 1e6:<6.2f}" if f else f"{mv:>13.2f}")
        tot = f"{r['bytes']['file'] / 1e6:>7.2f}/{f['total'] / 1e6:<7.2f}" if f else f"{r['bytes']['file'] / 1e6:>15.2f}"
        ratio = f"{r['formula_over_measured']:>5.3f}" if f else f"{'':>5}"
        bp = r.get("formula_over_measured_by_pass") or {}
        ga = f"{bp['activations']:>9.3f}" if bp.get("activations") else f"{'':>9}"
        vi = f"{bp['vision']:>10.3f}" if bp.get("vision") else f"{'-':>10}"
        print(f"{r['model']:<9} {r.get('image_size') or '':>3} {r['n_examples']:>4} {r['minibatch']:>4} "
              f"{r['full_tokens']:>3} {r['layers']:>3} " + " ".join(cells) + f" {tot} {ratio} {ga} {vi}")
    print("(f/m: formula total / measured file bytes; per pass: its shards' bytes)")
    print("\nPer pass, MB measured (shards, datasets)")
    for r in measured:
        print(f"{r['model']:<9} " + "; ".join(f"{k}: {v['bytes']['file'] / 1e6:.2f} MB ({v['shards']} shards, "
                                             f"{v['datasets']} datasets)" for k, v in r.get("passes", {}).items()))
    print("\nWhat-if: shard 0 of each pass written again with write_shard(compression='gzip') and without (the default)")
    print(f"{'model':<9} {'pass':<11} {'b':>4} {'gzip bytes':>11} {'none bytes':>11} {'gzip s':>7} {'none s':>7}")
    for r in measured:
        for label, key in (("Grams'", "compression_whatif_shard0"), ("vision", "compression_whatif_vision_shard0")):
            w = r.get(key)
            if w:
                print(f"{r['model']:<9} {label:<11} {r['minibatch']:>4} {w['gzip']['bytes']:>11} {w['None']['bytes']:>11} "
                      f"{w['gzip']['seconds']:>7.3f} {w['None']['seconds']:>7.3f}")
    if proj:
        p0 = proj[0]
        print(f"\nProjection, config/config.yaml: n = {p0['n']}, b = {p0['b']}, k = {p0['k']}, each model's taps; GB")
        hdr = f"{'model':<16} {'L':>3} {'Q':>4} {'C':>6} " + " ".join(f"{v:>9}" for v in short.values()) + \
              f" {'Grams':>7} {'vision':>7} {'total':>7}"
        print(hdr)
        print("-" * len(hdr))
        for r in proj:
            f = r["bytes"]
            print(f"{r['model']:<16} {r['L']:>3} {r['Q']:>4} {r['classes']:>6} " +
                  " ".join(f"{f[kind] / 1e9:>9.3f}" for kind in short) +
                  f" {f['activations_total'] / 1e9:>7.2f} {f['vision_total'] / 1e9:>7.2f} {f['total'] / 1e9:>7.2f}")
        for label, rows in (("public", [r for r in proj if not r["retrained"]]),
                            ("retrained", [r for r in proj if r["retrained"]])):
            print(f"{label} models ({len(rows)}): {sum(r['bytes']['total'] for r in rows) / 1e9:.1f} GB (Grams' pass "
                  f"{sum(r['bytes']['activations_total'] for r in rows) / 1e9:.1f}, vision pass "
                  f"{sum(r['bytes']['vision_total'] for r in rows) / 1e9:.1f})")
        print(f"all: {sum(r['bytes']['total'] for r in proj) / 1e9:.1f} GB")


if __name__ == "__main__":
    main()

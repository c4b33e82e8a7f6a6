"""Benchmark: CKA error of the Grams' matmul precisions against float64, emulated on a CPU.

    python benchmarks/bench_gram_precision.py            # ViT-B/16, BiT-R50x1, Mixer-B/16 at 224 px, b = 256 (~10 min on 2 cores)
    python benchmarks/bench_gram_precision.py --quick    # ViT-S/16 and ResNet-18 at 224 px, b = 64 (~1 min)

Writes benchmarks/out/bench_gram_precision.json. Question (issue 14, item 7): which Gram precision
keeps CKA within 1e-5 of float64, so that `extraction.gram_precision` may offer it. The GPU answer
is `benchmarks/gpu_check.py` (section grams, real tensor cores); this script answers it on a CPU by
emulating the reduced-precision inputs, so it runs anywhere.

Emulation. A TF32 matmul (CUDA tensor cores, `torch.set_float32_matmul_precision("high")`) rounds
each float32 input to 10 explicit mantissa bits and accumulates the exact products in float32; bf16
inputs keep 7 bits. Here the matmul inputs are rounded to that many bits (round to nearest, ties
away from zero, as CUDA's cvt.rna.tf32.f32) and handed to `seelike.cka.gram`, whose float32 products
of such values are exact, as on the GPU. Variants:
    fp32            gram(center="auto") unchanged: extraction's Grams (`extraction.gram_precision: fp32`)
    tf32            the features centred over the minibatch in float32, rounded to TF32, then
                    gram(center=True): what `extraction.gram_precision: tf32` computes on a GPU
    tf32 uncentred  the features rounded to TF32, then gram(center="auto"): TF32 products of the
                    uncentred features (upper bound where gram recomputes from centred features)
    bf16            as tf32, with bf16 inputs (`set_float32_matmul_precision("medium")` where it
                    picks bf16)

Features: every layer of the model's card (`seelike.models.LayerTaps`), one minibatch of b rendered
synthetic images, timm's random initialisation (no trained weights offline); plus the synthetic
transformer-like features of bench_cka.py (12 layers, d = 38400, massive dimensions) with an offset
added to every feature so that the offset-to-spread ratio is 15: inputs rounded before centring
("tf32 uncentred", "fp32" rounds nothing) lose the spread to the offset whatever gram then does.

Error: max and mean |CKA - CKA_float64| over every pair of layers (unbiased minibatch CKA,
`seelike.cka.hsic_all_pairs` + `cka_from_minibatch_hsic`); the reference Grams are the features
centred and multiplied in float64 (independent of seelike.cka.gram). Both are gpu_check.py's
(`cka_matrix`, `float64_gram`), so the two scripts' errors are the same measure.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))

from seelike.fileio import write_json_atomic  # noqa: E402

GOAL = 1e-5
#: each variant: explicit mantissa bits of the matmul inputs (float32 has 23), and whether the Grams
#: are taken of features centred over the minibatch (as seelike.cka.gram does for precision "tf32")
#: or with gram's automatic centring (center="auto", what "fp32" does)
VARIANTS = {"fp32": (23, False), "tf32": (10, True), "tf32 uncentred": (10, False), "bf16": (7, True)}
MODELS = {"vit_b16": ("vit_base_patch16_224", {}), "bit_r50x1": ("resnetv2_50x1_bit", {}),
          "mixer_b16": ("mixer_b16_224", {})}
QUICK = {"vit_s16": ("vit_small_patch16_224", {}), "resnet18": ("resnet18", {})}


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 ``x`` rounded to ``bits`` explicit mantissa bits, to nearest with ties away from zero."""
    x = x.detach().to(torch.float32).contiguous()
    drop = 23 - int(bits)
    if drop <= 0:
        return x.clone()
    i = x.view(torch.int32)
    # sign-magnitude: adding half an ulp of the kept bits to the magnitude rounds ties away from zero
    r = torch.bitwise_and(i + (1 << (drop - 1)), ~((1 << drop) - 1))
    return r.view(torch.float32)


def errors(acts: list[torch.Tensor]) -> dict:
    from gpu_check import cka_matrix, float64_gram   # the same CKA and float64 reference as the GPU check
    from seelike.cka import gram

    ref = cka_matrix([float64_gram(a) for a in acts])
    out = {}
    for name, (bits, centred) in VARIANTS.items():
        t0 = time.perf_counter()
        if centred:   # float32 centring (gram's staging), then the reduced inputs
            grams = [gram(round_mantissa(a - a.mean(dim=0), bits), center=True) for a in acts]
        else:
            grams = [gram(round_mantissa(a, bits), center="auto") for a in acts]
        err = np.abs(cka_matrix(grams) - ref)
        out[name] = {"max_abs_cka_error": float(np.nanmax(err)), "mean_abs_cka_error": float(np.nanmean(err)),
                     "seconds": time.perf_counter() - t0}
    return out


def model_activations(name: str, arch: str, kwargs: dict, b: int, work: Path) -> list[torch.Tensor]:
    from bench_pipeline import make_model_dir
    from seelike.data import open_dataset, rendered_split_name, write_rendered_split
    from seelike.models import LayerTaps, ModelCard, build_model

    cfg = {"kind": "synthetic", "n_classes": 10, "image_size": 224, "seed": 0,
           "splits": {"train": 16, "test": 16, "analysis": b}}
    rendered = work / rendered_split_name(cfg, "analysis")
    if not rendered.exists():
        write_rendered_split(cfg, "analysis", rendered)
    card_path = make_model_dir(work / "models", name, arch, dict(kwargs, num_classes=1000), seed=0,
                               input_size=(3, 224, 224))
    card = ModelCard.load(card_path)
    model = build_model(card, card_path.parent, device=torch.device("cpu"), verify=False)
    ds = open_dataset(cfg, "analysis", rendered=rendered)
    x = torch.stack([ds[i][0] for i in range(b)])
    with torch.no_grad(), LayerTaps(model, card.layers, card.num_prefix_tokens) as taps:
        model(x)
        acts = [t.detach().clone() for t in taps.outputs.values()]
    return acts


def offset_features(n: int, ratio: float = 15.0) -> list[torch.Tensor]:
    """bench_cka.py's synthetic features, each layer shifted by one common vector so that
    n ||mean||^2 = ratio x sum_i ||x_i - mean||^2."""
    from bench_cka import make_model_features

    out = []
    for f in make_model_features(12, n, 38400, seed=0):
        c = f - f.mean(0)
        direction = torch.randn(f.shape[1], generator=torch.Generator().manual_seed(1))
        scale = (ratio * float(c.double().pow(2).sum()) / (n * float(direction.double().pow(2).sum()))) ** 0.5
        out.append((c + scale * direction).to(torch.float32))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="minibatch size b (default 256; --quick 64)")
    ap.add_argument("--models", default=None, help="comma separated subset of " + ", ".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "out" / "bench_gram_precision.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    b = args.batch or (64 if args.quick else 256)
    table = QUICK if args.quick else MODELS
    if args.models:
        unknown = [m for m in args.models.split(",") if m not in {**MODELS, **QUICK}]
        if unknown:
            ap.error(f"unknown --models {unknown}; choose from {', '.join({**MODELS, **QUICK})}")
        table = {m: {**MODELS, **QUICK}[m] for m in args.models.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, kwargs) in table.items():
            print(f"{name}: forward of {b} images ...", file=sys.stderr, flush=True)
            acts = model_activations(name, arch, kwargs, b, Path(tmp))
            for prec, e in errors(acts).items():
                rows.append({"features": name, "layers": len(acts), "b": b, "precision": prec, **e})
            del acts
    print("offset features ...", file=sys.stderr, flush=True)
    for prec, e in errors(offset_features(b)).items():
        rows.append({"features": "offset x15", "layers": 12, "b": b, "precision": prec, **e})
    out = {"benchmark": "bench_gram_precision", "date": time.strftime("%Y-%m-%d"), "goal_max_abs_cka_error": GOAL,
           "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                       "torch": torch.__version__},
           "emulated": True, "rows": rows,
           "within_goal": {p: all(r["max_abs_cka_error"] <= GOAL for r in rows if r["precision"] == p) for p in VARIANTS}}
    write_json_atomic(args.out, out, indent=1, nan_as_null=True)
    print(f"\n{'features':<12} {'layers':>6} {'b':>4} {'precision':<15} {'max |dCKA|':>11} {'mean |dCKA|':>11}")
    for r in rows:
        print(f"{r['features']:<12} {r['layers']:>6} {r['b']:>4} {r['precision']:<15} {r['max_abs_cka_error']:>11.2e} "
              f"{r['mean_abs_cka_error']:>11.2e}")
    print(f"\nwithin {GOAL:g} for every feature set (emulated on CPU): "
          + ", ".join(f"{p} {'yes' if ok else 'no'}" for p, ok in out["within_goal"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

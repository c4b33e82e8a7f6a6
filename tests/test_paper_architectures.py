"""The paper's architectures through the real workflow: ViT-B/32, BiT-R50x1 and Mixer-B/16 at 224 px.

The tiny configs of the other workflow tests use two-block models on 16 px images; this one runs the
timm architectures `config/config.yaml` names (`vit_base_patch32_224`, `resnetv2_50x1_bit`,
`mixer_b16_224`), with random weights saved as `local_file` weights (tests never reach the hub), on 48
JPEG images of ImageNet validation size in the ImageNet folder layout, each model seeing them through
its own timm preprocessing (resize, 224 px crop, normalisation). Only the analyses behind F3, F7 and
F9 are switched on, and the targets are the figures F1, F2, F3, F7, F9 and F14 with their tables
checked against the real depth of each architecture: 12 blocks of ViT-B/32 and Mixer-B/16, 16
residual units of R50x1. About 1.5 minutes on a 2-core machine to itself (budget: 4).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import snakemake, write_config

pytestmark = pytest.mark.slow

# name in config/config.yaml -> (timm architecture, family, layers, grid of the localization layer)
MODELS = {
    "vit_b32": ("vit_base_patch32_224", "vit", 12, (7, 7)),
    "r50x1": ("resnetv2_50x1_bit", "cnn", 16, (7, 7)),
    "mixer_b16": ("mixer_b16_224", "mixer", 12, (14, 14)),
}
FIGURES = {"F1", "F2", "F3", "F7", "F9", "F14"}
N_CLASSES, PER_CLASS = 4, 12          # 48 images
N_EXAMPLES, MINIBATCH = 48, 16        # three CKA minibatches: the jackknife needs more than one
TOL = 1e-6


def write_jpeg_folder(root, n_classes: int, per_class: int, seed: int = 0):
    """ImageNet validation layout (`root/n0000000c/ILSVRC2012_val_*.JPEG`), images of ImageNet size
    (500 x 375 and 375 x 500) with class-dependent structure: a coloured gradient, stripes of a
    class-specific frequency and orientation, a bright disc at a random place, and noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    k = 0
    for c in range(n_classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            w, h = (500, 375) if (i + c) % 3 else (375, 500)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            angle = math.pi * c / n_classes
            stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (0.04 + 0.03 * c))
            img = np.stack([xx / w, yy / h, 0.5 + 0.5 * stripes], -1) * rng.uniform(0.4, 1.0, 3)
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = rng.uniform(0.6, 1.0, 3)
            img = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(d / f"ILSVRC2012_val_{k:08d}.JPEG", quality=85)
            k += 1
    return root


def write_random_weights(path, arch: str, seed: int):
    """timm's own random initialisation of `arch`, saved as a safetensors file (never downloaded)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def check_cka_table(table: pd.DataFrame, x: str, y: str) -> None:
    nx, ny = MODELS[x][2], MODELS[y][2]
    where = f"CKA table {x}__{y}"
    assert len(table) == nx * ny, f"{where}: {len(table)} rows, expected {nx} x {ny}"
    assert table.index_x.nunique() == nx and table.index_y.nunique() == ny, where
    assert (table.model_x == x).all() and (table.model_y == y).all(), where
    assert (table.n_examples == N_EXAMPLES).all() and (table.n_minibatches == N_EXAMPLES // MINIBATCH).all(), where
    assert (table.status == "ok").all(), f"{where}: {table.status.value_counts().to_dict()}"
    assert np.isfinite(table.cka).all() and np.isfinite(table.se).all(), where
    assert table.cka.between(-TOL, 1 + TOL).all(), f"{where}: CKA outside [0, 1]: {table.cka.describe()}"
    if x == y:
        diag = table[table.index_x == table.index_y]
        np.testing.assert_allclose(diag.cka, 1.0, atol=1e-9, err_msg=where)
        # the two triangles hold the same values
        sym = table.pivot(index="index_x", columns="index_y", values="cka").to_numpy()
        np.testing.assert_allclose(sym, sym.T, atol=1e-9, err_msg=where)


def test_paper_architectures_at_224px(tmp_path):
    from seelike import config as sc
    from seelike import paths, registry

    folder = write_jpeg_folder(tmp_path / "imagenet" / "val", N_CLASSES, PER_CLASS)
    weights = tmp_path / "weights"
    weights.mkdir()
    models = {name: {"arch": arch,
                     "source": {"kind": "local_file",
                                "path": str(write_random_weights(weights / f"{name}.safetensors", arch, seed))}}
              for seed, (name, (arch, *_)) in enumerate(MODELS.items())}
    cfg = {
        "run_name": "paper_archs", "device": "cpu", "precision": "fp32",
        "datasets": {"imagenet_val": {"kind": "imagefolder", "root": str(folder), "on_bad_file": "error"}},
        "models": models,
        "analysis": {"dataset": "imagenet_val", "n_examples": N_EXAMPLES, "seed": 0},
        "extraction": {"full_tokens": 0},            # no probes here: no full token activations stored
        "analyses": {"attention_distance": {}, "norm_ratio": {}, "localization": {}},   # F3, F7, F9
        "cka": {"minibatch_size": MINIBATCH, "estimator": "unbiased",
                "pairs": [["vit_b32", "r50x1"], ["mixer_b16", "vit_b32"], ["mixer_b16", "r50x1"]]},
        "figures": {"formats": ["png"], "dpi": 60},
        "executor": {"default": "local", "resources": {"cpus": 1}},   # two one-thread jobs on the 2 cores
    }
    run = tmp_path / "run"
    run.mkdir()
    cfgfile = write_config(run / "paper_archs.yaml", cfg)

    # The config asks for exactly the figures under test, F1 for every model, F2 for every pair, F14 for the Mixer.
    loaded = sc.load(cfg)
    targets = registry.final_figures(loaded)
    by_figure = {}
    for t in targets:
        by_figure.setdefault(t.split("/")[2], []).append(t)
    assert set(by_figure) == FIGURES, sorted(by_figure)
    assert len(by_figure["F1"]) == 3 and len(by_figure["F2"]) == 3 and len(by_figure["F14"]) == 1, by_figure

    # Model and extraction steps first: left to itself the scheduler may run the cheap tables and figures of
    # the first extracted model before another model's import and extraction, which then run alone at the end
    manifests = [paths.fill(paths.MANIFEST, dataset="imagenet_val", model=name) for name in MODELS]
    snakemake(run, cfgfile, "--cores", "2", *targets, "--prioritize", *manifests, timeout=900)
    res = run / "results"

    for name, (arch, family, n_layers, _) in MODELS.items():
        card = json.loads((res / "models" / name / "card.json").read_text())
        assert card["arch"] == arch and card["family"] == family, card
        assert len(card["layers"]) == n_layers, (name, [l["name"] for l in card["layers"]])
        assert card["input_size"] == [3, 224, 224], card["input_size"]
        manifest = json.loads((res / "extract" / "imagenet_val" / name / "manifest.json").read_text())
        assert manifest["layers"] == [l["name"] for l in card["layers"]]

    # F1, F2, F14: every layer of the real architectures
    cka = res / "cka" / "imagenet_val"
    pairs = [(m, m) for m in MODELS] + [("vit_b32", "r50x1"), ("vit_b32", "mixer_b16"), ("r50x1", "mixer_b16")]
    for x, y in pairs:
        path = cka / f"{x}__{y}.csv"
        if not path.is_file():   # stored in config order, whichever way the pair was written
            x, y, path = y, x, cka / f"{y}__{x}.csv"
        check_cka_table(pd.read_csv(path), x, y)

    vis = res / "vision" / "imagenet_val"
    # F3: 12 heads in each of 12 blocks, 7 x 7 patches of 32 px
    dist = pd.read_csv(vis / "attention_distance" / "vit_b32.csv")
    assert len(dist) == 12 * 12 and dist.block_index.nunique() == 12 and dist["head"].nunique() == 12
    assert (dist.n_images == N_EXAMPLES).all()
    assert (dist.grid_h == 7).all() and (dist.grid_w == 7).all() and (dist.image_h == 224).all()
    farthest = 6 * 32 * math.sqrt(2)
    assert np.isfinite(dist.distance).all() and dist.distance.between(0, farthest).all()
    uniform = dist.uniform_distance.iloc[0]
    assert 0 < uniform < farthest
    # timm's random initialisation gives near-uniform attention (query and key weights of std 0.02), so
    # every head's distance is about that of uniform attention over the 7 x 7 grid (within 3% here)
    assert ((dist.distance - uniform).abs() < 0.1 * uniform).all(), dist.distance.describe()

    # F7: attention and MLP sublayers (CLS and spatial tokens), token and channel mixing, residual units
    expected_rows = {"vit_b32": 2 * 12 * 2, "mixer_b16": 2 * 12, "r50x1": 16}
    for name, n_rows in expected_rows.items():
        nr = pd.read_csv(vis / "norm_ratio" / f"{name}.csv")
        assert len(nr) == n_rows, (name, len(nr))
        assert np.isfinite(nr.ratio).all() and (nr.ratio > 0).all(), (name, nr.ratio.describe())
    assert set(pd.read_csv(vis / "norm_ratio" / "vit_b32.csv").tokens) == {"cls", "spatial"}
    assert set(pd.read_csv(vis / "norm_ratio" / "mixer_b16.csv").kind) == {"token_mixing", "channel_mixing"}

    # F9: the input patch at each of the default 5 positions against every position of the final layer
    for name, (_, _, _, (gh, gw)) in MODELS.items():
        loc = pd.read_csv(vis / "localization" / f"{name}.csv")
        assert (loc.grid_h == gh).all() and (loc.grid_w == gw).all(), name
        n_p = loc.groupby(["p_row", "p_col"]).ngroups
        assert n_p == 5 and len(loc) == n_p * gh * gw, (name, n_p, len(loc))
        assert np.isfinite(loc.cka).all() and loc.cka.between(-TOL, 1 + TOL).all(), (name, loc.cka.describe())
        assert (loc.status == "ok").all() and loc.diagonal.sum() == n_p, name
    # The residual stream of a randomly initialised ViT still carries each patch's embedding to the last
    # block: for every input position p the final-layer token most similar to it is the one at p (a
    # shifted or transposed grid, or the CLS token counted as a patch, would move it)
    loc = pd.read_csv(vis / "localization" / "vit_b32.csv")
    for (row, col), g in loc.groupby(["p_row", "p_col"]):
        best = g.loc[g.cka.idxmax()]
        assert (best.q_row, best.q_col) == (row, col), (row, col, g.sort_values("cka").tail(3))

    for target in targets:
        assert (run / target).stat().st_size > 1000, target
        assert (run / (target + ".prov.json")).is_file(), target

    # pytest keeps the folders of the last runs: drop the 1.3 GB of weights once everything passed
    for path in [*weights.glob("*.safetensors"), *res.glob("models/*/weights.safetensors")]:
        path.unlink()

"""F9's per-position Grams are stored as float32 (layers/<layer>/positions/gram): the localization CKA
table read from a real shard must match the table from float64 Grams computed independently (float64
products of the same activations) within 1e-6, and the stored Grams must hold exactly the float32
products (what a float64 copy of them held, at half the bytes)."""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

ARCH, KWARGS = "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 3, "num_heads": 2,
                                        "num_classes": 10}
N, B = 96, 32
POSITIONS = [[0.1, 0.1], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1], [0.9, 0.9]]


def _float64_reference(card_path, cfg, plan, rendered, layer):
    """Per-minibatch (Q, b, b) Grams of `layer`'s spatial tokens from float64 products."""
    from torch.utils.data import DataLoader, Subset

    from seelike.extract import open_for_model
    from seelike.models import LayerTaps, ModelCard, build_model
    from seelike.runtime import full_fp32

    card = ModelCard.load(card_path)
    model = build_model(card, card_path.parent, device=torch.device("cpu"), verify=False)
    p = card.num_prefix_tokens
    ds = Subset(open_for_model(card, cfg, "analysis", plan, rendered=rendered),
                [int(i) for i in plan.shard(0).example_indices])
    out = []
    with LayerTaps(model, card.layers, p) as taps, torch.no_grad():
        for x, _, _ in DataLoader(ds, batch_size=B, shuffle=False):
            taps.clear()
            with full_fp32():
                model(x)
            s = taps.outputs[layer][:, p:].transpose(0, 1).double()          # (Q, b, d) float64
            out.append((s @ s.transpose(1, 2)).numpy())
    return np.stack(out)


def test_float32_position_grams_give_the_float64_localization_table(tmp_path):
    from bench_pipeline import dataset_cfg, extract_spec, make_model_dir
    from seelike.analyses.localization import compute, localization_cka
    from seelike.data import dataset_fingerprint, rendered_split_name, write_rendered_split
    from seelike.models import ModelCard
    from seelike.plan import make_plan
    from seelike.specs import shard_job_spec, vision_pass
    from bench_pipeline import seelike_extract_model

    cfg = dataset_cfg(N)
    rendered = write_rendered_split(cfg, "analysis", tmp_path / rendered_split_name(cfg, "analysis"))
    plan = make_plan(f"synth:{dataset_fingerprint(cfg)}", np.arange(N), N, B, 4, 0)     # one shard, 3 minibatches
    card = make_model_dir(tmp_path / "models", "vit", ARCH, KWARGS, seed=3)
    spec = extract_spec("vit", card, cfg, plan, tmp_path / "out", full_tokens=0, rendered=rendered)
    taps = {"localization": {"positions": POSITIONS, "n_images": N, "layer": None}}
    spec = shard_job_spec(vision_pass(spec, tmp_path / "out", taps), spec["plan"])
    manifest = seelike_extract_model(spec, plan)

    shard = tmp_path / "out" / "shard-00000.h5"
    names = [l["name"] for l in ModelCard.load(card).layers]
    with h5py.File(shard, "r") as f:
        layer = names[int(f["reductions/localization/layer_index"][()])]
        stored = f[f"layers/{layer}/positions/gram"]
        assert stored.dtype == np.float32 and stored.shape == (N // B, 64, B, B)
        lg32 = stored[()]
        ig = f["reductions/localization/input/gram"][()]
    lg64 = _float64_reference(card, cfg, plan, rendered, layer)
    assert not np.array_equal(lg32.astype(np.float64), lg64)        # the two Grams really differ (float32 rounding)

    cka32, _, status32, m32 = localization_cka(ig, lg32)
    cka64, _, status64, m64 = localization_cka(ig, lg64)
    assert m32 == m64 == N // B and (status32 == status64).all()
    diff = float(np.nanmax(np.abs(cka32 - cka64)))
    print(f"max |CKA(float32-stored Grams) - CKA(float64 Grams)| = {diff:.3g}")
    assert diff < 1e-6, diff

    # the workflow's table, read from the shard through the manifest, is the float32 table
    out = compute({"manifest": str(manifest), "model": "vit", "estimator": "unbiased", "out": str(tmp_path / "loc.csv"),
                   "provenance_config": {}})
    table = pd.read_csv(out)
    assert len(table) == len(POSITIONS) * 64
    np.testing.assert_allclose(table.cka.to_numpy(), cka32.reshape(-1), rtol=1e-7, atol=1e-9)   # CSV keeps 8 digits

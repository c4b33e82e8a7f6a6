"""A small results folder written by the project's own writers, for the API and CLI tests of a run's files.

Two real timm models (a two-block ViT and a narrow ResNet-18 on 16 px images) with their checkpoints and
cards; their CKA tables from ``seelike.api.compare_models``, written the way the ``cka`` step writes them
(CSV plus provenance naming the inputs); a vision and an experiment table through
``seelike.analyses.common.write_table``; figure F1 drawn by the registered drawer; a rule log. The layout
comes from ``seelike.paths``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seelike import api, paths, provenance
from seelike.analyses.common import write_table
from seelike.fileio import atomic_write, write_json_atomic

DATASET = "synth"
VIT = {"arch": "vit_tiny_patch16_224",
       "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}}
CNN = {"arch": "resnet18", "kwargs": {"num_classes": 10, "channels": [8, 16, 32, 64]}}


def under(results: Path, pattern: str, **values) -> Path:
    return api.results_file(results, paths.fill(pattern, **values))


def write_cka_table(table: pd.DataFrame, out: Path, inputs: list[Path], config: dict) -> None:
    """As the cka step (seelike.cka_tables.compute_pair) writes a table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    provenance.write_sidecar(out, provenance.collect(config, inputs=[str(p) for p in inputs]))


def build(root: Path) -> Path:
    """Write the small run into ``root/<paths.RESULTS>`` from ``root``, as the workflow's steps run in the
    directory holding the results folder (so provenance names inputs by their ``paths`` form); returns the
    results folder."""
    here = Path.cwd()
    os.chdir(root)
    try:
        _build(Path(paths.RESULTS))
    finally:
        os.chdir(here)
    return root / paths.RESULTS


def _build(results: Path) -> None:
    from seelike.models import create_timm_model, make_card, save_checkpoint
    from seelike.registry import draw

    torch.manual_seed(0)
    models = {}
    for name, spec in (("vit", VIT), ("cnn", CNN)):
        model = create_timm_model(spec["arch"], spec["kwargs"]).eval()
        card_path = under(results, paths.CARD, model=name)
        card_path.parent.mkdir(parents=True, exist_ok=True)
        weights = save_checkpoint(model, card_path.parent / "weights.safetensors")
        make_card(name, spec["arch"], spec["kwargs"], {"kind": "recipe"}, model, weights, input_size=[3, 16, 16],
                  metrics={"test_accuracy": 0.25}).save(card_path)
        manifest = under(results, paths.MANIFEST, dataset=DATASET, model=name)
        write_json_atomic(manifest, {"model": name, "dataset": DATASET, "shards": []})
        models[name] = (model, manifest)

    images = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.arange(32) % 10), batch_size=8)
    for x, y in (("vit", "vit"), ("cnn", "cnn"), ("vit", "cnn")):
        (mx, man_x), (my, man_y) = models[x], models[y]
        table = api.compare_models(mx, None if x == y else my, loader, minibatch_size=8, names=(x, y))
        inputs = [man_x] if x == y else [man_x, man_y]
        write_cka_table(table, under(results, paths.CKA_TABLE, dataset=DATASET, x=x, y=y), inputs,
                        {"dataset": DATASET, "estimator": "unbiased", "models": [x, y]})

    rng = np.random.default_rng(2)
    ratios = pd.DataFrame({"model": "vit", "sublayer": ["block0.attn", "block0.mlp"], "tokens": "spatial",
                           "ratio": rng.uniform(1, 5, 2)})
    write_table(ratios, under(results, paths.TABLES["dataset"], dataset=DATASET, table="norm_ratio", stem="vit"),
                {"provenance_config": {"analysis": "norm_ratio", "model": "vit"}}, inputs=[models["vit"][1]])
    probes = pd.DataFrame({"model": "vit", "layer": ["block0", "block1"], "accuracy": rng.uniform(0, 1, 2)})
    write_table(probes, under(results, paths.TABLES["experiment"], table="probes", stem="vit"),
                {"provenance_config": {"analysis": "probes", "model": "vit"}},
                inputs=[under(results, paths.CARD, model="vit")])

    cka_vit = under(results, paths.CKA_TABLE, dataset=DATASET, x="vit", y="vit")
    outputs = [str(under(results, paths.FIGURE, figure="F1", stem="vit", fmt=f)) for f in ("pdf", "png")]
    draw({"figure": "F1", "stem": "vit", "tables": [str(cka_vit)], "outputs": outputs, "dpi": 40, "titles": ["vit"],
          "suptitle": "F1: CKA between all layers of vit",
          "provenance_config": {"figure": "F1", "stem": "vit"}})

    log = under(results, paths.log(paths.CKA_TABLE), dataset=DATASET, x="vit", y="vit")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("seelike: computed CKA\n")


def write_findings(results: Path) -> Path:
    """The findings table (``paths.TABLES["summary"]``, table "findings"), written by the findings step
    from the run's CKA tables: finding 1 (ViT against CNN), the others not configured."""
    from seelike import registry

    here = Path.cwd()
    os.chdir(results.parent)
    try:
        out = paths.fill(paths.TABLES["summary"], table="findings", stem=DATASET)
        cka = {m: paths.fill(paths.CKA_TABLE, dataset=DATASET, x=m, y=m) for m in ("vit", "cnn")}
        plan = [{"finding": 1, "models": {"vit": "vit", "cnn": "cnn"}, "tables": cka}]
        plan += [{"finding": k, "missing": "its models"} for k in range(2, 7)]
        registry.compute({"analysis": "findings", "plan": plan, "out": out,
                          "provenance_config": {"analysis": "findings"}})
    finally:
        os.chdir(here)
    return results / Path(out).relative_to(paths.RESULTS)

"""F5: CKA of every attention head of a ViT's first blocks with every layer of a CNN, against the
head's mean attention distance.

Per-head Grams (each head's output before the output projection, all tokens) are stored at
extraction per CKA minibatch, like the layer Grams, so the HSIC of every (head, CNN layer) pair
comes from one :func:`seelike.cka.hsic_all_pairs` call per minibatch over the stacked Grams of
both models: no second pass over the images.

Table columns: model, block, block_index, head, mean_distance, cnn, cnn_layer, cnn_layer_index,
cka, se, status, plotted (the CNN layer is one of the figure's panels), n_minibatches.
"""
from __future__ import annotations

import math

import numpy as np

from .common import by_unit, read_group, read_table, shard_paths, write_table
from .reducers import HEADS
from ..plotting import finish_figure, pyplot
from .. import paths
from ..base import ConfigError
from ..registry import Analysis, Figure, enabled, models_for, section


def plotted_cnn_layers(layers: list[str], setting) -> list[str]:
    """`auto`: the first quarter of the CNN's layers (at least one, at most four)."""
    if setting == "auto":
        return layers[:max(1, min(4, math.ceil(len(layers) / 4)))]
    unknown = [l for l in setting if l not in layers]
    if unknown:
        raise ValueError(f"config key analyses.head_cka.cnn_layers: {', '.join(unknown)} not among the CNN's "
                         f"layers ({', '.join(layers)})")
    return list(setting)


def compute(spec: dict) -> str:
    """spec: manifest (ViT), manifest_cnn, distances (attention distance table), model, cnn, blocks,
    cnn_layers, estimator, out, provenance_config."""
    import warnings

    import pandas as pd
    from ..cka import NegativeHSICWarning, cka_from_minibatch_hsic, hsic_all_pairs
    from ..cka_tables import check_same_plan
    from ..manifest import load_manifest
    from ..store import read_grams

    mv, mc = load_manifest(spec["manifest"]), load_manifest(spec["manifest_cnn"])
    check_same_plan(mv, mc)
    cnn_layers = mc["layers"]
    shown = plotted_cnn_layers(cnn_layers, spec.get("cnn_layers", "auto"))
    per_batch, heads = [], None
    for pv, pc in zip(shard_paths(mv), shard_paths(mc)):
        units = by_unit(read_group(pv, HEADS, "per-head Grams"))
        blocks = list(units)[:int(spec["blocks"])]
        hg = np.concatenate([units[b]["gram"] for b in blocks], axis=1)        # (m, blocks*heads, b, b)
        if heads is None:
            heads = [(b, int(units[b]["index"]), h) for b in blocks for h in range(units[b]["gram"].shape[1])]
        cg = read_grams(pc, cnn_layers)                                          # (m, Lc, b, b)
        for a, c in zip(hg, cg):
            per_batch.append(hsic_all_pairs(np.concatenate([a, c]), spec.get("estimator", "unbiased")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NegativeHSICWarning)
        res = cka_from_minibatch_hsic(np.stack(per_batch))
    dist = read_table(spec["distances"]).set_index(["block", "head"])["distance"]
    k = len(heads)
    rows = []
    for i, (block, bi, h) in enumerate(heads):
        for j, layer in enumerate(cnn_layers):
            rows.append({"model": spec["model"], "block": block, "block_index": bi, "head": h,
                         "mean_distance": float(dist.loc[(block, h)]), "cnn": spec["cnn"], "cnn_layer": layer,
                         "cnn_layer_index": j, "cka": res.cka[i, k + j], "se": res.se[i, k + j],
                         "status": str(res.status[i, k + j]), "plotted": layer in shown,
                         "n_minibatches": res.n_minibatches})
    return write_table(pd.DataFrame(rows), spec["out"], spec,
                       inputs=[spec["manifest"], spec["manifest_cnn"], spec["distances"]])


def figure(spec: dict) -> None:
    """spec: tables (one head_cka table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
    t = t[t.plotted.astype(bool)]
    layers = t.drop_duplicates("cnn_layer_index").sort_values("cnn_layer_index")["cnn_layer"].tolist()
    blocks = t.drop_duplicates("block_index").sort_values("block_index")["block"].tolist()
    cmap = plt.get_cmap("plasma", max(2, len(blocks) + 1))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers) + 0.8, 3.4), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        s = t[t.cnn_layer == layer]
        for i, b in enumerate(blocks):
            sb = s[s.block == b]
            ax.scatter(sb.mean_distance, sb.cka, s=18, color=cmap(i), label=b)
        ax.set_title(f"{t.cnn.iloc[0]} {layer}", fontsize=8)
        ax.set_xlabel("mean attention distance of the head (pixels)", fontsize=8)
    axes[0][0].set_ylabel(f"CKA of a {t.model.iloc[0]} head with the CNN layer", fontsize=8)
    axes[0][-1].legend(fontsize=7, title="ViT block", title_fontsize=7)
    fig.suptitle(f"F5: single attention heads of {t.model.iloc[0]} vs lower layers of {t.cnn.iloc[0]}", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def cnn_of(cfg: dict) -> str | None:
    """The CNN whose layers the heads are compared with: analyses.head_cka.cnn, or the first CNN."""
    cnn = section(cfg, "head_cka").get("cnn", "auto")
    if cnn != "auto":
        return cnn
    cnns = [n for n, m in cfg["models"].items() if m.get("family") == "cnn"]
    return cnns[0] if cnns else None


def pairs(cfg: dict) -> list[tuple[str, str]]:
    """(ViT, CNN) of every F5 panel."""
    cnn = cnn_of(cfg)
    return [] if cnn is None else [(v, cnn) for v in models_for(cfg, "head_cka")]


def _stems(cfg: dict) -> list[str]:
    return [f"{v}__{c}" for v, c in pairs(cfg)]


def _split(stem: str) -> tuple[str, str]:
    vit, _, cnn = stem.partition("__")
    return vit, cnn


def _check(cfg: dict) -> None:
    if not enabled(cfg, "head_cka"):
        return
    models = cfg["models"]
    cnn = section(cfg, "head_cka").get("cnn", "auto")
    if cnn != "auto":
        if cnn not in models:
            raise ConfigError(f"config key analyses.head_cka.cnn: unknown model '{cnn}'; configured: {', '.join(models)}")
        if models[cnn].get("family") != "cnn":
            raise ConfigError(f"config key analyses.head_cka.cnn: model '{cnn}' is a {models[cnn].get('family')} "
                              "model, not a CNN")
    covered = models_for(cfg, "attention_distance")
    missing = [v for v in models_for(cfg, "head_cka") if v not in covered]
    if missing and cnn_of(cfg):
        raise ConfigError(f"config key analyses.head_cka.models: F5 plots each head against its mean attention "
                          f"distance, but analyses.attention_distance does not cover {', '.join(missing)}")


def _taps(cfg: dict, model: str) -> dict:
    if not any(v == model for v, _ in pairs(cfg)):
        return {}
    return {"heads": {"blocks": int(section(cfg, "head_cka").get("blocks", 3))}}


def _distances(cfg: dict, vit: str) -> str:
    return paths.table(cfg, "dataset", "attention_distance", vit)


def _inputs(cfg: dict, stem: str) -> list[str]:
    vit, cnn = _split(stem)
    return [paths.vision_manifest(cfg, vit), paths.manifest(cfg, cnn), _distances(cfg, vit)]


def _spec(cfg: dict, stem: str) -> dict:
    vit, cnn = _split(stem)
    s = section(cfg, "head_cka")
    return {"model": vit, "cnn": cnn, "manifest": paths.vision_manifest(cfg, vit), "manifest_cnn": paths.manifest(cfg, cnn),
            "distances": _distances(cfg, vit), "blocks": int(s.get("blocks", 3)),
            "cnn_layers": s.get("cnn_layers", "auto"), "estimator": cfg["cka"]["estimator"]}


SETTINGS = {"blocks": {"type": "integer", "minimum": 1, "default": 3},
              "cnn": {"type": "string", "minLength": 1, "default": "auto"},
              "cnn_layers": {"oneOf": [{"const": "auto"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                             "default": "auto"}}   # analyses.head_cka, besides enabled and models


ANALYSIS = Analysis(
    name="head_cka", settings=SETTINGS, families=("vit",), why="per-head CKA needs attention heads (a ViT)",
    source="dataset", compute=compute, step="vision", stems=_stems, inputs=_inputs, spec=_spec, taps=_taps,
    check=_check,
    figures=(Figure("F5", "attention heads vs CNN", figure),),
    code=("analyses/reducers.py", "cka.py", "cka_tables.py"))

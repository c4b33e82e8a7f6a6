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

from .common import by_unit, finish_figure, mpl, read_group, shard_paths, write_table
from .reducers import HEADS


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
    from ..cka_tables import _check_same_plan
    from ..manifest import load_manifest
    from ..store import read_grams

    mv, mc = load_manifest(spec["manifest"]), load_manifest(spec["manifest_cnn"])
    _check_same_plan(mv, mc)
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
    dist = pd.read_csv(spec["distances"]).set_index(["block", "head"])["distance"]
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
    import pandas as pd

    plt = mpl()
    t = pd.read_csv(spec["tables"][0])
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

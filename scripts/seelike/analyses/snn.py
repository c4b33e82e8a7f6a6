"""V5: class separation by depth, as the soft nearest-neighbour loss of every layer (Frosst et al. 2019).

For a minibatch of pooled features x_i with labels y_i and temperature T:

    l(T) = -1/b' sum_i log( sum_{j != i, y_j = y_i} exp(-|x_i - x_j|^2 / T) / sum_{k != i} exp(-|x_i - x_k|^2 / T) )

over the b' examples that have a same-class neighbour in the minibatch. High: classes entangled;
low: classes separated. As in Frosst et al. the loss is reported at the temperature minimising
it, searched on a log grid around the median squared distance of the layer. Minibatches are the
plan's CKA minibatches (the loss depends on their size); features are the stored pooled ones:
the CLS token where the model has one, else the mean over positions.

Table columns: model, layer, layer_index, depth (0 = first layer, 1 = last), pooling, snn_loss,
temperature, temperature_rel (over the median squared distance), n_examples, n_minibatches.
"""
from __future__ import annotations

import numpy as np

from .common import read_table, shard_paths, write_table
from ..plotting import finish_figure, pyplot
from .. import paths
from ..registry import Analysis, Figure, models_for

REL_TEMPERATURES = 2.0 ** (np.arange(-20, 21) / 2.0)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def snn_loss(x: np.ndarray, y: np.ndarray, temperatures) -> tuple[np.ndarray, int]:
    """(loss summed over the usable examples at each temperature, number of usable examples)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    sq = (x ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    n = len(y)
    off = ~np.eye(n, dtype=bool)
    same = (y[:, None] == y[None, :]) & off
    usable = same.any(1)
    out = np.empty(len(temperatures))
    for i, t in enumerate(temperatures):
        logits = -d2 / float(t)
        num = _logsumexp(np.where(same, logits, -np.inf), 1)
        den = _logsumexp(np.where(off, logits, -np.inf), 1)
        out[i] = float(-(num - den)[usable].sum())
    return out, int(usable.sum())


def layer_snn(features: np.ndarray, labels: np.ndarray, minibatch_ids: np.ndarray):
    """(loss, temperature, temperature relative to the median squared distance) at the best temperature."""
    mbs = np.unique(minibatch_ids)
    first = features[minibatch_ids == mbs[0]].astype(np.float64)
    sq = (first ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * first @ first.T, 0.0)
    med = float(np.median(d2[~np.eye(len(first), dtype=bool)]))
    med = med if med > 0 else 1.0
    temps = med * REL_TEMPERATURES
    total, count = np.zeros(len(temps)), 0
    for m in mbs:
        sel = minibatch_ids == m
        s, c = snn_loss(features[sel], labels[sel], temps)
        total += s
        count += c
    loss = total / max(count, 1)
    best = int(np.argmin(loss))
    return float(loss[best]), float(temps[best]), float(REL_TEMPERATURES[best])


def compute(spec: dict) -> str:
    """spec: manifest, model, out, provenance_config."""
    import h5py
    import pandas as pd
    from ..manifest import load_manifest
    from ..store import layer_path

    manifest = load_manifest(spec["manifest"])
    layers = manifest["layers"]
    feats = {l: [] for l in layers}
    labels, mbs, pooling = [], [], None
    for path in shard_paths(manifest):
        with h5py.File(path, "r") as f:
            if pooling is None:
                pooling = "cls" if layer_path(layers[0], "pooled_cls") in f else "mean"
            for l in layers:
                feats[l].append(f[layer_path(l, f"pooled_{pooling}")][()])
            labels.append(f["labels"][()])
            mbs.append(f["plan/minibatch_ids"][()])
    labels, mbs = np.concatenate(labels), np.concatenate(mbs)
    rows = []
    for i, l in enumerate(layers):
        x = np.concatenate(feats[l])
        if not np.isfinite(x).all():
            raise ValueError(f"model '{spec['model']}': non-finite pooled features in layer {l}")
        loss, t, rel = layer_snn(x, labels, mbs)
        rows.append({"model": spec["model"], "layer": l, "layer_index": i, "depth": i / max(1, len(layers) - 1),
                     "pooling": pooling, "snn_loss": loss, "temperature": t, "temperature_rel": rel,
                     "n_examples": len(labels), "n_minibatches": len(np.unique(mbs))})
    return write_table(pd.DataFrame(rows), spec["out"], spec, inputs=[spec["manifest"]])


def figure(spec: dict) -> None:
    """spec: tables (one snn_loss table per model), outputs, dpi."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for p in spec["tables"]:
        t = read_table(p).sort_values("layer_index")
        ax.plot(t.depth, t.snn_loss, marker="o", ms=3, label=f"{t.model.iloc[0]} ({t.pooling.iloc[0]})")
    ax.set_xlabel("relative depth (0 = first layer, 1 = last)")
    ax.set_ylabel("soft nearest-neighbour loss (lower: classes more separated)")
    ax.legend(fontsize=7)
    ax.set_title("V5: class separation by depth", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _v5_stems(cfg: dict) -> list[str]:
    return [paths.dataset_key(cfg)] if models_for(cfg, "snn_loss") else []


def _v5_tables(cfg: dict, stem: str) -> list[str]:
    return [paths.table(cfg, "dataset", "snn_loss", m) for m in models_for(cfg, "snn_loss")]


SETTINGS = {}   # analyses.snn_loss, besides enabled and models


ANALYSIS = Analysis(
    name="snn_loss", settings=SETTINGS, families=("vit", "mixer", "cnn", "other"), source="dataset", compute=compute, step="vision",
    figures=(Figure("V5", "class separation by depth", figure, stems=_v5_stems, tables=_v5_tables),))
